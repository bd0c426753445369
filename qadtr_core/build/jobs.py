"""The study as a graph of content-addressed jobs, run in-process or on a Dask cluster.

Two kinds of job:

- **train**: one :class:`~qadtr_core.train.TrainConfig`, keyed by its model cache key
  (``artifacts.artifact_key("models", config)``); it depends on the job of its ``init`` parent.
- **notebook**: one chapter notebook executed with papermill into a scratch folder
  (``<root>/runs/<profile>/seed<seed>/``), which fills the cache of that chapter's crafted patches and
  result tables; it depends on the train jobs of the models the chapter needs (and the scorecard and
  the reproducibility chapter on every other chapter). Its key hashes the chapter, the notebook's bytes,
  the profile, the seed and its models' keys; a marker ``<chapter>.json`` beside the executed notebook
  records it.

Which models a chapter needs is read from :data:`CHAPTER_MODELS` with the bit-widths of the notebook's
own parameters cell; the configs come from :func:`~qadtr_core.zoo.fp_config`,
:func:`~qadtr_core.zoo.qat_config` and :mod:`qadtr_core.defenses.recipes`. A default build runs each
chapter at :func:`chapter_seeds` (the defenses chapter at ``Profile.defense_seeds``, whose defense models
may share the seed-0 starts: ``Profile.defense_start_seed``); ``--seeds`` runs every chapter at each seed.

A job already in the cache is never run or submitted again; two runs of one artifact are prevented by
the graph (one job per key; on Dask, the job key is the task key) and, across processes, by the
artifact's file lock (:func:`~qadtr_core.artifacts.file_lock`). Each job pins its torch thread count,
so that the kernels, and hence the bytes of every checkpoint, are the same wherever it runs.
"""
from __future__ import annotations

import ast
import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import ENV_VAR as ARTIFACTS_VAR
from ..artifacts import artifact_key, artifact_root, config_hash, write_json
from ..profiles import Profile, get_profile
from ..train import TrainConfig

log = logging.getLogger(__name__)

NOTEBOOK_DIR = Path(__file__).resolve().parents[2] / "notebooks"
FAULT_VAR = "QADTR_FAULT_ONCE"  # "<job key>:<marker file>": the job kills its own process once (fault-injection tests)

# What each chapter trains: a function of (profile, seed, the notebook's parameters) -> configs.
# "baselines:<param>" = the FP model and the QAT models at the widths of the notebook parameter <param>;
# "defenses:<param>" / "ablations:<param>" = defense_configs / ablation_configs over that bit set;
# "surrogate:" = the defense chapters' common transfer surrogate (recipes.surrogate_config).
# "certified:<param>" = zoo.masked_config at the widths of <param>, and zoo.masked_multiwidth_config over the
# notebook's multiwidth_bit_set (when not empty), with their parents.
CHAPTER_MODELS: dict[str, tuple[str, ...]] = {
    "00_baselines": ("baselines:qat_bits",),
    "01_transferability": ("baselines:qat_bits", "dwq:dwq_reading"),
    "02_defenses": ("defenses:bit_set", "surrogate:"),
    "03_ablations": ("ablations:bit_set", "surrogate:"),
    "04_gradient_alignment": ("baselines:bit_widths", "seed_baseline:seed_baseline"),
    "05_spatial_sensitivity": ("baselines:bit_widths",),
    "06_patch_visibility": ("baselines:bit_widths",),
    "07_scorecard": (),
    "08_reproduce": (),
    "09_certified": ("certified:bit_widths",),
}
# Chapters that read the other chapters' results: they run after every other chapter of the graph.
SUMMARY_CHAPTERS = ("07_scorecard", "08_reproduce")
# Chapters that a default build runs at more seeds than seed 0: chapter -> the Profile field of its seeds.
SEEDED_CHAPTERS = {"02_defenses": "defense_seeds"}


