"""Defense recipes share one budget; ablations switch exactly their components; training cost is measured."""
import dataclasses

import pytest

from qadtr_core.cost import training_cost
from qadtr_core.defenses.recipes import ABLATIONS, defense_configs, dwq_config, pbat_config, qadtr_config
from qadtr_core.profiles import get_profile
from qadtr_core.train import TrainConfig
from qadtr_core.zoo import fp_config, qat_config

P = get_profile("smoke")
BITS = (32, 8, 4, 2)


def test_every_defense_gets_the_same_budget_and_inner_steps():
    configs = [pbat_config(P, 4), dwq_config(P, BITS), qadtr_config(P, BITS)]
    for c in configs:
        assert (c.epochs, c.lr, c.batch_size, c.n_train, c.schedule) == (
            P.defense_epochs, P.defense_lr, P.defense_batch, P.defense_n_train, "cosine")
    pbat, dwq, qadtr = (c.strategy_params for c in configs)
    assert pbat.inner_steps == dwq.pgd_steps == qadtr.inner_steps == P.defense_inner_steps


def test_starting_points():
    assert pbat_config(P, 4).init == qat_config(P, 4) and pbat_config(P, 4).bits == 4
    assert pbat_config(P, 32).init == fp_config(P)
    assert dwq_config(P, BITS).init == fp_config(P) == qadtr_config(P, BITS).init


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
    assert list(c) == ["QAT (undefended)", "PBAT", "DWQ", "QADT-R"]
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
