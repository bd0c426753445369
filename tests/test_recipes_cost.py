"""Defense recipes share one budget; ablations switch exactly their components; training cost is measured."""
import dataclasses

import pytest

from qadtr_core.cost import training_cost
from qadtr_core.defenses.recipes import (
    ABLATIONS, budget_table, defense_configs, dwq_config, pbat_config, qadtr_config, steps_per_width,
)
from qadtr_core.profiles import get_profile
from qadtr_core.train import TrainConfig
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
    assert p.carry and d.carry and q.carry
    table = budget_table(defense_configs(P, BITS), n_train=P.n_train).set_index("defense")
    s = steps_per_width(P)
    assert table.loc["PBAT", "steps per width"] == table.loc["DWQ", "steps per width"] == s
    assert table.loc["QADT-R", "steps per width"] == s and table.loc["QADT-R", "start model"] == "multi-width (undefended)"


def test_starting_points():
    assert pbat_config(P, 4).init == qat_config(P, 4) and pbat_config(P, 4).bits == 4
    assert pbat_config(P, 32).init == fp_config(P)
    multi = multiwidth_config(P, BITS)
    assert dwq_config(P, BITS).init == multi == qadtr_config(P, BITS).init and multi.init == fp_config(P)
    # the multi-width model takes the per-width QAT models' steps together
    assert multi.epochs == sum(P.qat_epochs_for(b) for b in BITS if b != 32) and multi.strategy == "multiwidth"


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
    # DWQ runs PGD steps before each training step: it must cost more time than plain QAT
    assert cost["DWQ"]["time_ratio"] > 1.0 and cost["DWQ"]["seconds_per_step"] > 0
    with pytest.raises(ValueError, match="reference 'PBAT' is not one of QAT"):
        training_cost({"QAT": base}, "PBAT")
