"""The Flower apps in Flower's simulation (Ray backend): 2 sources + 1 target, 3 nodes."""

from __future__ import annotations

import math

import pytest
import torch

from edgegan.barycenter import aggregate
from edgegan.baselines.coalescence import pretrain_sources
from edgegan.checkpoint import load_checkpoint, unpack_model
from edgegan.flower import task
from edgegan.monitor.metrics import Metrics

# a few WGAN steps: the point is equality with a direct call, not sample quality
TINY = {"pretrain-steps": 3, "steps-per-stage": 3, "adapt-steps": 2, "batch-size": 32, "critic-steps": 2,
        "generator-width": 32, "critic-width": 32, "eval-samples": 200, "device": "cpu", "eta": "2.0,0.5"}


@pytest.mark.stochastic
def test_simulation_barycenter_equals_direct_stage_one(tmp_path):
    from flwr.simulation import run_simulation

    from edgegan.flower.client_app import make_client_app
    from edgegan.flower.server_app import make_server_app

    overrides = {**TINY, "out-dir": str(tmp_path)}
    metrics = Metrics()
    run_simulation(make_server_app(overrides, metrics), make_client_app(overrides), num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": 2}})

    # the same pipeline called directly: sources pre-train with seed + k, then Stage I with seed
    cfg = task.settings({}, TINY)
    _, sources, _ = task.load_split(cfg)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray actors (num_cpus 1): same reduction order
    try:
        gens, crits = pretrain_sources([s.x for s in sources], cfg.arch, cfg.generator_width, cfg.critic_width,
                                       cfg.latent_dim, cfg.pretrain_steps, cfg.wgan(), seed=cfg.seed)
        torch.manual_seed(cfg.seed)
        direct = aggregate(cfg.aggregator, gens, crits, cfg.etas(), cfg.steps_per_stage, cfg.wgan())
    finally:
        torch.set_num_threads(threads)

    saved = load_checkpoint(tmp_path / "barycenter.pt")
    for name in ("generator", "critic_prev", "critic_new"):
        model = unpack_model(saved[name])
        want = getattr(direct, name).state_dict()
        for key, value in model.state_dict().items():
            torch.testing.assert_close(value, want[key], rtol=1e-5, atol=1e-6, msg=f"{name}.{key}")
    # the barycenter is not simply the most relevant upload (η = 0.5 is coalesced last)
    assert not torch.allclose(direct.generator.state_dict()["net.0.weight"], gens[1].state_dict()["net.0.weight"])

    value = metrics.registry.get_sample_value
    assert value("edgegan_server_round") == 1
    assert value("edgegan_round_nodes", {"outcome": "sampled"}) == 3
    assert value("edgegan_round_nodes", {"outcome": "replied"}) == 3
    assert value("edgegan_round_nodes", {"outcome": "failed"}) == 0
    assert value("edgegan_aggregation_seconds_count") == 1
    assert value("edgegan_uploads_total") == 2
    fid = value("edgegan_feature_fid")  # Stage II ran on the target and reported its feature-FID
    assert fid is not None and math.isfinite(fid) and fid > 0
