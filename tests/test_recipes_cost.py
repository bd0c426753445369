"""Defense recipes share one budget; ablations switch exactly their components; training cost is measured."""
import dataclasses

import pytest

from qadtr_core.build.jobs import chapter_configs
from qadtr_core.cost import training_cost
from qadtr_core.defenses.recipes import (
    ABLATIONS,
    ablation_configs,
    budget_table,
    defense_configs,
    dwq_config,
    pbat_config,
    qadtr_config,
    steps_per_width,
    surrogate_config,
)
from qadtr_core.profiles import get_profile
from qadtr_core.train import TrainConfig, interleave, steps_by_width, total_steps
from qadtr_core.zoo import fp_config, multiwidth_config, qat_config

P = get_profile("smoke")
BITS = (32, 8, 4, 2)


def test_every_defense_gets_the_same_steps_per_width_and_inner_steps():
    pbat, dwq, qadtr = pbat_config(P, 4), dwq_config(P, BITS), qadtr_config(P, BITS)
    for c in (pbat, dwq, qadtr):
        assert (c.lr, c.batch_size, c.n_train, c.schedule) == (P.defense_lr, P.defense_batch, P.defense_n_train, "cosine")
    assert pbat.epochs == P.defense_epochs and dwq.epochs == qadtr.epochs == len(BITS) * P.defense_epochs
    p, d, q = (c.strategy_params for c in (pbat, dwq, qadtr))
    assert p.inner_steps == d.pgd_steps == q.inner_steps == P.defense_inner_steps
    assert p.step_size == q.step_size == 1 / P.defense_inner_steps and p.location_opt and q.location_opt
    table = budget_table(defense_configs(P, BITS), n_train=P.n_train).set_index("defense")
    s = steps_per_width(P)
    assert table.loc["PBAT", "steps per width"] == table.loc["DWQ", "steps per width"] == s
    assert table.loc["QADT-R", "steps per width"] == s and table.loc["QADT-R", "start model"] == "multi-width (undefended)"


QUICK = get_profile("quick")
FIVE = (32, 8, 5, 4, 2)


def test_budget_table_counts_the_steps_each_strategy_takes_at_each_width():
    table = budget_table(defense_configs(QUICK, FIVE)).set_index("defense")
    s = steps_per_width(QUICK)
    for d in ("PBAT", "DWQ", "QADT-R"):  # counted from each schedule, not total // widths
        assert [table.loc[d, f"steps at {b} b"] for b in FIVE] == [s] * 5, d
    dwq = dwq_config(QUICK, FIVE)  # DWQ draws at random per batch, without replacement: s at every width
    assert steps_by_width(dwq) == {b: s for b in FIVE} and dwq.strategy_params.schedule == "shuffle"
    ab = budget_table(ablation_configs(QUICK, FIVE)).set_index("defense")
    # every ablation serves every width it is scored at with the same steps: without DBWT in contiguous blocks
    for name in ab.index.drop("multi-width (undefended)"):
        assert [ab.loc[name, f"steps at {b} b"] for b in FIVE] == [s] * 5, name
    no_dbwt = qadtr_config(QUICK, FIVE, ablation="without DBWT")
    order = [no_dbwt.strategy_params.train_bits(i) for i in range(total_steps(no_dbwt))]
    assert order == [b for b in FIVE for _ in range(s)]  # one block per width, no per-batch change
    # the quick profile keeps the three "without X" variants; the "X only" ones are the paper profile's
    assert list(ab.index) == ["multi-width (undefended)", "QADT-R", "without A-QAPA", "without DBWT", "without GIR"]
    assert len(ablation_configs(get_profile("paper"), FIVE)) == 1 + len(ABLATIONS)


