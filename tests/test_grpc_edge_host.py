"""Many nodes per edge process (``edgegan edge --node-ids …``): each hosted node has its own Session
stream, token, D_k row and data; one refused node never blocks the others; a host killed with
SIGKILL takes its nodes out of the run, and they rejoin with the same ids when it comes back."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from edgegan.data import partition_by_classes
from edgegan.errors import EdgeganError
from edgegan.runtime.edge_host import EdgeHost
from edgegan.tdgan import FeedbackRequest, TDGANConfig, TDGANEdge
from grpc_procs import REPO, Procs, _env, launch_cloud, cloud_ready, config_port, scrape, wait_metric, write_config

IDS = ["e0", "e1", "e2"]
GROUPS = "0,1,2;3,4,5;6,7,8,9"


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()


def test_hosted_nodes_answer_as_their_own_edges_and_a_bad_request_fails_only_its_node(digits) -> None:
    """Concurrent requests of three hosted nodes, answered in one pass, are the bytes each node's own
    TDGANEdge gives; a request with a class the node does not hold fails that node alone."""
    cfg = TDGANConfig(batch_size=16, width=32, seed=3)
    parts = dict(zip(IDS, partition_by_classes(digits, [[0, 1, 2], [3, 4, 5], [6, 7, 8, 9]], seed=0)))
    host = EdgeHost(parts)
    host.configure(cfg, (1, 8, 8))
    alone = {k: TDGANEdge(k, d, cfg) for k, d in parts.items()}
    g = torch.Generator().manual_seed(0)

    def request(k: str, step: int, label: int | None = None) -> FeedbackRequest:
        y = parts[k].y[torch.randint(len(parts[k]), (16,), generator=g)]
        return FeedbackRequest(k, step, torch.rand(16, 1, 8, 8, generator=g) * 2 - 1,
                               y if label is None else torch.full((16,), label))

    async def round_(reqs: list[FeedbackRequest]) -> list:
        return await asyncio.gather(*(host.answer(r) for r in reqs), return_exceptions=True)

    try:
        for step in range(2):
            reqs = [request(k, step) for k in IDS]
            got = asyncio.run(round_(reqs))
            for r, reply in zip(reqs, got):
                want = alone[r.node_id].feedback(r)
                assert torch.equal(reply.grad, want.grad) and reply.stats == want.stats, r.node_id
                assert torch.equal(host.rows[r.node_id], alone[r.node_id].pack())
        before = {k: v.clone() for k, v in host.rows.items()}
        got = asyncio.run(round_([request("e0", 2), request("e1", 2, label=9), request("e2", 2)]))
        assert isinstance(got[1], EdgeganError) and str(got[1]).startswith("labels: node 'e1' has no samples")
        assert not isinstance(got[0], BaseException) and not isinstance(got[2], BaseException)
        assert torch.equal(host.rows["e1"], before["e1"]) and not torch.equal(host.rows["e0"], before["e0"])
    finally:
        host.close()


def write_tokens(path: Path, tokens: dict[str, str], mode: int = 0o600) -> Path:
    path.write_text(yaml.safe_dump(tokens))
    os.chmod(path, mode)
    return path


def start_host(procs: Procs, port: int, tokens: Path, name: str = "host") -> subprocess.Popen:
    return procs.start(name, "edge", "--cloud", f"127.0.0.1:{port}", "--node-ids", ",".join(IDS),
                       "--tokens", str(tokens), "--node-classes", GROUPS, "--device", "cpu", "--retry-s", "60")


def test_a_refused_node_does_not_block_its_host_and_a_killed_host_rejoins(procs: Procs, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cloud.yaml", steps=100000, start_nodes=2, min_nodes=1, checkpoint_every=1000,
                       eval_dataset=None, guard={"timeout_bench_s": 0.0})
    cloud = launch_cloud(procs, cfg)
    _, mport = cloud_ready(procs, cloud)
    wrong = write_tokens(tmp_path / "wrong.yaml", {"e0": "t0", "e1": "t1", "e2": "not-e2s-token"})
    host = start_host(procs, config_port(cfg), wrong)
    assert wait_metric(procs, cloud, mport, "edgegan_nodes_online", 2, timeout=90) == 2
    step0 = wait_metric(procs, cloud, mport, "edgegan_generator_step", 20, timeout=90)
    time.sleep(2.0)  # e2 is refused for good (UNAUTHENTICATED); e0 and e1 keep stepping
    assert scrape(mport)["edgegan_nodes_online"] == 2 and scrape(mport)["edgegan_generator_step"] > step0
    assert "node e2: cloud: tdgan session: UNAUTHENTICATED" in procs.log(host)

    host.send_signal(signal.SIGKILL)
    t_kill = time.monotonic()
    deadline = t_kill + 3.0 + 1.0 + 1.0  # heartbeat_timeout_s + 1 s (+ 1 s of scraping slack)
    while scrape(mport)["edgegan_nodes_online"] > 0:
        assert time.monotonic() < deadline, "the killed host's nodes are still online"
        time.sleep(0.1)
    stopped = scrape(mport)["edgegan_generator_step"]

    right = write_tokens(tmp_path / "right.yaml", {"e0": "t0", "e1": "t1", "e2": "t2"})
    again = start_host(procs, config_port(cfg), right, "host2")
    assert wait_metric(procs, cloud, mport, "edgegan_nodes_online", 3, timeout=90) == 3
    assert wait_metric(procs, cloud, mport, "edgegan_generator_step", stopped + 20, timeout=90) >= stopped + 20
    assert "joined run" in procs.log(again)


def test_a_token_file_others_can_read_is_refused_in_one_line(tmp_path: Path) -> None:
    tokens = write_tokens(tmp_path / "tokens.yaml", {k: "t" for k in IDS}, mode=0o644)
    r = subprocess.run([sys.executable, "-m", "edgegan", "edge", "--cloud", "127.0.0.1:1", "--node-ids", ",".join(IDS),
                        "--tokens", str(tokens)], capture_output=True, text=True, env=_env(), cwd=REPO, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].endswith(f"tokens: '{tokens}' is readable by group or others; "
                                                      f"chmod 600 '{tokens}'")
