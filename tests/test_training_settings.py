"""One training-settings dataclass on every path (issue 13): Stage I run via gRPC (an in-process
cloud on loopback and an edge talking to it), via the simulator's pre-training job and via the
Flower app's source-node step, from one config, builds every Adam optimiser with the same
settings — the shared defaults when the config gives none (the Flower app's pyproject run
config included), and the given ones when it does."""

from __future__ import annotations

import asyncio
import json
import tomllib
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

import edgegan.gan.train as gan_train
from edgegan.config import from_dict
from edgegan.gan import WGANConfig

REPO = Path(__file__).resolve().parents[1]
CUSTOM = {"lr": 3e-4, "beta1": 0.4, "beta2": 0.95, "critic_steps": 2, "gp_weight": 5.0, "batch_size": 8,
          "latent_dim": 8}


@pytest.fixture
def built(monkeypatch) -> list[dict]:
    """Every optimiser the trainers build: its param group's lr and betas and the settings object."""
    seen: list[dict] = []
    real = gan_train.adam

    def spy(params, cfg, scale=1.0):
        opt = real(params, cfg, scale)
        g = opt.param_groups[0]
        seen.append({"lr": g["lr"], "betas": tuple(g["betas"]), "settings": asdict(cfg.settings())})
        return opt

    monkeypatch.setattr(gan_train, "adam", spy)
    return seen


def _grpc_stage1(tmp_path: Path, training: dict, data) -> None:
    """A coalesce cloud served on 127.0.0.1 (port 0) and one edge: join (the cloud's settings),
    pre-train one step, upload; the cloud then computes the barycenter (one step per stage)."""
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.grpc_edge import EdgeConnection, join_coalescence, upload_models
    from edgegan.runtime.grpc_server import serve
    from edgegan.runtime.roles import CoalesceServer, EdgeNode

    cfg = from_dict(CloudConfig, {"mode": "coalesce", "listen": "127.0.0.1:0", "allow_anonymous": True,
                                  "checkpoint_dir": str(tmp_path / "cloud"), "device": "cpu", "eval_dataset": None,
                                  "coalesce": {"expected_uploads": 1, "steps_per_stage": 1},
                                  **({"training": training} if training else {})})
    server = CoalesceServer(cfg)
    ready = tmp_path / "ready.json"

    async def main() -> None:
        cloud = asyncio.ensure_future(serve(cfg, server, ready))
        while not ready.is_file():
            await asyncio.sleep(0.02)
        port = json.loads(ready.read_text())["port"]
        node = EdgeNode("e0", data)
        conn = EdgeConnection(f"127.0.0.1:{port}", retry_s=10.0, roles=("coalesce",))
        settings = await join_coalescence(node, conn)
        models = node.pretrain("mlp", 1, settings, width=16)
        await upload_models(node, conn, models, {"eta": 1.0})
        await asyncio.wait_for(server._ready.wait(), 60)  # the cloud's Stage I is done
        cloud.cancel()
        await asyncio.gather(cloud, return_exceptions=True)

    asyncio.run(main())


def _sim_stage1(training: dict, data) -> None:
    """The simulator's Stage I pre-training job on an in-process worker, from a scenario."""
    from edgegan.sim.coalescence import pretrain_job
    from edgegan.sim.host import NodeHost
    from edgegan.sim.scenario import scenario_from_dict

    sc = scenario_from_dict({"training": {**training, "generator_width": 16, "critic_width": 16}})
    host = NodeHost(0)
    try:
        pretrain_job(host, 0, "n0", data.x, 1, True, sc)
    finally:
        host.close()


def _flower_stage1(training: dict, data) -> None:
    """The Flower app's source-node step, with pyproject's run config and the overrides."""
    from edgegan.flower import task

    run_config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    overrides = {k.replace("_", "-"): v for k, v in training.items()}
    cfg = task.settings(run_config, {**overrides, "pretrain-steps": 1, "generator-width": 16, "critic-width": 16})
    task.pretrain(data.x, cfg, 0)


@pytest.mark.parametrize("training", [{}, CUSTOM], ids=["defaults", "one-config"])
def test_stage1_uses_the_same_optimiser_settings_on_every_path(tmp_path, digits, built, training) -> None:
    torch.manual_seed(0)
    data = digits.subset(list(range(64)))
    expected = asdict(WGANConfig(**training))
    used = {}
    for path, run in (("grpc", lambda: _grpc_stage1(tmp_path, training, data)),
                      ("simulator", lambda: _sim_stage1(training, data)),
                      ("flower", lambda: _flower_stage1(training, data))):
        built.clear()
        run()
        assert built, f"{path}: no optimiser was built"
        used[path] = {(b["lr"], b["betas"]) for b in built}
        assert all(b["settings"] == expected for b in built), (path, built)
    want = {(expected["lr"], (expected["beta1"], expected["beta2"]))}
    assert used == {"grpc": want, "simulator": want, "flower": want}