def test_the_multi_width_model_gets_each_width_the_steps_of_its_qat_model():
    multi = multiwidth_config(QUICK, FIVE)
    counts = steps_by_width(multi, 50000)
    for b in (8, 5, 4, 2):  # quick: QAT takes 1 epoch at 8 bits, 4 at 2 bits
        assert counts[b] == total_steps(qat_config(QUICK, b), 50000), b
    assert counts[32] == min(counts[b] for b in (8, 5, 4, 2))  # stated choice: the smallest QAT budget
    table = budget_table(defense_configs(QUICK, FIVE)).set_index("defense")
    assert [table.loc["multi-width (undefended)", f"steps at {b} b"] for b in FIVE] == [counts[b] for b in FIVE]
    period = interleave(FIVE, multi.strategy_params.shares)  # deterministic and spread out
    assert sorted(period.count(b) for b in FIVE) == sorted(multi.strategy_params.shares) and period[0] == 2
    assert all(period[i] != period[i + 1] for i in range(len(period) - 1))


def test_the_transfer_surrogate_is_an_independent_fp_model_built_for_both_chapters():
    sur = surrogate_config(QUICK, 0)
    assert sur.init is None and sur.bits == 32 and sur.seed == 1000 and sur != fp_config(QUICK, 0)
    assert sur not in {c for per in defense_configs(QUICK, FIVE).values() for c in per.values()}
    assert sur not in {c.init for c in (pbat_config(QUICK, b) for b in FIVE)}
    for chapter in ("02_defenses", "03_ablations"):
        assert surrogate_config(P, 0) in chapter_configs(chapter, P, 0)


def test_starting_points():
    assert pbat_config(P, 4).init == qat_config(P, 4) and pbat_config(P, 4).bits == 4
    assert pbat_config(P, 32).init == fp_config(P)
    multi = multiwidth_config(P, BITS)
    assert dwq_config(P, BITS).init == multi == qadtr_config(P, BITS).init and multi.init == fp_config(P)
    # the multi-width model takes the per-width QAT models' steps together, plus the smallest of them at 32 bits
    assert multi.epochs == sum(P.qat_epochs_for(b) for b in BITS if b != 32) + 1 and multi.strategy == "multiwidth"


def test_ablations_switch_exactly_their_components():
    full = qadtr_config(P, BITS).strategy_params
    for name, off in ABLATIONS.items():
        params = qadtr_config(P, BITS, ablation=name).strategy_params
        assert params == dataclasses.replace(full, **off)
        assert {k for k in ("aqapa", "dbwt", "gir") if not getattr(params, k)} == set(off)
    with pytest.raises(ValueError, match="unknown ablation 'no FDP'"):
        qadtr_config(P, BITS, ablation="no FDP")


def test_defense_table_shares_multi_width_models():
    c = defense_configs(P, BITS)
    assert list(c) == ["QAT (undefended)", "multi-width (undefended)", "PBAT", "DWQ", "QADT-R"]
    assert len(set(c["DWQ"].values())) == 1 and len(set(c["PBAT"].values())) == len(BITS)
    with pytest.raises(ValueError, match="empty"):
        defense_configs(P, ())


def test_training_cost_reports_ratios_to_the_reference():
    base = TrainConfig(arch="smallcnn", epochs=1, lr=0.1, bits=4, batch_size=8)
    pgd = dwq_config(P, (32, 4))
    cost = training_cost({"QAT": base, "DWQ": dataclasses.replace(pgd, batch_size=8)}, "QAT", steps=1, threads=1)
    assert cost["QAT"]["time_ratio"] == 1.0 and cost["QAT"]["memory_ratio"] == 1.0
    assert cost["QAT"]["peak_mb"] > 0 and cost["DWQ"]["peak_mb"] > 0  # the steps' own memory, Linux /proc
    # the ratios are each strategy's cost over the reference's (which strategy is slower is a speed
    # measurement: benchmarks/defense_cost.py, not a test)
    assert cost["DWQ"]["seconds_per_step"] > 0
    assert cost["DWQ"]["time_ratio"] == pytest.approx(cost["DWQ"]["seconds_per_step"] / cost["QAT"]["seconds_per_step"])
    assert cost["DWQ"]["memory_ratio"] == pytest.approx(cost["DWQ"]["peak_mb"] / cost["QAT"]["peak_mb"])
    with pytest.raises(ValueError, match="reference 'PBAT' is not one of QAT"):
        training_cost({"QAT": base}, "PBAT")
