"""The ``qadtr`` command line: build the artifact cache, see what is in it, move it between machines.

    qadtr build  --profile P [--device D] [--seeds 0 1 2] [--only CHAPTER] [--models-only]
                 [--scheduler ADDRESS | --workers N] [--book DIR] [--threads K] [--dry-run]
    qadtr status --profile P [--seeds 0 1 2]
    qadtr export --profile P [--models-only [--seeds 0 1]] ARCHIVE
    qadtr import [--missing-only --profile P] ARCHIVE

``build`` runs the job graph of :mod:`qadtr_core.build.jobs` (train every model a chapter needs, then execute
the chapter notebook into a scratch folder, which caches its crafted patches and result tables); with
``--scheduler`` the graph goes to a Dask cluster. ``status`` lists, per chapter, what is cached, what
is missing and the estimated GPU cost. ``export --models-only`` writes the models bundle the repository
ships (:mod:`qadtr_core.build.models_bundle`); ``import`` takes either kind of archive. A bad argument, a
refused archive or a failed build prints one line and exits with status 2 (``--debug``: the traceback).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..profiles import PROFILES


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error: ``qadtr import: error: ... (see --help)`` and exit status 2, no usage text
    (its subcommand parsers are of this class too)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: object) -> str:
    """``text`` on one line: its whitespace runs, newlines included, folded into single spaces."""
    return " ".join(str(text).split())


def _parser() -> argparse.ArgumentParser:
    from ..utils import default_device

    ap = _Parser(prog="qadtr", description="Build and inspect the QADT-R study's artifact cache.")
    ap.add_argument("--debug", action="store_true", help="show the traceback of an error")
    sub = ap.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="prebuild the artifact cache of a profile (models, then chapter notebooks)")
    b.add_argument("--profile", default="quick", choices=list(PROFILES))
    b.add_argument("--device", default=default_device(), help="cpu, cuda or cuda:N (default: %(default)s)")
    b.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="every chapter once per seed (default: each chapter's own seeds: the defenses chapter at "
                        "the profile's defense_seeds, every other at 0)")
    b.add_argument("--only", metavar="CHAPTER", help="only this chapter's jobs (e.g. 02_defenses)")
    b.add_argument("--models-only", action="store_true", help="train the models, do not execute the notebooks")
    b.add_argument("--scheduler", metavar="ADDRESS",
                   help="a Dask scheduler (tcp://host:8786), or local[:N] for a local cluster of N worker "
                        "processes (default 2); default: run here, in this process")
    b.add_argument("--workers", type=int, default=1,
                   help="without --scheduler: run up to this many jobs at once, each in its own process "
                        "(several small jobs share one GPU); default: %(default)s")
    b.add_argument("--threads", type=int, default=None,
                   help="torch threads per job (default: 1 with --scheduler, else torch's default)")
    b.add_argument("--retries", type=int, default=1, help="retries of a failed job on a cluster (default: 1)")
    b.add_argument("--book", metavar="DIR", type=Path, default=None,
                   help="execute the chapters into DIR as the book's results (as `make notebooks` does, e.g. "
                        "book/results; figures into DIR/../_static), every chapter, cached or not")
    b.add_argument("--bundle", metavar="ARCHIVE", type=Path, default=None,
                   help="rewrite this models bundle after every model trained (e.g. bundle/quick-models.tar.xz), so "
                        "that a long CPU build can be committed model by model, and re-import it (a model fine-tuned from "
                        "another starts from the bundle's weights)")
    b.add_argument("--dry-run", action="store_true", help="list the jobs to run, run nothing")

    s = sub.add_parser("status", help="what of a profile is cached, what is missing, estimated GPU cost")
    s.add_argument("--profile", default="quick", choices=list(PROFILES))
    s.add_argument("--seeds", type=int, nargs="+", default=None, help="as for build")

    e = sub.add_parser("export", help="pack a profile's artifacts into an archive (qadtr_core.build.bundle)")
    e.add_argument("--profile", default="quick", choices=list(PROFILES))
    e.add_argument("archive", type=Path)
    e.add_argument("--root", type=Path, default=None, help="artifact root (default: $QADTR_ARTIFACTS or artifacts/)")
    e.add_argument("--models-only", action="store_true",
                   help="only the trained models of the profile's job graph, weights in float16 (the models bundle)")
    e.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="with --models-only: the models of these seeds' graph (default: the default build's)")

    i = sub.add_parser("import", help="unpack an archive written by `qadtr export` into the artifact cache")
    i.add_argument("archive", type=Path)
    i.add_argument("--root", type=Path, default=None)
    i.add_argument("--missing-only", action="store_true",
                   help="a models bundle: import it only when it is --profile's and the cache lacks one of its models")
    i.add_argument("--profile", default="quick", choices=list(PROFILES), help="with --missing-only (default: %(default)s)")
    for p in sub.choices.values():  # also after the subcommand; SUPPRESS keeps a --debug given before it
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show the traceback of an error")
    return ap


def _build(args: argparse.Namespace) -> int:
    import torch

    from . import jobs

    if args.scheduler and args.workers != 1:
        raise ValueError(f"--workers {args.workers} runs jobs in local processes; with --scheduler {args.scheduler} the "
                         f"cluster's workers run them: give one of the two")
    if args.book is not None and args.models_only:
        raise ValueError(f"--book {args.book} executes the chapters: drop --models-only")
    graph = jobs.build_graph(args.profile, args.seeds, only=args.only, models_only=args.models_only)
    todo = jobs.to_run(graph, book=args.book)
    print(f"{args.profile}: {len(graph)} jobs, {len(graph) - len(todo)} cached, {len(todo)} to run "
          f"on {args.device}" + (f" via {args.scheduler}" if args.scheduler else
                                 f" in {args.workers} local processes" if args.workers > 1 else " in this process"),
          flush=True)
    if args.dry_run:
        for j in todo:
            print(f"  {j.kind:8} {j.key}  {j.label}")
        return 0
    threads = args.threads or (1 if args.scheduler else torch.get_num_threads())

    def done(r: dict) -> None:
        print(f"  done {r['label']} ({r['seconds']:.0f} s)", flush=True)
        if args.bundle is not None and r.get("ran") and graph[r["key"]].kind == "train":
            from .models_bundle import export_models, import_models

            s = export_models(args.profile, args.bundle, args.seeds)
            # The cache takes the bundle's compact weights back, so that a model fine-tuned from this one starts
            # from exactly what a user of the bundle gets.
            import_models(args.bundle)
            print(f"  {args.bundle}: {len(s['models'])} models, {s['bytes'] / 2**20:.1f} MiB (cache re-imported)",
                  flush=True)

    jobs.run_graph(graph, device=args.device, threads=threads, scheduler=args.scheduler, retries=args.retries,
                   workers=args.workers, book=args.book,
                   progress=not args.scheduler and args.workers == 1 and sys.stderr.isatty(), on_done=done)
    return 0


def _seeds_text(seeds: list[int] | None) -> str:
    return "of the default build (each chapter's own)" if seeds is None else " ".join(map(str, seeds))


def _status(args: argparse.Namespace) -> int:
    from . import estimates, jobs

    rows = jobs.status(args.profile, args.seeds)
    print(f"profile {args.profile}, seeds {_seeds_text(args.seeds)}")
    print(f"{'chapter':24} {'models':>6} {'cached':>6} {'notebook':>8} {'train GPU-h (missing/all)':>26} {'attack GPU-h':>12}")
    for r in rows:
        nb = "-" if r.notebook_done is None else ("done" if r.notebook_done else "missing")
        print(f"{r.chapter:24} {r.models:>6} {r.models_cached:>6} {nb:>8} "
              f"{r.train_hours_missing:>12.2f} / {r.train_hours_total:<11.2f} {r.attack_hours:>12.2f}")
    total = sum(r.train_hours_missing + (0 if r.notebook_done else r.attack_hours) for r in rows)
    print(f"estimated GPU-hours still to spend: {total:.1f}")
    print("Estimates, not measurements: per-step costs from " + estimates.unit_costs("resnet56").source
          + "; defense step ratios from " + estimates.STRATEGY_RATIO_SOURCE
          + ". A model shared by chapters is counted in the first; evaluation and attribution are not counted. "
          "Attacks are counted at their full budget: early stopping runs fewer image-steps (on the quick 2-bit "
          "PBAT model, 1,600 steps x 4 restarts ran 238,540 of 2,643,200, 9 %; profiles.py), so the attack column "
          "is an upper bound.")
    return 0


def _export(args: argparse.Namespace) -> int:
    if args.models_only:
        from .models_bundle import export_models

        s = export_models(args.profile, args.archive, args.seeds, root=args.root)
        print(f"{s['archive']}: {len(s['models'])} models of profile {args.profile} (seeds "
              f"{_seeds_text(args.seeds)}), {s['bytes'] / 2**20:.1f} MiB; {len(s['missing'])} of its job graph "
              f"not trained yet")
        return 0
    from .bundle import export_bundle

    print(export_bundle(args.profile, args.archive, root=args.root))
    return 0


def import_summary(archive: Path, s: dict) -> str:
    """One line for a reader: what an import did (``import_bundle``'s summary)."""
    return (f"{archive}: profile {s['profile']}, commit {s['commit']}, {s['files']} files "
            f"({s['bytes'] / 2**20:.1f} MiB): {len(s['added'])} entries added, {len(s['replaced'])} replaced, "
            f"{len(s['unchanged'])} unchanged")


def _import(args: argparse.Namespace) -> int:
    from .bundle import import_bundle, read_manifest

    if args.missing_only:
        from .models_bundle import ensure_models

        s = ensure_models(args.archive, args.profile, root=args.root)
        print(f"{args.archive}: nothing to import (the cache has its models, or it is not the {args.profile} bundle)"
              if s is None else import_summary(args.archive, s))
        return 0
    if read_manifest(args.archive).get("kind") == "models":
        from .models_bundle import import_models

        s = import_models(args.archive, root=args.root)
    else:
        s = import_bundle(args.archive, root=args.root)
    print(import_summary(args.archive, s))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qadtr`` console script: a known error (a refused archive, a bad value) prints
    one line and returns 2; ``--debug`` raises it with its traceback."""
    from .bundle import BundleError

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser().parse_args(argv)
    try:
        return {"build": _build, "status": _status, "export": _export, "import": _import}[args.command](args)
    except (BundleError, ValueError, FileNotFoundError) as e:
        if args.debug:
            raise
        print(f"qadtr {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
