"""The `qadtr` command line, the job graph behind `qadtr build`, the paper profile and the seed aggregation."""
from __future__ import annotations

import dataclasses
import json
import sys
import types

import pandas as pd
import pytest

from qadtr_core.build import cli, jobs
from qadtr_core.profiles import PROFILES

# Fields a profile may change (protocol.md: "A profile changes budgets, never the definitions"); any other
# field (present or added later) must be the same in the quick and the paper profile.
BUDGET_FIELDS = {
    "name", "arch", "n_train", "fp_epochs", "qat_epochs", "qat_epochs_by_bits", "batch_size", "fp_lr", "qat_lr",
    "n_eval", "n_calib", "n_attack", "patch_steps", "patch_first_phase", "patch_max_steps", "patch_batch",
    "n_patch_train", "image_patch_steps",
    "image_patch_restarts", "n_attribution", "ig_steps", "n_location", "location_stride", "defense_n_train",
    "defense_epochs", "defense_batch", "defense_lr", "defense_inner_steps", "n_defense_eval",
    "defense_attack_steps", "defense_attack_restarts", "defense_probe_every", "defense_rs_queries", "defense_rp_draws",
    "ablation_variants",  # fewer cells at the quick budget (issue 17: the three "without X" variants), never other ones
    "certify_epochs", "certify_n", "certify_patch_sizes", "certify_masks_per_side", "certify_rs_queries",
    "certify_image_patch_steps", "certify_image_patch_restarts",
    "defense_seeds", "defense_start_seed",  # how many seeds, and whether they share their starts: budget
    "image_patch_source_bits",  # fewer transfer sources at the quick budget, never a shorter attack
    "defense_eval_bits", "defense_threats",  # fewer cells of the threat matrix at the quick budget, never other ones
}


@pytest.fixture(autouse=True)
def empty_root(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path / "artifacts"))
    return tmp_path / "artifacts"


def test_paper_profile_differs_from_quick_in_budgets_only():
    quick, paper = PROFILES["quick"], PROFILES["paper"]
    fields = {f.name for f in dataclasses.fields(quick)}
    for name in fields - BUDGET_FIELDS:
        assert getattr(quick, name) == getattr(paper, name), name
    # the paper's known budgets (paper.md 3.2, protocol.md)
    assert (paper.arch, paper.fp_epochs, paper.fp_lr, paper.batch_size, paper.n_train) == ("resnet56", 200, 0.1, 128, 50000)
    budgets = (paper.n_attack, paper.image_patch_steps, paper.defense_attack_steps, paper.n_patch_train)
    # the defense threats run longer than protocol.md's 100 steps: on a defended model 100 x 3 and 800 x 4 did not
    # converge, 1,600 x 4 did (profiles.py), and the paper profile is never weaker than the quick one
    assert budgets == (1000, 100, 1600, 50000)
    assert paper.defense_attack_steps >= quick.defense_attack_steps
    assert paper.defense_attack_restarts >= quick.defense_attack_restarts
    assert paper.defense_eval_bits == () and paper.defense_threats == ()  # the paper profile attacks every cell
    assert paper.defense_epochs == paper.qat_epochs  # a defense gets the budget of the QAT model it replaces


