"""The coalescence pipeline over the wire with real processes (seed 000; issue 7): two source
edges pre-train and upload (G_k, D_k, η_k), the cloud computes the Stage I barycenter, a
target edge downloads it and fast-adapts; a restarted cloud still serves the barycenter."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import torch

from edgegan.checkpoint import load_checkpoint
from edgegan.runtime.grpc_edge import EdgeConnection, download_models
from edgegan.runtime.tensor_codec import decode_bundle
from grpc_procs import Procs, start_cloud, start_edge, write_config


def test_coalescence_end_to_end_over_grpc(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    try:
        cfg = write_config(tmp_path / "cloud.yaml", mode="coalesce",
                           coalesce={"expected_uploads": 2, "steps_per_stage": 10})
        cloud, port, _ = start_cloud(procs, cfg)
        common = ("--mode", "coalesce", "--arch", "mlp", "--width", "32", "--max-samples", "200")
        sources = [start_edge(procs, port, "e0", "t0", "0,1,2,3,4", *common, "--pretrain-steps", "10", "--eta", "2"),
                   start_edge(procs, port, "e1", "t1", "5,6,7,8,9", *common, "--pretrain-steps", "10", "--eta", "1")]
        target = start_edge(procs, port, "e2", "t2", "0,5", *common, "--pretrain-steps", "0", "--adapt-steps", "5",
                            "--out", str(tmp_path / "e2"))
        for p in sources:
            assert procs.wait(p, 120) == 0, procs.log(p)[-2000:]
        assert procs.wait(target, 120) == 0, procs.log(target)[-2000:]

        ckpt = tmp_path / "ckpt"
        assert sorted(p.name for p in (ckpt / "uploads").iterdir()) == ["e0.bundle", "e1.bundle"]
        models, scalars = decode_bundle((ckpt / "barycenter.bundle").read_bytes())
        assert set(models) == {"generator", "critic_prev", "critic_new"} and scalars == {"nodes": 2.0}
        got = load_checkpoint(tmp_path / "e2" / "barycenter.pt")["state_dict"]
        bary = models["generator"].state_dict()
        assert all(torch.equal(got[k], bary[k]) for k in bary)  # the edge holds exactly the cloud's barycenter
        adapted = load_checkpoint(tmp_path / "e2" / "adapted.pt")["state_dict"]
        assert any(not torch.equal(adapted[k], bary[k]) for k in bary)  # Stage II moved it

        cloud.send_signal(signal.SIGTERM)  # graceful: exit 0 with a report
        assert procs.wait(cloud, 30) == 0
        assert (ckpt / "report.json").is_file()

        # a restarted cloud keeps every finished piece of work: the barycenter is served at once
        _, port2, _ = start_cloud(procs, cfg, name="cloud2")
        again, _ = asyncio.run(download_models("e2", EdgeConnection(f"127.0.0.1:{port2}", "t2"), "barycenter", 0))
        assert all(torch.equal(again["generator"].state_dict()[k], bary[k]) for k in bary)
    finally:
        procs.kill_all()
