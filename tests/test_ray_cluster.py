"""A real multi-node Ray cluster (issue 15 item 4): a head and a second raylet started with
``ray start`` on this machine; the pool spreads over both and gives the in-process metrics; killing
the second raylet mid-run loses one worker, whose nodes are re-created on the survivor, and the
command still exits 0 with a complete run folder. An unreachable ``--ray-address`` is a one-line
error within a bounded, configurable time."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from edgegan.errors import EdgeganError  # noqa: E402
from edgegan.sim.host import NodeHost  # noqa: E402
from edgegan.sim.link import SimLink  # noqa: E402
from edgegan.sim.availability import build_availability  # noqa: E402
from edgegan.sim.pool import RayPool, WorkerPool  # noqa: E402
from edgegan.sim.ray_connect import check_reachable  # noqa: E402
from edgegan.sim.report import read_metrics  # noqa: E402
from edgegan.sim.run import simulate  # noqa: E402
from edgegan.sim.scenario import scenario_from_dict  # noqa: E402

from test_sim_engine import tiny_tdgan  # noqa: E402
from test_sim_ray import assert_same_metrics  # noqa: E402


def _free_ports(n: int) -> list[int]:
    """``n`` distinct ports on 127.0.0.1 that nothing listens on (their sockets are closed again)."""
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_unreachable_address_fails_fast(form):
    addr = form.format(_free_ports(1)[0])
    t0 = time.perf_counter()
    with pytest.raises(EdgeganError, match="cannot reach Ray") as e:
        RayPool(workers=1, address=addr, connect_timeout_s=2.0)
    assert time.perf_counter() - t0 < 5 and "\n" not in str(e.value)


@pytest.fixture
def listener():
    """A TCP server on 127.0.0.1 that accepts connections and sends ``reply`` (nothing: a silent service)."""
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    state = {"reply": b"", "conns": []}

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            state["conns"].append(conn)
            if state["reply"]:
                conn.sendall(state["reply"])

    threading.Thread(target=serve, daemon=True).start()
    yield srv.getsockname()[1], state
    srv.close()
    for c in state["conns"]:
        c.close()


@pytest.mark.parametrize("form", ["127.0.0.1:{}", "ray://127.0.0.1:{}"])
def test_silent_service_fails_after_the_timeout(form, listener):
    """A port that accepts but never answers (ray.init would retry for 108 s / 31 s): one line once
    the configured bound is spent."""
    port, _ = listener
    t0 = time.perf_counter()
    with pytest.raises(EdgeganError, match="cannot reach Ray .* within 1.5 s") as e:
        check_reachable(form.format(port), 1.5)
    assert 1.4 < time.perf_counter() - t0 < 4 and "\n" not in str(e.value)


def test_other_service_is_not_taken_for_ray(listener):
    port, state = listener
    state["reply"] = b"HTTP/1.1 400 Bad Request\r\n\r\n"
    with pytest.raises(EdgeganError, match="does not answer as a Ray"):
        check_reachable(f"127.0.0.1:{port}", 5.0)


def test_cli_ray_connect_timeout(tmp_path, listener, capsys):
    """`--ray-connect-timeout` bounds the wait (exit 2, one line); a bound <= 0 is refused."""
    from edgegan.cli import main

    port, _ = listener
    (tmp_path / "sc.yaml").write_text(json.dumps(tiny_tdgan()))
    args = ["simulate", "--scenario", str(tmp_path / "sc.yaml"), "--out", str(tmp_path / "run"), "--no-progress",
            "--ray-address", f"127.0.0.1:{port}"]
    t0 = time.perf_counter()
    assert main([*args, "--ray-connect-timeout", "1.5"]) == 2
    assert 1.4 < time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "within 1.5 s" in err[0], err
    assert not (tmp_path / "run").exists()
    assert main([*args, "--ray-connect-timeout", "0"]) == 2
    assert "ray-connect-timeout: must be > 0" in capsys.readouterr().err


def test_bad_address_form():
    with pytest.raises(EdgeganError, match="HOST:PORT"):
        check_reachable("ray://nohostport", 1.0)


def test_connect_timeout_is_validated():
    with pytest.raises(EdgeganError, match="engine.ray_connect_timeout_s"):
        scenario_from_dict({**tiny_tdgan(), "engine": {"ray_connect_timeout_s": 0}})


# ---------------------------------------------------------------------- a lost worker, in process
def fail_worker(monkeypatch, index: int | None, step: int) -> set[str]:
    """Worker ``index`` (None: every worker) fails every call from generator step ``step`` on, like an
    actor whose Ray node died; returns the nodes it had spilled when it failed (filled in then)."""
    spilled_at_loss: set[str] = set()
    feedback = NodeHost.feedback

    def failing(self, requests):
        if index in (None, self.index) and requests[0].step >= step:
            spilled_at_loss.update(self.spill.parked)
            raise RuntimeError("raylet died")
        return feedback(self, requests)

    monkeypatch.setattr(NodeHost, "feedback", failing)
    return spilled_at_loss


def test_lost_worker_nodes_leave_and_are_recreated(tmp_path, monkeypatch):
    """Worker 0 fails from step 8 on: its online nodes leave in that step (π over the others), every
    node it hosted is re-created on worker 1 when the schedule next lets it join, from its spill file
    if it was spilled, else fresh; the run finishes and report.md says so."""
    spilled_at_loss = fail_worker(monkeypatch, 0, 8)
    sc = scenario_from_dict(tiny_tdgan(seed=7))
    s = simulate(sc, tmp_path, evaluate=False)
    rows = {r["tick"]: r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "step"}
    assert s.tdgan.status == "finished" and sorted(rows) == list(range(24))
    [lost] = s.engine.lost_workers
    t = lost["tick"]
    mine = {f"node{i}" for i in range(0, 10, 2)}  # round robin: worker 0 hosts the even nodes
    assert lost["index"] == 0 and lost["error"] == "RuntimeError: raylet died" and lost["nodes"] == 5
    assert t == min(k for k, r in rows.items() if r["step"] >= 8 and mine & set(r["online"]))
    assert rows[t]["failed"] == lost["online"] == sorted(mine & set(rows[t]["online"]))
    assert rows[t]["accepted"] == len(rows[t]["online"]) - len(lost["online"])
    av = build_availability(sc.schedule, sc.nodes.ids, 24, sc.seed)

    def joined(u: int) -> set[str]:
        return set(av.online_at(u)) - set(av.online_at(u - 1))

    joins = {k for u in range(t + 1, 24) for k in joined(u)} & mine
    assert set(lost["recreated"]) == joins and len(joins) >= 2
    for k, r in lost["recreated"].items():
        assert r["worker"] == 1 and r["tick"] == min(u for u in range(t + 1, 24) if k in joined(u))
        assert r["state"] == ("spilled" if k in spilled_at_loss else "fresh"), k
        assert k in rows[r["tick"]]["online"]
    assert {"spilled", "fresh"} == {r["state"] for r in lost["recreated"].values()}
    for u in range(t + 1, 24):  # the schedule goes on: everyone online but the orphans not yet back
        waiting = (mine - set(lost["recreated"])) | {k for k, r in lost["recreated"].items() if r["tick"] > u}
        assert set(rows[u]["online"]) == set(av.online_at(u)) - waiting, u
        assert rows[u]["accepted"] == len(rows[u]["online"])
    assert s.engine.workers_stats[0]["lost"] and s.engine.workers_stats[1]["nodes"] == 5 + len(joins)
    assert "- lost worker 0 at tick" in (tmp_path / "report.md").read_text()
    assert not (tmp_path / "metrics.jsonl").read_text().count('"kind": "eval"')


def test_every_worker_lost_is_one_line(tmp_path, monkeypatch):
    fail_worker(monkeypatch, None, 3)
    with pytest.raises(EdgeganError, match="engine.workers: every pool worker is lost") as e:
        simulate(scenario_from_dict(tiny_tdgan(seed=7)), tmp_path, evaluate=False)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------- a real two-raylet cluster
# Ray maps a loopback --address / --node-ip-address to the machine's outward IP
# (ray._private.services.resolve_ip_for_localhost); these tests must stay on 127.0.0.1. The head and
# the drivers run with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (Ray's local-only switch: node IP
# 127.0.0.1); that switch also refuses to start a non-head node, so the second raylet runs Ray's own
# `ray start` with the loopback mapping turned off.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0",
                "OMP_NUM_THREADS": "1"}
RAY_START_ON_LOOPBACK = ("import sys, ray._private.ray_constants as c, ray._private.services as s\n"
                         "c.ENABLE_RAY_CLUSTER = True\n"
                         "s.resolve_ip_for_localhost = lambda host: host\n"
                         "s.get_node_ip_address = lambda address=None: '127.0.0.1'\n"
                         "from ray.scripts.scripts import main\n"
                         "sys.argv[0] = 'ray'\n"
                         "main()\n")
CPUS_PER_NODE = 2


def _ray_start(args: list[str], temp: Path, ports: list[int]) -> list[str]:
    return ["start", *args, "--block", "--num-cpus", str(CPUS_PER_NODE), "--node-ip-address", "127.0.0.1",
            "--temp-dir", str(temp), "--disable-usage-stats", "--object-store-memory", str(100 << 20),
            "--dashboard-agent-listen-port", str(ports[0]), "--dashboard-agent-grpc-port", str(ports[1]),
            "--runtime-env-agent-port", str(ports[2]), "--metrics-export-port", str(ports[3])]


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), e.g. a raylet's worker processes."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a `ray start --block` and everything it started (its process group and every process
    below it: SIGKILL is a machine dying, its actors included); only processes started here."""
    below = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, sig)
        if sig == signal.SIGKILL:
            for pid in below:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def two_raylets():
    """A head and a second raylet (2 CPUs each), separate ``ray start --block`` process groups and
    temp dirs; only those groups are stopped (``ray stop`` would stop every Ray on the machine)."""
    root = Path(tempfile.mkdtemp(prefix="egray", dir="/tmp"))  # short: Ray's unix socket paths
    port, client, *ports = _free_ports(10)
    env = {**os.environ, **LOOPBACK_ENV}
    log = (root / "ray.log").open("w")
    ray_bin = str(Path(sys.executable).with_name("ray"))
    procs = [subprocess.Popen([ray_bin, *_ray_start(["--head", "--port", str(port), "--include-dashboard", "false",
                                                     "--ray-client-server-port", str(client)], root / "head",
                                                    ports[:4])],
                              env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT)]
    addr = f"127.0.0.1:{port}"
    mp = pytest.MonkeyPatch()
    mp.setattr("ray._private.ray_constants.ENABLE_RAY_CLUSTER", False)  # this process drives on loopback too
    mp.setenv("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    try:
        t0 = time.time()
        while time.time() - t0 < 60:  # the head's GCS is listening
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert procs[0].poll() is None, (root / "ray.log").read_text()[-3000:]
                time.sleep(0.3)
        procs.append(subprocess.Popen([sys.executable, "-c", RAY_START_ON_LOOPBACK,
                                       *_ray_start(["--address", addr], root / "second", ports[4:])],
                                      env=env, start_new_session=True, stdout=log, stderr=subprocess.STDOUT))
        ray.init(address=addr, log_to_driver=False)
        try:
            head = ray.get_runtime_context().get_node_id()  # a driver joins the head's raylet
            t0 = time.time()
            while len(alive := [n["NodeID"] for n in ray.nodes() if n["Alive"]]) < 2 and time.time() - t0 < 60:
                time.sleep(0.5)
        finally:
            ray.shutdown()
        assert len(alive) == 2, (root / "ray.log").read_text()[-3000:]
        yield {"address": addr, "client": f"ray://127.0.0.1:{client}", "head": head,
               "second": next(n for n in alive if n != head), "second_proc": procs[1]}
    finally:
        mp.undo()
        for p in reversed(procs):
            _stop(p)
        log.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)