def chapter_seeds(chapter: str, profile: Profile) -> tuple[int, ...]:
    """The seeds ``chapter`` runs at in a default build of ``profile`` (no ``--seeds``): the defenses chapter
    at ``Profile.defense_seeds`` (the training seeds of the defenses behind C3 and C4), every other at 0.
    The first seed's run goes into the book; the others run beside it for the scorecard."""
    attr = SEEDED_CHAPTERS.get(chapter)
    return tuple(getattr(profile, attr)) if attr else (0,)


@dataclass(frozen=True)
class Job:
    """One unit of the build: train a config, or execute a chapter notebook.

    Attributes:
        key: the cache key (train: the model's artifact key; notebook: hash of chapter, notebook bytes,
            profile, seed and its models' keys).
        kind: "train" or "notebook".
        deps: keys of the jobs that must finish first.
        label: a short human-readable name.
        config: the training config (train jobs).
        chapter, profile, seed: the notebook run (notebook jobs; profile and seed for train jobs too).
        in_book: a notebook run that a book build executes into the book (the chapter's first seed); the
            chapter's other seeds run in the scratch folder, their claims read by the scorecard.
    """

    key: str
    kind: str
    deps: tuple[str, ...]
    label: str
    config: TrainConfig | None = None
    chapter: str = ""
    profile: str = ""
    seed: int = 0
    chapters: tuple[str, ...] = field(default=(), compare=False)  # the chapters that need this job
    in_book: bool = field(default=True, compare=False)


def chapters() -> list[str]:
    """The chapter names (notebook stems), in book order."""
    return sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))


