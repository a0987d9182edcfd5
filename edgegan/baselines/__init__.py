"""Seed 000 §5 baselines beside barycentric fast adaptation, in one equal-budget harness
(Edge-Only, Transferring GANs, Ensemble, Weight-Average, Whole Data). TDGAN's baselines
(fine-tuning, joint, local) live in :mod:`edgegan.tdgan.harness`."""

from edgegan.baselines.coalescence import (
    METHODS,
    CoalescenceTask,
    MethodResult,
    barycentric_fa,
    compare_methods,
    edge_only,
    ensemble,
    pretrain_sources,
    run_method,
    transfer,
    weight_average,
    whole_data,
)

__all__ = [
    "METHODS", "CoalescenceTask", "MethodResult", "barycentric_fa", "compare_methods", "edge_only",
    "ensemble", "pretrain_sources", "run_method", "transfer",
    "weight_average", "whole_data",
]
