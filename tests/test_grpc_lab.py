"""A real cloud/edge run a lab user can watch (issue 16 item 5): progress lines in the cloud's
log, a quality number in ``report.json``, a clean exit on SIGTERM while streams are open, and
a coalesce edge that waits for a cloud that is not up yet but gives up in one line when none
comes."""

from __future__ import annotations

import json
import re
import signal
from pathlib import Path

import pytest

from grpc_procs import (
    Procs,
    cloud_ready,
    config_port,
    free_port,
    launch_cloud,
    start_edge,
    wait_for_log,
    wait_metric,
    write_config,
)

TRACEBACK_MARKERS = ("Traceback", "CancelledError", "Exception not handled", "AioRpcError")


@pytest.fixture
def procs(tmp_path: Path):
    p = Procs(tmp_path)
    yield p
    p.kill_all()


@pytest.mark.stochastic
def test_cloud_logs_progress_scores_g_and_stops_cleanly_on_sigterm(procs: Procs, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cloud.yaml", steps=100000, start_nodes=2, log_every=10, eval_every=20,
                       eval_samples_per_class=20)
    cloud = launch_cloud(procs, cfg)
    edges = [start_edge(procs, config_port(cfg), k, f"t{k[1]}", c) for k, c in (("e0", "0,1,2,3,4"),
                                                                                ("e1", "5,6,7,8,9"))]
    _, mport = cloud_ready(procs, cloud)
    wait_metric(procs, cloud, mport, "edgegan_feature_fid", 1e-9)  # evaluated at step 20
    wait_metric(procs, cloud, mport, "edgegan_generator_step", 30)
    assert all(e.poll() is None for e in edges)  # both streams are open
    cloud.send_signal(signal.SIGTERM)
    assert procs.wait(cloud, 60) == 0, procs.log(cloud)[-3000:]

    log = procs.log(cloud)
    for marker in TRACEBACK_MARKERS:
        assert marker not in log, log[-3000:]
    lines = re.findall(r"step (\d+)/100000: online (\d+), accepted (\d+) rejected (\d+) \(total (\d+)/(\d+)\), "
                       r"d_loss [^\s,]+ g_loss [^\s,]+ reminding [^\s,]+(, feature-FID [\d.]+ at step \d+)?", log)
    assert [int(s) for s, *_ in lines][:3] == [10, 20, 30]
    assert all(on == "2" and acc == "2" and rej == "0" for _, on, acc, rej, *_ in lines)
    assert lines[1][-1].startswith(", feature-FID")  # the line after an evaluation carries the FID
    report = json.loads((tmp_path / "ckpt" / "report.json").read_text())
    assert not report["finished"] and report["eval_dataset"] == "digits"
    assert report["evals"] and report["evals"][0]["step"] == 20 and report["evals"][0]["feature_fid"] > 0


def test_sigterm_while_an_edge_waits_for_the_barycenter(procs: Procs, tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cloud.yaml", mode="coalesce", coalesce={"expected_uploads": 2})
    cloud = launch_cloud(procs, cfg)
    cloud_ready(procs, cloud)
    target = start_edge(procs, config_port(cfg), "e1", "t1", "2,7", "--mode", "coalesce", "--pretrain-steps", "0",
                        "--adapt-steps", "1", "--retry-s", "1")
    wait_for_log(procs, cloud, "node e1 waits up to 600 s for the barycenter")
    cloud.send_signal(signal.SIGTERM)
    assert procs.wait(cloud, 60) == 0, procs.log(cloud)[-3000:]
    for marker in TRACEBACK_MARKERS:
        assert marker not in procs.log(cloud), procs.log(cloud)[-3000:]
    # the edge was told the cloud is going away, retried, and gave up in one line
    assert procs.wait(target, 60) == 2
    log = procs.log(target)
    assert "UNAVAILABLE" in log and "unreachable for 1 s" in log, log
    for marker in TRACEBACK_MARKERS:
        assert marker not in log, log


def test_coalesce_edge_gives_up_in_one_line_when_no_cloud_comes(procs: Procs, tmp_path: Path) -> None:
    edge = start_edge(procs, free_port(), "e0", "t0", "0,1", "--mode", "coalesce", "--pretrain-steps", "1",
                      "--retry-s", "2")
    assert procs.wait(edge, 60) == 2
    log = procs.log(edge)
    assert "cloud: '127.0.0.1:" in log and "unreachable for 2 s" in log, log
    assert "retrying" in log  # it did retry (with back-off) before giving up
    for marker in TRACEBACK_MARKERS:
        assert marker not in log, log