def notebook_parameters(chapter: str) -> dict[str, Any]:
    """The literal defaults of a chapter notebook's ``parameters`` cell."""
    nb = json.loads((NOTEBOOK_DIR / f"{chapter}.ipynb").read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            src = "".join(cell["source"])
            out = {}
            for node in ast.parse(src).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    try:
                        out[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return out
    return {}


def chapter_configs(chapter: str, profile: Profile, seed: int = 0) -> list[TrainConfig]:
    """The configs of the models ``chapter`` evaluates under ``profile`` and ``seed`` (distinct, in order)."""
    from ..defenses.recipes import ablation_configs, defense_configs, surrogate_config
    from ..quant import FULL_PRECISION
    from ..zoo import fp_config, qat_config

    params = notebook_parameters(chapter)
    out: list[TrainConfig] = []
    for spec in CHAPTER_MODELS.get(chapter, ()):
        what, param = spec.split(":")
        if what == "seed_baseline":  # an independently seeded FP model, the alignment chapter's reference
            out += [fp_config(profile, seed + 1)] if params.get(param, False) else []
            continue
        if what == "surrogate":  # the independently seeded FP model every transfer threat is crafted on
            out.append(surrogate_config(profile, seed))
            continue
        if what == "dwq":  # the transferability chapter's DWQ reading of C2 (the defenses chapter's model)
            from ..defenses.recipes import dwq_config

            out += ([dwq_config(profile, (FULL_PRECISION, *params.get("qat_bits", [8, 5, 4, 2])), seed)]
                    if params.get(param) else [])
            continue
        if what == "certified":  # chapter 09: every width's masking-fine-tuned base model, and the multi-width one
            from ..zoo import masked_config, masked_multiwidth_config

            out += [masked_config(profile, b, seed) for b in params[param]]
            mw = tuple(params.get("multiwidth_bit_set") or ())
            out += [masked_multiwidth_config(profile, mw, seed)] if mw else []
            continue
        bits = list(params[param])
        if what == "baselines":
            out += [fp_config(profile, seed)] + [qat_config(profile, b, seed) for b in bits if b != FULL_PRECISION]
        else:
            table = (defense_configs if what == "defenses" else ablation_configs)(profile, bits, seed)
            out += [cfg for per_bits in table.values() for cfg in per_bits.values()]
    return list(dict.fromkeys(out))


def model_key(config: TrainConfig) -> str:
    """The cache key of a trained model (the name of its folder under ``<root>/models``)."""
    return artifact_key("models", config)


def _label(config: TrainConfig) -> str:
    return f"{config.arch} {config.strategy} {config.bits}b seed {config.seed} ({config.profile})"


def _add_train_jobs(graph: dict[str, Job], config: TrainConfig, chapter: str) -> str:
    key = model_key(config)
    if key in graph:
        job = graph[key]
        if chapter and chapter not in job.chapters:
            graph[key] = Job(**{**job.__dict__, "chapters": (*job.chapters, chapter)})
        return key
    deps = (_add_train_jobs(graph, config.init, chapter),) if config.init is not None else ()
    graph[key] = Job(key, "train", deps, _label(config), config=config, profile=config.profile, seed=config.seed,
                     chapters=(chapter,) if chapter else ())
    return key


def _notebook_key(chapter: str, profile: Profile, seed: int, model_keys: Sequence[str]) -> str:
    # the profile's content, not its name: a changed budget (attack steps, images) is another run
    nb_hash = hashlib.sha256((NOTEBOOK_DIR / f"{chapter}.ipynb").read_bytes()).hexdigest()
    return "nb-" + config_hash({"chapter": chapter, "notebook": nb_hash, "profile": profile.name,
                                "budgets": config_hash(profile), "seed": seed, "models": sorted(model_keys)})


def build_graph(profile: Profile | str, seeds: Iterable[int] | None = None, only: str | None = None,
                models_only: bool = False, configs: Mapping[str, Sequence[TrainConfig]] | None = None) -> dict[str, Job]:
    """The job graph of ``profile``, in an order where every job follows its dependencies.

    ``seeds``: every chapter once per seed (the first seed's runs go into a book build); None (the default
    build): each chapter at :func:`chapter_seeds`. ``only`` restricts it to one chapter's jobs;
    ``models_only`` leaves out the notebook jobs. ``configs`` (name -> configs) replaces the chapters by
    custom sets of train jobs (tests, ad-hoc builds). The summary chapters come last and follow every other
    chapter's runs, at every seed.
    """
    profile = get_profile(profile) if isinstance(profile, str) else profile
    names = chapters()
    if only is not None and only not in names:
        raise ValueError(f"unknown chapter {only!r}; allowed: {', '.join(names)}")
    graph: dict[str, Job] = {}
    if configs is not None:
        for name, cfgs in configs.items():
            for cfg in cfgs:
                _add_train_jobs(graph, cfg, name)
        return graph
    explicit = None if seeds is None else list(dict.fromkeys(int(s) for s in seeds))
    if explicit == []:
        raise ValueError("seeds must name at least one seed (or be None: each chapter's default seeds)")
    # the summary chapters last, so that they follow every other chapter (09 sorts after 07 and 08)
    order = [c for c in names if c not in SUMMARY_CHAPTERS] + [c for c in names if c in SUMMARY_CHAPTERS]
    runs = [(chapter, seed, seed == per[0]) for chapter in (order if only is None else [only])
            for per in [explicit or chapter_seeds(chapter, profile)] for seed in per]
    runs.sort(key=lambda r: r[0] in SUMMARY_CHAPTERS)  # stable: every chapter's seeds before the summaries
    notebook_keys: list[str] = []
    for chapter, seed, in_book in runs:
        keys = [_add_train_jobs(graph, cfg, chapter) for cfg in chapter_configs(chapter, profile, seed)]
        if models_only:
            continue
        deps = tuple(keys)
        if chapter in SUMMARY_CHAPTERS:  # after every other chapter's runs in the graph
            deps += tuple(notebook_keys)
        key = _notebook_key(chapter, profile, seed, keys)
        graph[key] = Job(key, "notebook", deps, f"{chapter} seed {seed} ({profile.name})", chapter=chapter,
                         profile=profile.name, seed=seed, chapters=(chapter,), in_book=in_book)
        if chapter not in SUMMARY_CHAPTERS:
            notebook_keys.append(key)
    return graph


def run_dir(profile: str, seed: int, root: Path | None = None) -> Path:
    """The scratch folder of the executed notebooks of ``profile`` and ``seed``."""
    return Path(root or artifact_root()) / "runs" / profile / f"seed{seed}"


def is_done(job: Job, root: Path | None = None) -> bool:
    """Whether the job's artifact is in the cache (a trained model; a notebook run with the same key)."""
    root = Path(root or artifact_root())
    if job.kind == "train":
        d = root / "models" / job.key
        return all((d / f).exists() for f in ("model.pt", "model.pt.sha256", "record.json"))
    marker = run_dir(job.profile, job.seed, root) / f"{job.chapter}.json"
    try:
        return json.loads(marker.read_text()).get("key") == job.key
    except (OSError, ValueError):
        return False


def _fault_once(key: str) -> None:
    """Fault injection for tests: with ``$QADTR_FAULT_ONCE = "<key>:<marker>"``, the job of ``key`` kills
    its own process the first time (when the marker file does not exist yet)."""
    spec = os.environ.get(FAULT_VAR, "")
    if spec.startswith(key + ":"):
        marker = Path(spec[len(key) + 1:])
        if not marker.exists():
            marker.write_text("killed once\n")
            os._exit(17)


def run_job(job: Job, device: str = "cpu", threads: int = 1, root: str | None = None, data: str | None = None,
            progress: bool = False, book: str | None = None, commit: str | None = None) -> dict[str, Any]:
    """Run one job here (in this process or on a cluster worker) and return a small record of it.

    ``threads`` pins ``torch.set_num_threads`` (and ``OMP_NUM_THREADS`` for a notebook kernel), so that a
    job computes the same bytes wherever it runs; ``root`` is the artifact root and ``data`` the
    CIFAR-10 source (default: ``$QADTR_ARTIFACTS`` / ``$QADTR_CIFAR10`` as seen by the worker).
    ``book`` (a folder, e.g. ``book/results``): a notebook job executes into it as ``make notebooks``
    does (figures into ``<book>/../_static``, the scorecard's JSON beside the notebooks, the commit stamped),
    and runs even where the scratch run is cached, so that every notebook of the book comes from this build;
    ``commit`` is the stamp (default: the checkout's commit now; :func:`run_graph` reads it once per build).
    """
    from ..data import ENV_VAR as DATA_VAR

    if job.kind not in ("train", "notebook"):
        raise ValueError(f"unknown job kind {job.kind!r}")
    _fault_once(job.key)
    rerun = book is not None and job.kind == "notebook"  # a book build runs every chapter, cached or not
    extra: dict[str, Any] = {}
    if not job.in_book and book is not None:
        # a chapter's other seeds run in the scratch folder; their claims feed the scorecard, their entries
        # the book's defenses.json (kept beside the first seed's: one entry per model, width and seed)
        extra = {"defenses_json": str(Path(book).resolve() / "defenses.json")}
        book = None
    t0 = time.perf_counter()
    with _settings(threads, {ARTIFACTS_VAR: root, DATA_VAR: data, "OMP_NUM_THREADS": str(int(threads))}):
        if is_done(job) and not rerun:
            return {"key": job.key, "label": job.label, "ran": False, "seconds": 0.0}
        if job.kind == "train":
            from ..data import load_cifar10
            from ..zoo import get_or_train

            get_or_train(job.config, load_cifar10(data), progress=progress, device=device)
        elif book is not None:
            _run_book_notebook(job, device, Path(book), commit)
        else:
            _run_notebook(job, device, progress, force=rerun, **extra)
    return {"key": job.key, "label": job.label, "ran": True, "seconds": time.perf_counter() - t0}


@contextlib.contextmanager
def _settings(threads: int, env: Mapping[str, str | None]) -> Iterator[None]:
    """Pin torch's thread count and set environment variables (None: leave as is) for a block, then restore."""
    import torch

    old_threads, old_env = torch.get_num_threads(), {k: os.environ.get(k) for k in env}
    torch.set_num_threads(int(threads))
    os.environ.update({k: str(v) for k, v in env.items() if v is not None})
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _parameters(job: Job, **values: Any) -> dict[str, Any]:
    """The papermill parameters of a notebook job: its profile, and of ``values`` only what the notebook
    declares (a chapter without ``device`` runs on the CPU)."""
    declared = notebook_parameters(job.chapter)
    return {"profile": job.profile, **{k: v for k, v in values.items() if k in declared}}


def to_run(graph: Mapping[str, Job], root: Path | None = None, book: str | Path | None = None) -> list[Job]:
    """The jobs of ``graph`` a build runs: those not in the cache, and with ``book`` every notebook job (the
    book's notebooks, and the other seeds' runs whose claims its scorecard reads, all come from this build)."""
    return [j for j in graph.values() if not is_done(j, root) or (book is not None and j.kind == "notebook")]


def _run_notebook(job: Job, device: str, progress: bool, force: bool = False, **values: Any) -> None:
    """Execute a chapter into its scratch folder (unless its run is cached and not ``force``); ``values``:
    more papermill parameters, where the notebook declares them."""
    import papermill

    from ..artifacts import file_lock

    out_dir = run_dir(job.profile, job.seed)
    params = _parameters(job, seed=job.seed, device=device, progress=progress, static_dir=str(out_dir / "_static"),
                         **values)
    with file_lock(out_dir):
        if is_done(job) and not force:
            return
        papermill.execute_notebook(str(NOTEBOOK_DIR / f"{job.chapter}.ipynb"), str(out_dir / f"{job.chapter}.ipynb"),
                                   parameters=params, cwd=str(NOTEBOOK_DIR), progress_bar=False)
        write_json(out_dir / f"{job.chapter}.json", {"key": job.key, "chapter": job.chapter, "profile": job.profile,
                                                     "seed": job.seed, "parameters": params, "deps": list(job.deps)})


def _run_book_notebook(job: Job, device: str, book: Path, commit: str | None = None) -> None:
    """Execute a chapter into the book folder with ``make notebooks``'s parameters (plus the device)."""
    import papermill

    from .bookconfig import source_commit, stamp

    book = book.resolve()
    params = _parameters(job, seed=job.seed, device=device, progress=False, static_dir=str(book.parent / "_static"),
                         scorecard_json=str(book / "scorecard.json"), defenses_json=str(book / "defenses.json"),
                         certified_json=str(book / "certified.json"))
    book.mkdir(parents=True, exist_ok=True)
    out = book / f"{job.chapter}.ipynb"
    papermill.execute_notebook(str(NOTEBOOK_DIR / f"{job.chapter}.ipynb"), str(out), parameters=params,
                               cwd=str(NOTEBOOK_DIR), progress_bar=False)
    stamp([out], commit or source_commit())


def _after(job: Job, kwargs: dict[str, Any], *deps: Any) -> dict[str, Any]:
    """A job run on a Dask worker once its dependencies' results (``deps``) are in."""
    return run_job(job, **kwargs)


def run_graph(graph: Mapping[str, Job], device: str = "cpu", threads: int = 1, scheduler: str | Any | None = None,
              root: str | Path | None = None, data: str | None = None, retries: int = 1, progress: bool = False,
              on_done: Callable[[dict[str, Any]], None] | None = None, workers: int = 1,
              book: str | Path | None = None) -> list[dict[str, Any]]:
    """Run every job of ``graph`` that is not in the cache yet; returns the records of the jobs run.

    ``workers`` > 1 (without a scheduler) runs up to that many jobs at once, each in its own process on
    ``device``, a job starting once its dependencies are done: several small-model jobs then share one
    GPU, whose kernels they are too small to fill alone. No Dask is needed for this. ``book``: the
    notebook jobs execute into that folder as the book's results (see :func:`run_job`), all of them.

    With ``scheduler`` (a Dask scheduler address, or a ``distributed.Client``), jobs are submitted to
    that cluster, each as the task named by its key, with its dependencies' tasks as inputs,
    ``retries`` and, on CUDA, the worker resource ``{"GPU": 1}`` (start GPU workers with
    ``--resources GPU=1``). Without one, they run here, one after the other, as
    ``get_or_train`` always did. Dask is imported only when a scheduler is given.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    root_s = str(Path(root).resolve()) if root is not None else str(artifact_root())
    todo = to_run(graph, Path(root_s), book)
    kwargs = {"device": device, "threads": threads, "root": root_s, "data": data, "progress": progress,
              "book": str(Path(book).resolve()) if book is not None else None, "commit": None}
    if book is not None:  # the commit the build starts from, as `make notebooks` reads it once before its loop
        from .bookconfig import source_commit

        kwargs["commit"] = source_commit()
    if not todo:
        return []
    if scheduler is None and workers > 1:
        return _run_pool(graph, todo, kwargs, workers, on_done)
    if scheduler is None:
        out = []
        for job in todo:
            log.info("running %s (%s)", job.label, job.key)
            rec = run_job(job, **kwargs)
            out.append(rec)
            if on_done:
                on_done(rec)
        return out
    from distributed import Client, as_completed

    cluster = None
    if isinstance(scheduler, str) and scheduler.startswith("local"):
        # "local" or "local:N": a throw-away LocalCluster of N single-threaded worker processes on this
        # machine (default 2), e.g. to check that a cluster build equals the in-process one.
        from distributed import LocalCluster

        n = int(scheduler.split(":", 1)[1]) if ":" in scheduler else 2
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None)
        scheduler = cluster.scheduler_address
    client = scheduler if isinstance(scheduler, Client) else Client(scheduler)
    try:
        resources = {"GPU": 1} if str(device).startswith("cuda") else None
        pending = {j.key for j in todo}
        futures: dict[str, Any] = {}
        for job in todo:  # graph order: dependencies first
            deps = [futures[d] for d in job.deps if d in pending]
            futures[job.key] = client.submit(_after, job, kwargs, *deps, key=f"{job.kind}-{job.key}",
                                             resources=resources, retries=retries, pure=False)
        out = []
        for fut in as_completed(list(futures.values())):
            rec = fut.result()
            out.append(rec)
            if on_done:
                on_done(rec)
        return out
    finally:
        if client is not scheduler:
            client.close()
        if cluster is not None:
            cluster.close()


def _run_pool(graph: Mapping[str, Job], todo: Sequence[Job], kwargs: dict[str, Any], workers: int,
              on_done: Callable[[dict[str, Any]], None] | None) -> list[dict[str, Any]]:
    """:func:`run_graph` on a pool of ``workers`` fresh processes (spawned: CUDA cannot be forked)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    waiting = {j.key: j for j in todo}
    running: dict[Any, str] = {}
    out: list[dict[str, Any]] = []
    failed: BaseException | None = None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        while waiting or running:
            ready = [j for j in waiting.values() if all(d not in waiting and d not in running.values() for d in j.deps)]
            for job in ready[: max(0, workers - len(running))]:
                log.info("running %s (%s)", job.label, job.key)
                running[pool.submit(run_job, job, **kwargs)] = job.key
                del waiting[job.key]
            if not running and not waiting:
                break
            if not running:
                raise RuntimeError(f"jobs whose dependencies can never finish: {sorted(waiting)}")
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                del running[fut]
                if fut.exception() is not None:
                    # a failed job fails the build, as in the in-process run: start nothing new, let the
                    # running jobs finish (their artifacts are kept), then raise the first failure
                    failed = failed or fut.exception()
                    waiting.clear()
                    continue
                out.append(fut.result())
                if on_done:
                    on_done(out[-1])
    if failed is not None:
        raise failed
    return out


@dataclass(frozen=True)
class ChapterStatus:
    """What of one chapter is cached under a profile, and the estimated GPU cost of the rest."""

    chapter: str
    models: int
    models_cached: int
    notebook_done: bool | None
    train_hours_missing: float
    train_hours_total: float
    attack_hours: float


def _attack_seconds(chapter: str, profile: Profile, params: Mapping[str, Any]) -> float:
    """Estimated GPU seconds of a chapter's attacks (the crafting it caches), from measured unit costs."""
    from . import estimates as est

    a = profile.arch
    universal = est.universal_patch_seconds(a, profile.patch_steps, profile.patch_batch)
    if chapter == "01_transferability":
        sources = 1 + len(params.get("qat_bits", ()))
        # per-image patches on the profile's source widths, of the QAT models and (dwq_reading) of DWQ's widths
        crafted = (len(profile.image_patch_source_bits) or sources) * (2 if params.get("dwq_reading") else 1)
        return ((2 * sources + 1) * universal  # two patch sizes per source, plus the convergence curve on FP
                + crafted * est.image_patch_seconds(a, profile.n_attack, profile.image_patch_steps,
                                                    profile.image_patch_restarts)
                + sources * est.pgd_seconds(a, profile.n_attack))
    if chapter in ("02_defenses", "03_ablations"):
        from ..defenses.recipes import ablation_configs, defense_configs
        from ..evaluation.threats import select_threats
        from .studies import eval_widths

        bits = list(params.get("bit_set", ()))
        table = (defense_configs if chapter == "02_defenses" else ablation_configs)(profile, bits, 0)
        attacked = eval_widths(profile, bits)
        cells = sum(len([b for b in per if b in attacked]) for per in table.values())
        # every threat crafts once per attacked (defense, width); the EOT threat runs one forward per width
        per_image = est.image_patch_seconds(a, profile.n_defense_eval, profile.defense_attack_steps,
                                            profile.defense_attack_restarts)
        return cells * (len(select_threats(profile.defense_threats)) - 1 + len(bits)) * per_image
    if chapter in ("04_gradient_alignment", "05_spatial_sensitivity"):
        return universal  # one FP patch (gradients and attribution maps are not counted)
    if chapter == "06_patch_visibility":
        return len(params.get("sizes", ())) * universal
    return 0.0


def status(profile: Profile | str, seeds: Iterable[int] | None = None, root: Path | None = None) -> list[ChapterStatus]:
    """Per chapter: models needed and cached, notebook run or not, and the estimated GPU-hours (training of
    the missing models, training of all, attacks) from :mod:`qadtr_core.build.estimates`. A model shared by
    several chapters is counted in the first chapter that needs it."""
    from . import estimates as est

    profile = get_profile(profile) if isinstance(profile, str) else profile
    graph = build_graph(profile, seeds)
    counted: set[str] = set()
    out = []
    for chapter in chapters():
        params = notebook_parameters(chapter)
        trains = [j for j in graph.values() if j.kind == "train" and chapter in j.chapters]
        nbs = [j for j in graph.values() if j.kind == "notebook" and j.chapter == chapter]
        missing_h = total_h = 0.0
        for j in trains:
            if j.key in counted:
                continue
            counted.add(j.key)
            c = j.config
            h = est.training_seconds(c.arch, c.bits, c.epochs, c.n_train, c.strategy) / 3600
            total_h += h
            if not is_done(j, root):
                missing_h += h
        out.append(ChapterStatus(chapter, len(trains), sum(is_done(j, root) for j in trains),
                                 all(is_done(j, root) for j in nbs) if nbs else None, missing_h, total_h,
                                 len(nbs) * _attack_seconds(chapter, profile, params) / 3600))
    return out
