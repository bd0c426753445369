"""Chapter 09's pieces: the masking fine-tune as a training strategy, its configs, and the certified/attacked bracket."""
import dataclasses
import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qadtr_core import zoo
from qadtr_core.artifacts import read_json
from qadtr_core.certified_study import (
    RATES,
    CertifiedCell,
    CertifiedStudyConfig,
    attack_table,
    certified_cell,
    certified_entries,
    certified_models,
    certified_table,
    reader_table,
)
from qadtr_core.certify import (
    CertifiedResult,
    CertifyConfig,
    MaskedMultiWidthConfig,
    MaskedTrainingConfig,
    certify,
    mask_set,
    masked_loss,
)
from qadtr_core.models import build_model
from qadtr_core.plots import certified_brackets
from qadtr_core.profiles import PROFILES, get_profile
from qadtr_core.quant import get_bits, prepare_bits, set_bits
from qadtr_core.stats import wilson
from qadtr_core.testing import ChannelMeanModel, colour_images, synthetic_cifar
from qadtr_core.train import TrainConfig, registered_strategies, steps_by_width, strategy_loss, total_steps


class RecordingRegionModel(nn.Module):
    """Reads only the top-left 8x8 region (its mean colour, as ChannelMeanModel) and keeps every input it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = ChannelMeanModel()
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.inner(x[..., :8, :8])


CFG = CertifiedStudyConfig(patch_sizes=(2, 3), masks_per_side=3, rs_queries=40, image_patch_steps=10,
                           image_patch_restarts=1)


def _union_of(masked: torch.Tensor, masks: torch.Tensor, max_masks: int) -> bool:
    """Whether the bool map ``masked`` is the union of 1..max_masks masks of the set."""
    singles = [m for m in masks]
    unions = {tuple(m.flatten().tolist()) for m in singles}
    if max_masks >= 2:
        unions |= {tuple((a | b).flatten().tolist()) for a in singles for b in singles}
    return tuple(masked.flatten().tolist()) in unions


def test_the_masked_loss_sees_images_with_one_or_two_masks_of_the_set():
    params = MaskedTrainingConfig(patch_size=8, masks_per_side=3, fill=0.5, seed=3)
    ms = mask_set(32, 8, 3)  # 16 px masks at 0, 9, 16: a mask misses the 8x8 corner or covers part or all of it
    x = torch.zeros(64, 3, 32, 32)
    x[:, 0] = 1.0  # pure red: class 0 by a wide margin, wherever the model looks
    y = torch.zeros(64, dtype=torch.long)
    model = RecordingRegionModel()
    loss, logits = masked_loss(params)(model, x, y, 5)
    seen = model.seen[-1]
    assert torch.equal(logits, model.inner(seen[..., :8, :8]))
    assert torch.allclose(loss, F.cross_entropy(logits, y))  # the loss is the model's loss on what it saw
    masked = (seen == 0.5).all(1)
    assert masked.any((1, 2)).all()  # every image carries a mask ...
    assert all(_union_of(m, ms.masks, 2) for m in masked)  # ... one or two of the set
    n_masks = torch.tensor([sum(bool((mk & ~m).sum() == 0) for mk in ms.masks) for m in masked])
    assert (n_masks >= 1).all()
    corner_hit = masked[:, :8, :8].any((1, 2))
    assert corner_hit.any() and (~corner_hit).any()  # the region the model reads is masked in some images only
    clean_loss = F.cross_entropy(model.inner(x[..., :8, :8]), y)
    assert loss > clean_loss  # grey where the region was masked: the loss saw the masking
    # the masks of a step are a function of (seed, step): a resumed run repeats them; another step differs
    masked_loss(params)(model, x, y, 5)
    assert torch.equal(model.seen[-1], seen)
    masked_loss(params)(model, x, y, 6)
    assert not torch.equal(model.seen[-1], seen)
    only_one = MaskedTrainingConfig(patch_size=8, masks_per_side=3, max_masks=1)
    masked_loss(only_one)(model, x, y, 0)
    assert all(_union_of(m, ms.masks, 1) for m in (model.seen[-1] == 0.5).all(1))


def test_the_masked_strategies_are_registered_and_check_their_params():
    assert {"masked", "masked_multiwidth"} <= set(registered_strategies())
    cfg = TrainConfig(arch="smallcnn", epochs=1, lr=0.1, strategy="masked")
    with pytest.raises(ValueError, match="strategy 'masked' needs a MaskedTrainingConfig"):
        strategy_loss(cfg)
    with pytest.raises(ValueError, match="strategy 'masked_multiwidth' needs a MaskedMultiWidthConfig"):
        strategy_loss(dataclasses.replace(cfg, strategy="masked_multiwidth", strategy_params=MaskedTrainingConfig(8, 3)))
    for kwargs, match in [(dict(patch_size=0, masks_per_side=3), "patch_size must be a positive integer, got 0"),
                          (dict(patch_size=8, masks_per_side=0), "masks_per_side must be a positive integer"),
                          (dict(patch_size=8, masks_per_side=3, max_masks=0), "max_masks must be a positive integer"),
                          (dict(patch_size=8, masks_per_side=3, fill=2.0), "fill must be a value in"),
                          (dict(patch_size=8.0, masks_per_side=3), "patch_size must be a positive integer, got 8.0")]:
        with pytest.raises(ValueError, match=match):
            MaskedTrainingConfig(**kwargs)
    with pytest.raises(ValueError, match="repeats a bit-width"):
        MaskedMultiWidthConfig(MaskedTrainingConfig(8, 3), (4, 4))
    with pytest.raises(ValueError, match="masking must be a MaskedTrainingConfig"):
        MaskedMultiWidthConfig((8, 3))


def test_the_multiwidth_masked_loss_switches_the_width_per_batch_with_equal_steps():
    mw = MaskedMultiWidthConfig(MaskedTrainingConfig(8, 3, seed=1), (32, 4, 2))
    draws = [mw.train_bits(t) for t in range(30)]
    for start in range(0, 30, 3):  # every run of three steps visits every width once, in a random order
        assert sorted(draws[start : start + 3]) == [2, 4, 32]
    assert len({tuple(draws[s : s + 3]) for s in range(0, 30, 3)}) > 1
    torch.manual_seed(0)
    model = build_model("smallcnn")
    for b in (4, 2):
        prepare_bits(model, b)
    loss_fn = masked_loss(mw.masking, multiwidth=mw)
    x, y = torch.rand(4, 3, 32, 32), torch.zeros(4, dtype=torch.long)
    for t in range(6):
        loss_fn(model, x, y, t)
        assert get_bits(model) == mw.train_bits(t)


def test_masked_configs_give_every_width_the_same_steps():
    for name in ("smoke", "quick", "paper"):
        P = get_profile(name)
        per_width = P.certify_epochs * max(1, P.n_train // P.batch_size)
        for b in (32, 8, 4, 2):
            cfg = zoo.masked_config(P, b, seed=1)
            assert cfg.init == zoo.qat_config(P, b, seed=1)  # from the QAT model; the FP model at 32 bits
            assert (cfg.strategy, cfg.bits, cfg.lr, cfg.schedule, cfg.seed) == ("masked", b, P.qat_lr, "cosine", 1)
            assert cfg.strategy_params == MaskedTrainingConfig(max(P.certify_patch_sizes), P.certify_masks_per_side, seed=1)
            assert steps_by_width(cfg) == {b: per_width}
        bit_set = (32, 8, 5, 4, 2)
        mw = zoo.masked_multiwidth_config(P, bit_set, seed=1)
        assert mw.init == zoo.multiwidth_config(P, bit_set, seed=1) and mw.strategy == "masked_multiwidth"
        assert mw.lr == P.qat_lr and total_steps(mw) == len(bit_set) * per_width
        assert steps_by_width(mw) == {b: per_width for b in bit_set}  # equal, and equal to a per-width model's
    assert zoo.masked_config(get_profile("quick"), 4, patch_size=4).strategy_params.patch_size == 4
    with pytest.raises(ValueError, match="certifies no patch size"):
        zoo.masked_config(dataclasses.replace(get_profile("smoke"), certify_patch_sizes=()), 4)


def _tiny_profile():
    return dataclasses.replace(get_profile("smoke"), name="test", n_train=64, fp_epochs=1, qat_epochs=1, batch_size=32,
                               certify_epochs=1, certify_patch_sizes=(8,), certify_masks_per_side=3)


def test_the_zoo_trains_masked_configs_and_records_the_strategy(tmp_path, monkeypatch):
    monkeypatch.setenv("QADTR_ARTIFACTS", str(tmp_path))
    data = synthetic_cifar(64, 16)
    P = _tiny_profile()
    trained = certified_models(P, [32, 4], [32, 4], seed=0, data=data, device="cpu", progress=False)
    per, mw = trained["per-width"], trained["multi-width"]
    assert per[4].record["config"].strategy == "masked" and mw[32] is mw[4]
    assert mw[4].record["config"].strategy == "masked_multiwidth"
    on_disk = read_json(tmp_path / "models" / per[4].record["config_hash"] / "record.json")
    assert on_disk["config"]["strategy"] == "masked" and on_disk["config"]["init"]["strategy"] == "standard"
    assert on_disk["config"]["strategy_params"]["masks_per_side"] == 3
    parent = zoo.get_or_train(zoo.qat_config(P, 4), data, progress=False, device="cpu")
    assert any(not torch.equal(a, b) for a, b in zip(parent.model.state_dict().values(), per[4].model.state_dict().values()))
    assert "collapse_check" in per[4].record  # clean accuracy against its start at every width it serves
    with pytest.raises(ValueError, match=r"does not serve the widths \[2\]"):
        certified_models(P, [32, 2], [32, 4], data=data, device="cpu", progress=False)


def test_a_masked_config_trains_in_a_fresh_process(tmp_path):
    script = (
        "import dataclasses\n"
        "from qadtr_core.profiles import get_profile\n"
        "from qadtr_core.testing import synthetic_cifar\n"
        "from qadtr_core.zoo import get_or_train, masked_config\n"
        "P = dataclasses.replace(get_profile('smoke'), name='test', n_train=32, fp_epochs=1, batch_size=32, "
        "certify_epochs=1)\n"
        "tm = get_or_train(masked_config(P, 32), synthetic_cifar(32, 8), progress=False, device='cpu')\n"
        "print(tm.record['config'].strategy)\n")
    env = {"QADTR_ARTIFACTS": str(tmp_path), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "masked"


def test_the_table_is_a_direct_certify_call_plus_attacks_within_the_bracket():
    model = ChannelMeanModel()
    x, y = colour_images()
    study = certified_table({"colour": {32: model}}, x, y, CFG)
    t = study.table
    assert list(t.patch) == [2, 3] and set(t.model) == {"colour"} and (t.n == len(x)).all()
    broken = 0
    for row in t.to_dict("records"):
        p = row["patch"]
        direct = certify(model, x, y, mask_set(12, p, 3), CertifyConfig(p, 3))
        for rate, key in (("clean", "clean_accuracy"), ("masked_clean", "masked_accuracy"),
                          ("certified", "certified_accuracy")):
            ci = direct.intervals()[key]
            assert (row[rate], row[f"{rate}_ci_low"], row[f"{rate}_ci_high"]) == (ci.value, ci.low, ci.high)
        cell = study.cells[("colour", 32, p)]
        assert torch.equal(cell.result.certified, direct.certified)
        assert torch.equal(cell.result.masked_pred, direct.masked_pred)
        assert row["num_masks"] == len(mask_set(12, p, 3)) and row["masks_per_side"] == 3
        # certified <= attacked robust <= masked clean, per image and so per rate
        assert (cell.robust <= cell.result.masked_correct).all() and (cell.result.certified <= cell.robust).all()
        assert row["certified"] <= row["attacked_robust"] <= row["masked_clean"]
        ci = wilson(int(cell.robust.sum()), len(x))
        assert ((row["attacked_robust"], row["attacked_robust_ci_low"], row["attacked_robust_ci_high"])
                == (ci.value, ci.low, ci.high))
        # only the images double masking gets right without a certificate are attacked
        assert torch.equal(cell.attacked, cell.result.masked_correct & ~cell.result.certified)
        assert not ((cell.broken_image_patch | cell.broken_random_search) & ~cell.attacked).any()
        assert not (cell.broken_image_patch & cell.broken_random_search).any()  # RS runs on what the patch left
        assert row["n_attacked"] == int(cell.attacked.sum()) > 0
        broken += row["broken_image_patch"] + row["broken_random_search"]
        assert row["seconds"] >= row["certify_seconds"] > 0
    assert broken > 0  # the attacks do lower the upper bound below the double-masking clean accuracy
    per = study.per_image
    assert len(per) == 2 * len(x) and set(per.columns) >= {"clean", "masked_clean", "certified", "attacked_robust"}
    assert (per.groupby("patch")["attacked_robust"].mean().to_numpy() == t.attacked_robust.to_numpy()).all()


def test_a_certified_image_is_never_broken_by_either_attack_over_seeds():
    """The chapter's two attacks, run on *every* image (the study attacks only the uncertified ones, so its own
    bracket cannot show this), never break a certified image, at any of 6 seeds; they do break uncertified ones."""
    from qadtr_core.certified_study import _attacks

    model = ChannelMeanModel()
    x, y = colour_images()
    every = torch.ones(len(x), dtype=torch.bool)
    masks = mask_set(12, 3, 3)
    cert = certify(model, x, y, masks, CertifyConfig(3, 3)).certified  # the certificate draws nothing: seed-free
    assert 4 <= int(cert.sum()) <= len(x) - 4
    broken_uncertified = 0
    for seed in range(6):
        cfg = dataclasses.replace(CFG, seed=seed, image_patch_steps=20, image_patch_restarts=2, rs_queries=60)
        ip, rs, *_ = _attacks(model, x, y, every, masks, 3, cfg)
        assert not ((ip | rs) & cert).any()
        broken_uncertified += int(((ip | rs) & ~cert).sum())
    assert broken_uncertified > 0  # the same attacks are not no-ops: they break images left uncertified


def test_a_multiwidth_model_runs_at_each_width_and_gets_its_width_back():
    torch.manual_seed(0)
    model = build_model("smallcnn").eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    for b in (4, 2):
        prepare_bits(model, b)
        set_bits(model, b)
        with torch.no_grad():
            model(x)  # calibrates the steps
    set_bits(model, 4)
    seen = []

    class Spy(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, t):
            seen.append(get_bits(self))
            return self.inner(t)

    spy = set_bits(Spy(model), 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    seen.clear()
    cfg = CertifiedStudyConfig(patch_sizes=(8,), masks_per_side=2, rs_queries=2, image_patch_steps=0)
    study = certified_table({"mw": {32: spy, 2: spy}}, x, y, cfg)
    assert get_bits(spy) == get_bits(model) == 4  # its width back
    assert set(seen) == {32, 2} and list(study.table.bits) == [32, 2]
    direct = certify(set_bits(spy, 2), x, y, mask_set(32, 8, 2), CertifyConfig(8, 2))
    assert study.table.certified.iloc[1] == direct.intervals()["certified_accuracy"].value


def test_entries_reader_table_and_figure():
    x, y = colour_images(16)
    t = certified_table({"a": {32: ChannelMeanModel()}, "b": {32: ChannelMeanModel(), 4: ChannelMeanModel()}}, x, y,
                        dataclasses.replace(CFG, rs_queries=4, image_patch_steps=2)).table
    entries = certified_entries(t)
    assert len(entries) == len(t) == 6
    e = entries[0]
    for rate in RATES:
        assert 0 <= e[f"{rate}_ci_low"] <= e[rate] <= e[f"{rate}_ci_high"] <= 1
    assert {"bits", "patch", "n", "masks_per_side", "seconds", "model"} <= set(e)
    json.dumps(entries)  # plain Python types
    shown = reader_table(t)
    assert list(shown.columns[:5]) == ["model", "bit-width", "patch", "n", "masks"]
    assert shown["bit-width"].tolist()[:2] == ["FP", "FP"] and shown["patch"].iloc[0] == "2x2 px"
    cell = shown["certified robust"].iloc[0]
    r = t.iloc[0]
    assert cell == f"{100 * r.certified:.1f} % [{100 * r.certified_ci_low:.1f}, {100 * r.certified_ci_high:.1f}]"
    fig = certified_brackets(t, "test")
    assert len(fig.axes) == 2 and [a.get_title() for a in fig.axes] == ["2x2 px patch", "3x3 px patch"]
    assert [tick.get_text() for tick in fig.axes[0].get_xticklabels()] == ["FP", "4b"]


def test_study_config_from_profile_and_errors():
    for name, P in PROFILES.items():
        c = CertifiedStudyConfig.from_profile(P, seed=2)
        assert (c.patch_sizes, c.masks_per_side, c.rs_queries, c.seed) == (
            tuple(P.certify_patch_sizes), P.certify_masks_per_side, P.certify_rs_queries, 2), name
        assert (c.image_patch_steps, c.image_patch_restarts) == (P.certify_image_patch_steps, P.certify_image_patch_restarts)
    for kwargs, match in [(dict(patch_sizes=()), "patch_sizes must be distinct"),
                          (dict(patch_sizes=(4, 4)), "patch_sizes must be distinct"),
                          (dict(patch_sizes=(0,)), "positive number of pixels, got 0"),
                          (dict(rs_queries=-1), "rs_queries must be a non-negative integer"),
                          (dict(image_patch_steps=1.5), "image_patch_steps must be a non-negative integer"),
                          (dict(image_patch_restarts=0), "image_patch_restarts must be a positive integer"),
                          (dict(masks_per_side=0), "masks_per_side"), (dict(fill=-1.0), "fill")]:
        with pytest.raises(ValueError, match=match):
            CertifiedStudyConfig(**kwargs)
    x, y = colour_images(4)
    with pytest.raises(ValueError, match="patch size 13 px must be from 1 to the image size 12 px"):
        certified_cell(ChannelMeanModel(), x, y, 13, CFG)
    with pytest.raises(ValueError, match="images must be square"):
        certified_cell(ChannelMeanModel(), x[..., :10], y, 3, CFG)
    assert isinstance(certified_table({}, x, y, CFG).table, pd.DataFrame)


def test_the_half_budget_run_is_the_same_attacks_at_half_their_budget(monkeypatch):
    import qadtr_core.certified_study as cs

    calls = []
    real = cs._attacks

    def spy(model, images, labels, attacked, masks, patch_size, config):
        calls.append((config.image_patch_steps, config.rs_queries, config.image_patch_restarts, config.seed,
                      attacked.clone()))
        return real(model, images, labels, attacked, masks, patch_size, config)

    monkeypatch.setattr(cs, "_attacks", spy)
    x, y = colour_images()
    cfg = dataclasses.replace(CFG, image_patch_steps=10, rs_queries=41, image_patch_restarts=2, seed=3)
    cell = certified_cell(ChannelMeanModel(), x, y, 3, cfg)
    (s1, q1, r1, seed1, a1), (s2, q2, r2, seed2, a2) = calls
    assert (s1, q1, s2, q2) == (10, 41, 5, 20) and r1 == r2 == 2 and seed1 == seed2 == 3
    assert torch.equal(a1, a2) and torch.equal(a1, cell.attacked)  # the same images at both budgets
    assert cell.broken_half is not None and not (cell.broken_half & ~cell.attacked).any()
    assert cell.half_seconds > 0
    calls.clear()
    off = certified_cell(ChannelMeanModel(), x, y, 3, dataclasses.replace(cfg, half_budget=False))
    assert len(calls) == 1 and off.broken_half is None
    assert off.not_converged() == "only one checkpoint: the gain from doubling its steps is unknown"
    # the full-budget results do not depend on whether the half run happened
    assert torch.equal(off.robust, cell.robust)
    assert CertifiedStudyConfig(image_patch_steps=1).halved() is None
    assert CertifiedStudyConfig(rs_queries=1).halved() is None
    h = CertifiedStudyConfig(image_patch_steps=0, rs_queries=7).halved()
    assert (h.image_patch_steps, h.rs_queries, h.half_budget) == (0, 3, False)
    with pytest.raises(ValueError, match="half_budget must be True or False, got 1"):
        CertifiedStudyConfig(half_budget=1)


def _cell_with(attacked: int, broken: int, half: int | None, n: int = 20):
    """A hand-made cell: the first ``attacked`` of ``n`` images attacked, the first ``broken`` broken at full
    budget (by the per-image patch) and the first ``half`` at half."""
    idx = torch.arange(n)
    result = CertifiedResult(clean_correct=torch.ones(n, dtype=torch.bool), masked_correct=torch.ones(n, dtype=torch.bool),
                             certified=idx >= attacked, masked_pred=torch.zeros(n, dtype=torch.long),
                             forwards=torch.ones(n, dtype=torch.long), seconds=1.0, patch_size=2, num_masks=4, bits=32)
    broken_ip = idx < broken
    return CertifiedCell(result, idx < attacked, broken_ip, torch.zeros(n, dtype=torch.bool), ~broken_ip,
                         torch.zeros(n, dtype=torch.long), 1.0, 1.0, broken_half=None if half is None else idx < half)


def test_the_upper_bound_attacks_are_read_by_the_studys_convergence_rule():
    assert _cell_with(10, 8, 8).not_converged() is None  # doubling added nothing
    assert _cell_with(10, 8, 5).not_converged() == "doubling its steps still added 30.0 points of white-box ASR"
    assert "does nothing" in _cell_with(10, 0, 0).not_converged()  # an attack that breaks nothing never converges
    assert _cell_with(0, 0, 0).not_converged() is None  # every image certified or wrong: the bracket is closed
    assert _cell_with(10, 8, None).not_converged().startswith("only one checkpoint")
    assert _cell_with(10, 8, 5).attack_success() == (10, 8, 5)


def test_the_attack_table_and_entries_carry_the_convergence_reading():
    x, y = colour_images(16)
    cfg = dataclasses.replace(CFG, patch_sizes=(3,), rs_queries=4, image_patch_steps=2)
    t = certified_table({"a": {32: ChannelMeanModel()}}, x, y, cfg).table
    cell = t.iloc[0]
    assert cell.n_attacked > 0 and 0 <= cell.attack_asr_half_budget <= 1 and 0 <= cell.attack_asr <= 1
    assert cell.attack_asr == (cell.broken_image_patch + cell.broken_random_search) / cell.n_attacked
    assert bool(cell.attack_converged) == (cell.attack_not_converged == "")
    shown = attack_table(t)
    assert list(shown.columns[:3]) == ["model", "bit-width", "patch"]
    text = shown["attack success, half -> full budget"].iloc[0]
    verdict = "converged" if cell.attack_converged else "not converged"
    assert text == (f"{100 * cell.attack_asr_half_budget:.1f} % -> {100 * cell.attack_asr:.1f} % "
                    f"({100 * (cell.attack_asr - cell.attack_asr_half_budget):+.1f} points; {verdict})")
    entry = certified_entries(t)[0]
    assert entry["attack_converged"] == bool(cell.attack_converged) and entry["attack_asr"] == cell.attack_asr
    no_half = certified_table({"a": {32: ChannelMeanModel()}}, x, y, dataclasses.replace(cfg, half_budget=False)).table
    assert certified_entries(no_half)[0]["attack_asr_half_budget"] is None  # NaN in the table, None in JSON
    assert "half budget not run; not converged" in attack_table(no_half).iloc[0, 6]