def test_two_raylets_spread_kill_recover_and_match_inproc(tmp_path, two_raylets, monkeypatch):
    """`edgegan simulate --ray-address` on a head + second raylet (2 CPUs each, 2 workers): SPREAD puts
    one worker on each raylet. `kill -9` of the second raylet and its processes just before step 12 of
    30: the loss is noticed within seconds, the lost worker's nodes are re-created on the head's worker,
    and the command exits 0 with summary.json, report.md and plots. Its metrics equal, row by row, an
    in-process run of the same seed in which the same worker fails at the same step."""
    from edgegan.cli import main

    for form in ("address", "client"):  # the head's GCS and its Ray client server pass the gRPC check
        check_reachable(two_raylets[form], 10.0)
    sc = {**tiny_tdgan(seed=7, kind="churn", steps=30, churn={"mean_up": 5, "mean_down": 4}),
          "training": {"steps": 30, "tdgan": {"batch_size": 8, "remind_batch_size": 8, "width": 32}},
          "outputs": {"plots": True, "sample_grids": False}}
    (tmp_path / "sc.yaml").write_text(json.dumps(sc))
    out = tmp_path / "ray"
    kill: dict[str, float] = {}
    complete, lose = SimLink._complete, WorkerPool.lose

    def kill_before_step_12(link):
        """The machine dies between worker calls (after step 11's rows, before step 12 is sent), so the
        in-process replay below is exact; a kill during a call can leave its activations half done
        (Ray: "the task may or may not have been executed")."""
        complete(link)
        if link.server.tdgan.step == 12 and "at" not in kill:
            _stop(two_raylets["second_proc"], signal.SIGKILL)
            kill["at"] = time.time()

    def noticed(pool, host, error):
        kill["noticed_s"] = time.time() - kill["at"]
        return lose(pool, host, error)

    monkeypatch.setattr(SimLink, "_complete", kill_before_step_12)
    monkeypatch.setattr(WorkerPool, "lose", noticed)
    rc = main(["simulate", "--scenario", str(tmp_path / "sc.yaml"), "--out", str(out), "--no-progress",
               "--ray-address", two_raylets["address"], "--ray-connect-timeout", "10"])
    monkeypatch.undo()
    assert rc == 0 and kill["noticed_s"] < 10, kill
    summary = json.loads((out / "summary.json").read_text())
    for f in ("report.md", "fid.png", "nodes_online.png", "class_coverage.png"):
        assert (out / f).exists(), f
    stats = summary["engine"]["workers_stats"]
    [lost] = summary["engine"]["lost_workers"]
    survivor = 1 - lost["index"]
    # SPREAD: 2 CPUs per raylet would fit both actors on one; there was one on each
    assert lost["ray_node"] == two_raylets["second"] and stats[survivor]["ray_node"] == two_raylets["head"]
    assert stats[lost["index"]]["lost"] and lost["step"] >= 12 and lost["nodes"] == 5
    print(f"loss noticed {kill['noticed_s']:.2f} s after the kill, at step {lost['step']}")
    assert lost["recreated"] and all(r["worker"] == survivor for r in lost["recreated"].values())
    report = (out / "report.md").read_text()
    assert f"- lost worker {lost['index']} (Ray node {lost['ray_node'][:12]}) at tick" in report
    assert not Path(lost["spill_dir"]).exists()  # the survivor removed the lost worker's spill folder

    spilled_at_loss = fail_worker(monkeypatch, lost["index"], lost["step"])
    s = simulate(scenario_from_dict({**sc, "engine": {**sc["engine"], "backend": "inproc"}}), tmp_path / "inproc")
    [replayed] = s.engine.lost_workers
    assert {k: (r["tick"], r["state"]) for k, r in replayed["recreated"].items()} == \
        {k: (r["tick"], r["state"]) for k, r in lost["recreated"].items()}
    # the survivor on the head read the killed worker's spill files (same machine): spilled ones continued
    spilled = {k for k, r in lost["recreated"].items() if r["state"] == "spilled"}
    assert spilled == spilled_at_loss & set(lost["recreated"])
    assert_same_metrics(out, tmp_path / "inproc")
