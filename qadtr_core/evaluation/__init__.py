"""Evaluating models under attack: transfer across bit-widths (:mod:`~qadtr_core.evaluation.transfer`), the
threat set with its seen/unseen split (:mod:`~qadtr_core.evaluation.threats`), the defense evaluation
(:mod:`~qadtr_core.evaluation.robustness`), its measurements and the defends table
(:mod:`~qadtr_core.evaluation.defense_metrics`), and attack convergence (:mod:`~qadtr_core.evaluation.strength`).

Nothing is imported here: import the module you need.
"""