def test_help_lists_the_subcommands(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for sub in ("build", "status", "export", "import"):
        assert sub in out


def test_graph_orders_dependencies_and_fans_out_over_seeds():
    graph = jobs.build_graph("smoke", [0, 1])
    order = list(graph)
    for i, job in enumerate(graph.values()):
        assert all(order.index(d) < i for d in job.deps), job.label  # every job after its dependencies
        if job.kind == "train":
            assert job.key == jobs.model_key(job.config)
            assert job.deps == ((jobs.model_key(job.config.init),) if job.config.init else ())
    seeds = {s: {k for k, j in graph.items() if j.kind == "train" and j.seed == s} for s in (0, 1)}
    assert seeds[0] and seeds[1] and not seeds[0] & seeds[1]  # each seed its own configs
    notebooks = [j for j in graph.values() if j.kind == "notebook"]
    assert len(notebooks) == 2 * len(jobs.chapters())
    score = next(j for j in notebooks if j.chapter == "07_scorecard" and j.seed == 0)
    others = {j.key for j in notebooks if j.seed == 0 and j.chapter not in jobs.SUMMARY_CHAPTERS}
    assert others <= set(score.deps)


def test_only_restricts_to_one_chapter():
    graph = jobs.build_graph("smoke", [0], only="00_baselines")
    trains = [j for j in graph.values() if j.kind == "train"]
    assert len(trains) == 1 + len(jobs.notebook_parameters("00_baselines")["qat_bits"])
    assert [j.chapter for j in graph.values() if j.kind == "notebook"] == ["00_baselines"]
    defenses = jobs.build_graph("smoke", [0], only="02_defenses", models_only=True)
    assert all(j.kind == "train" for j in defenses.values())
    assert {j.config.strategy for j in defenses.values()} >= {"standard", "pbat", "dwq", "qadtr"}
    with pytest.raises(ValueError, match="unknown chapter"):
        jobs.build_graph("smoke", [0], only="99_nope")


def test_build_dry_run_lists_the_jobs(capsys):
    assert cli.main(["build", "--profile", "smoke", "--device", "cpu", "--only", "00_baselines", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "6 to run" in out and out.count(" train ") == 5 and out.count(" notebook ") == 1


def test_status_estimates_gpu_hours_per_chapter(capsys):
    assert cli.main(["status", "--profile", "paper"]) == 0
    out = capsys.readouterr().out
    for chapter in jobs.chapters():
        assert chapter in out
    rows = {r.chapter: r for r in jobs.status("paper")}
    assert rows["00_baselines"].models_cached == 0 and rows["00_baselines"].train_hours_missing > 2  # FP: 200 x 23.4 s
    assert rows["02_defenses"].attack_hours > 0 and "H100" in out and "Estimates" in out


def test_notebook_job_runs_once(empty_root):
    from qadtr_core.artifacts import save_table

    # 08_reproduce summarises recorded wall times; give it one (it fails on an empty cache: reported)
    save_table("00_baselines", "smoke", "t", pd.DataFrame({"a": [1]}), {"seed": 0, "wall_seconds": 1.0})
    graph = jobs.build_graph("smoke", [0], only="08_reproduce")
    (job,) = graph.values()
    assert job.kind == "notebook" and not job.deps
    ran = jobs.run_graph(graph, root=empty_root)
    assert [r["key"] for r in ran] == [job.key]
    assert (jobs.run_dir("smoke", 0, empty_root) / "08_reproduce.ipynb").exists()
    assert jobs.is_done(job, empty_root) and jobs.run_graph(graph, root=empty_root) == []


def test_export_and_import_call_the_bundle(monkeypatch, tmp_path):
    calls = []
    fake = types.ModuleType("qadtr_core.build.bundle")
    fake.export_bundle = lambda profile, archive, root=None: calls.append(("export", profile, archive, root)) or archive
    summary = {"profile": "smoke", "commit": "abc", "files": 3, "bytes": 10, "added": ["a"], "replaced": [], "unchanged": []}
    fake.import_bundle = lambda archive, root=None: calls.append(("import", archive, root)) or summary
    fake.read_manifest = lambda archive: {"profile": "smoke"}
    fake.BundleError = RuntimeError
    monkeypatch.setitem(sys.modules, "qadtr_core.build.bundle", fake)
    cli.main(["export", "--profile", "smoke", str(tmp_path / "a.tar")])
    cli.main(["import", str(tmp_path / "a.tar")])
    assert calls == [("export", "smoke", tmp_path / "a.tar", None), ("import", tmp_path / "a.tar", None)]


def test_aggregate_seeds_gives_t_intervals(empty_root):
    from qadtr_core.artifacts import save_table
    from qadtr_core.build.seeds import aggregate_seeds, seed_tables

    for s in (0, 1, 2):
        t = pd.DataFrame({"defense": ["A", "A", "B"], "bits": [2, 2, 4], "asr": [10.0 + s, 12.0 + s, 30.0]})
        save_table("99_test", "smoke", "asr", t, {"seed": s, "n": 3})
    tables = seed_tables("99_test", "smoke", "asr")
    assert sorted(tables) == [0, 1, 2]
    agg = aggregate_seeds(tables, "asr", ["defense", "bits"]).set_index("defense")
    assert agg.loc["A", "asr"] == pytest.approx(12.0) and agg.loc["A", "n_seeds"] == 3
    assert agg.loc["A", "ci_low"] < 12.0 < agg.loc["A", "ci_high"]
    assert agg.loc["B", "ci_low"] == agg.loc["B", "ci_high"] == pytest.approx(30.0)  # no spread, no width


def test_default_device():
    import torch

    from qadtr_core.utils import default_device

    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_worker_pool_builds_the_same_bytes_in_dependency_order(tmp_path):
    """``workers=2``: two seeds' parent/child chains in a process pool give the in-process checkpoints,
    and no child starts before its parent is done (it fine-tunes the parent's weights)."""
    import numpy as np

    from qadtr_core.testing import synthetic_cifar
    from qadtr_core.train import TrainConfig

    d = synthetic_cifar(n_train=128, n_test=16, seed=0)
    data = tmp_path / "tiny.npz"
    nhwc = lambda x: x.permute(0, 2, 3, 1).numpy()  # noqa: E731
    np.savez(data, x_train=nhwc(d.x_train), y_train=d.y_train.numpy(), x_test=nhwc(d.x_test), y_test=d.y_test.numpy())
    configs = {}
    for seed in (0, 1):
        parent = TrainConfig(arch="smallcnn", epochs=1, lr=0.05, batch_size=64, n_train=128, seed=seed, profile="test")
        configs[f"s{seed}"] = [parent, dataclasses.replace(parent, bits=4, lr=0.01, schedule="cosine", init=parent)]
    graph = jobs.build_graph("smoke", configs=configs)
    order: list[str] = []
    ran = jobs.run_graph(graph, threads=1, root=tmp_path / "pool", data=str(data), workers=2,
                         on_done=lambda r: order.append(r["key"]))
    assert len(ran) == 4
    for job in graph.values():
        for dep in job.deps:
            assert order.index(dep) < order.index(job.key)
    jobs.run_graph(graph, threads=1, root=tmp_path / "serial", data=str(data))
    read = lambda root: {p.parent.name: p.read_bytes() for p in (root / "models").glob("*/model.pt")}  # noqa: E731
    assert read(tmp_path / "pool") == read(tmp_path / "serial") and len(read(tmp_path / "serial")) == 4
    with pytest.raises(ValueError, match="workers"):
        jobs.run_graph(graph, root=tmp_path / "none", data=str(data), workers=0, threads=1)


def test_book_build_refuses_models_only(capsys):
    assert cli.main(["build", "--profile", "smoke", "--book", "book/results", "--dry-run", "--models-only"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--book book/results executes the chapters: drop --models-only" in err[0]
    assert cli.main(["build", "--profile", "smoke", "--scheduler", "local", "--workers", "2", "--dry-run"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    with pytest.raises(ValueError, match="--book"):
        cli.main(["--debug", "build", "--profile", "smoke", "--book", "b", "--dry-run", "--models-only"])


@pytest.mark.parametrize("argv, match", [
    (["import"], "the following arguments are required: archive"),
    (["status", "--profile", "huge"], "argument --profile: invalid choice: 'huge'"),
    (["build", "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    (["launch"], "argument command: invalid choice: 'launch'"),
])
def test_a_bad_argument_prints_one_line_and_exits_2(argv, match, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and match in err[0] and "usage:" not in captured.err and captured.out == ""


def test_a_junk_archive_prints_one_line(tmp_path, capsys):
    for name, data in (("junk.tar.xz", b"not an archive at all\n" * 40), ("empty.tar", b"")):
        (tmp_path / name).write_bytes(data)
        assert cli.main(["import", str(tmp_path / name), "--root", str(tmp_path / "cache")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("qadtr import: error: ") and name in err[0]
        assert "not a tar archive (plain, gzip, bzip2 or xz)" in err[0] and "method gz" not in err[0]
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.pt"))


def test_the_default_build_runs_the_defenses_chapter_at_every_defense_seed():
    """Quick: the defenses chapter at seeds 0 and 1 (its first seed into the book, the second beside it),
    every other chapter at 0; the seed-1 defenses fine-tune from the seed-0 starts, so the default graph
    adds exactly the defense models and leaves every seed-0 model as it was; the scorecard follows both
    runs of the defenses chapter."""
    from qadtr_core.profiles import get_profile

    P = get_profile("quick")
    assert P.defense_seeds == (0, 1) and P.defense_start_seed == 0
    graph = jobs.build_graph(P)
    order = list(graph)
    assert all(order.index(d) < i for i, j in enumerate(graph.values()) for d in j.deps)
    runs = {(j.chapter, j.seed): j for j in graph.values() if j.kind == "notebook"}
    assert {s for c, s in runs if c == "02_defenses"} == {0, 1}
    assert {c for c, s in runs if s == 1} == {"02_defenses"}
    assert runs["02_defenses", 0].in_book and not runs["02_defenses", 1].in_book
    assert all(j.in_book for (c, s), j in runs.items() if c != "02_defenses")
    assert runs["02_defenses", 1].key in runs["07_scorecard", 0].deps
    seed0 = {k for k, j in jobs.build_graph(P, [0], models_only=True).items()}
    extra = {k: j for k, j in jobs.build_graph(P, models_only=True).items() if k not in seed0}
    assert sorted(j.config.strategy for j in extra.values()) == ["dwq"] + ["pbat"] * 5 + ["qadtr"]
    for j in extra.values():  # trained at seed 1 (data order and inner attacks), from a seed-0 start
        assert j.config.seed == 1 and j.config.strategy_params.seed == 1 and j.config.init.seed == 0
        assert set(j.deps) <= seed0
    with pytest.raises(ValueError, match="at least one seed"):
        jobs.build_graph(P, [])
    from qadtr_core.defenses.recipes import pbat_config, surrogate_config

    paper = get_profile("paper")  # no shared start: each seed its own chain (and surrogate)
    assert paper.defense_start_seed is None and pbat_config(paper, 4, 1).init.seed == 1
    assert surrogate_config(paper, 1).seed != surrogate_config(paper, 0).seed
    assert surrogate_config(P, 1) == surrogate_config(P, 0)
    # an explicit seed list runs every chapter at each seed, the first into the book
    both = [j for j in jobs.build_graph("smoke", [1, 0]).values() if j.kind == "notebook"]
    assert {j.seed for j in both if j.in_book} == {1} and {j.seed for j in both if not j.in_book} == {0}


def test_a_chapter_run_outside_the_book_is_cached_in_the_scratch_folder(empty_root, tmp_path):
    from qadtr_core.artifacts import save_table

    save_table("00_baselines", "smoke", "t", pd.DataFrame({"a": [1]}), {"seed": 0, "wall_seconds": 1.0})
    (job,) = jobs.build_graph("smoke", [0], only="08_reproduce").values()
    aside = dataclasses.replace(job, in_book=False)
    book = tmp_path / "book" / "results"
    assert jobs.run_job(aside, root=str(empty_root), book=str(book))["ran"]
    assert jobs.is_done(aside, empty_root) and not book.exists()  # scratch, not the book
    assert jobs.to_run({aside.key: aside}, empty_root) == []  # cached for a scratch build
    # a book build runs it again (the scorecard's claims all come from the build's own commit), still aside
    assert jobs.to_run({aside.key: aside}, empty_root, book=book) == [aside]
    out = jobs.run_dir("smoke", 0, empty_root) / "08_reproduce.ipynb"
    before = out.stat().st_mtime_ns
    assert jobs.run_job(aside, root=str(empty_root), book=str(book))["ran"] and not book.exists()
    assert out.stat().st_mtime_ns > before  # really executed again
    after = out.stat().st_mtime_ns
    assert not jobs.run_job(aside, root=str(empty_root))["ran"] and out.stat().st_mtime_ns == after


def test_a_changed_budget_is_another_notebook_run():
    from qadtr_core.profiles import get_profile

    P = get_profile("smoke")
    key = {j.chapter: j.key for j in jobs.build_graph(P, [0]).values() if j.kind == "notebook"}
    more = dataclasses.replace(P, defense_attack_steps=P.defense_attack_steps + 1)  # no model changes
    key2 = {j.chapter: j.key for j in jobs.build_graph(more, [0]).values() if j.kind == "notebook"}
    assert all(key[c] != key2[c] for c in key)


def test_profile_seeds_are_checked():
    from qadtr_core.profiles import get_profile

    for bad in ({"defense_seeds": ()}, {"defense_seeds": (0, 0)}, {"defense_seeds": [0]}, {"defense_seeds": (-1,)},
                {"defense_start_seed": -2}, {"defense_start_seed": True}, {"image_patch_source_bits": (1,)},
                {"image_patch_source_bits": [32]}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            dataclasses.replace(get_profile("smoke"), **bad)


def test_book_build_executes_cached_chapters_into_the_book_with_one_commit(empty_root, tmp_path, monkeypatch):
    """``book=``: a chapter whose scratch run is cached still executes, into the book folder, with the
    book's static folder and the commit the build started from (even if HEAD moves meanwhile)."""
    from qadtr_core.artifacts import save_table
    from qadtr_core.build import bookconfig

    save_table("00_baselines", "smoke", "t", pd.DataFrame({"a": [1]}), {"seed": 0, "wall_seconds": 1.0})
    graph = jobs.build_graph("smoke", [0], only="08_reproduce")
    (job,) = graph.values()
    jobs.run_graph(graph, root=empty_root)
    assert jobs.is_done(job, empty_root)  # the scratch run is cached ...
    commits = iter(["c-start", "c-later"])
    monkeypatch.setattr(bookconfig, "source_commit", lambda *a: next(commits))
    book = tmp_path / "book" / "results"
    ran = jobs.run_graph(graph, root=empty_root, book=book)  # ... and the book run executes it all the same
    assert [r["ran"] for r in ran] == [True]
    stamp = json.loads((book / "08_reproduce.ipynb").read_text())["metadata"]["qadtr"]
    assert stamp["commit"] == "c-start" and stamp["profile"] == "smoke"
