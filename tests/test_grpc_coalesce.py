"""The coalescence pipeline over the wire with real processes (seed 000; issue 7): two source
edges pre-train and upload (G_k, D_k, η_k), the cloud computes the Stage I barycenter, one of
them downloads it and fast-adapts (Stage II); the cloud's folder keeps every finished piece.
The edges start before the cloud and wait for it (retry with back-off), so nothing here
depends on timing; they train with the cloud's ``training`` settings."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
from pathlib import Path

import pytest
import torch

from edgegan.checkpoint import load_checkpoint
from edgegan.config import from_dict
from edgegan.gan.train import WGANConfig
from edgegan.config import load_yaml
from edgegan.runtime.config import CloudConfig
from edgegan.runtime.roles import CoalesceServer
from edgegan.runtime.tensor_codec import decode_bundle
from grpc_procs import Procs, cloud_ready, config_port, launch_cloud, start_edge, wait_for_log, write_config


@pytest.mark.stochastic
def test_coalescence_end_to_end_over_grpc(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        training = {"lr": 3e-4, "beta1": 0.5, "beta2": 0.95, "critic_steps": 2, "gp_weight": 10.0,
                    "batch_size": 32, "latent_dim": 16}
        cfg = write_config(tmp_path / "cloud.yaml", mode="coalesce", training=training,
                           coalesce={"expected_uploads": 2, "steps_per_stage": 10}, eval_samples_per_class=20)
        port = config_port(cfg)
        common = ("--mode", "coalesce", "--arch", "mlp", "--width", "32", "--max-samples", "200",
                  "--pretrain-steps", "10", "--retry-s", "120")
        source = start_edge(procs, port, "e0", "t0", "0,1,2,3,4", *common, "--eta", "2")
        target = start_edge(procs, port, "e1", "t1", "5,6,7,8,9", *common, "--eta", "1", "--adapt-steps", "5",
                            "--out", str(tmp_path / "e1"))
        wait_for_log(procs, source, "cloud unreachable")  # the edge is retrying: only now start the cloud
        cloud = launch_cloud(procs, cfg)
        cloud_ready(procs, cloud)
        assert procs.wait(source, 120) == 0, procs.log(source)[-2000:]
        assert procs.wait(target, 120) == 0, procs.log(target)[-2000:]
        sent = dataclasses.asdict(from_dict(WGANConfig, training, "training"))  # the cloud's settings, defaults filled
        assert json.loads((tmp_path / "e1" / "edge.json").read_text())["training"] == sent

        ckpt = tmp_path / "ckpt"
        assert sorted(p.name for p in (ckpt / "uploads").iterdir()) == ["e0.bundle", "e1.bundle"]
        models, scalars = decode_bundle((ckpt / "barycenter.bundle").read_bytes())
        assert set(models) == {"generator", "critic_prev", "critic_new"} and scalars == {"nodes": 2.0}
        got = load_checkpoint(tmp_path / "e1" / "barycenter.pt")["state_dict"]
        bary = models["generator"].state_dict()
        assert all(torch.equal(got[k], bary[k]) for k in bary)  # the edge holds exactly the cloud's barycenter
        adapted = load_checkpoint(tmp_path / "e1" / "adapted.pt")["state_dict"]
        assert any(not torch.equal(adapted[k], bary[k]) for k in bary)  # Stage II moved it

        cloud.send_signal(signal.SIGTERM)  # graceful: exit 0 with a report
        assert procs.wait(cloud, 30) == 0
        report = json.loads((ckpt / "report.json").read_text())
        assert report["uploads"] == ["e0", "e1"] and report["barycenter_ready"]
        assert report["evals"] and report["evals"][0]["fid_whole"] > 0  # the barycenter's quality
        assert models["generator"].latent_dim == 16  # built with the cloud's training settings
    finally:
        procs.kill_all()

    # a cloud restarted on the same folder holds both uploads and serves the same barycenter at once
    again = CoalesceServer(load_yaml(CloudConfig, cfg))
    assert sorted(again.uploads) == ["e0", "e1"] and again.uploads["e0"][1] == {"eta": 2.0}
    blob = asyncio.run(again.bundle("barycenter"))
    again.close()
    assert blob == (ckpt / "barycenter.bundle").read_bytes()
