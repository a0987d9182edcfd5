"""``edgegan simulate --backend grpc``: a real cloud process and real edge-host processes over
loopback gRPC with per-run tokens and mutual TLS, driven by the scenario's schedule, give the
same run, byte for byte, as the in-process and Ray backends; a host killed with SIGKILL is
restarted and its nodes rejoin at their next scheduled join."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
import yaml

from edgegan.sim.report import read_metrics
from edgegan.sim.run import simulate
from edgegan.sim.scenario import load_scenario, scenario_from_dict

from test_sim_engine import windows_and_crashes
from test_sim_ray import assert_same_metrics

pytest.importorskip("grpc")


def san_names(cert: Path) -> set[str]:
    from cryptography import x509

    c = x509.load_pem_x509_certificate(cert.read_bytes())
    return set(c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
        x509.DNSName))


@pytest.mark.parametrize("lookahead", [False, True])
def test_grpc_backend_matches_inproc_exactly_with_windows_and_crashes(tmp_path, lookahead):
    data = windows_and_crashes()
    data["training"]["tdgan"]["lookahead"] = lookahead  # with it, the hosts begin each update ahead
    s_in = simulate(scenario_from_dict({**data, "engine": {"backend": "inproc", "workers": 1}}), tmp_path / "inproc")
    s_g = simulate(scenario_from_dict({**data, "engine": {"backend": "grpc", "hosts": 2}}), tmp_path / "grpc")
    assert s_g.engine.backend == "grpc" and s_g.engine.workers == 2
    assert s_g.tdgan.status == "finished"
    assert s_g.tdgan.generator_steps == s_in.tdgan.generator_steps == 16
    assert s_g.tdgan.totals["accepted"] == s_in.tdgan.totals["accepted"]
    assert s_g.final_fid == s_in.final_fid
    assert_same_metrics(tmp_path / "grpc", tmp_path / "inproc", rows=16)
    crashed = [r for r in read_metrics(tmp_path / "grpc" / "metrics.jsonl") if r.get("failed")]
    assert [(r["tick"], r["failed"]) for r in crashed] == [(6, ["node2"])]

    run = tmp_path / "grpc"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine"]["backend"] == "grpc"
    assert (run / "report.md").is_file()
    hosts = summary["engine"]["workers_stats"]
    assert sorted(n for h in hosts for n in yaml.safe_load((run / "grpc" / f"host-{h['index']}" / "tokens.yaml")
                                                          .read_text())) == [f"node{i}" for i in range(5)]
    assert all(h["returncode"] == 0 for h in hosts)
    begun = [json.loads(next(line for line in reversed((run / "logs" / f"host-{h['index']}.log").read_text()
                                                       .splitlines()) if line.startswith("{")))["updates_begun_ahead"]
             for h in hosts]
    assert sum(begun) > 0 if lookahead else sum(begun) == 0, begun
    assert "with TLS" in (run / "logs" / "cloud.log").read_text()
    for h in hosts:  # tokens and keys for the owner only; each host's certificate names its nodes
        assert (run / "logs" / f"host-{h['index']}.log").is_file()
        for secret in (run / "grpc" / f"host-{h['index']}" / "tokens.yaml", run / "grpc" / "tls" / f"host-{h['index']}.key.pem"):
            assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        names = yaml.safe_load((run / "grpc" / f"host-{h['index']}" / "tokens.yaml").read_text())
        assert san_names(run / "grpc" / "tls" / f"host-{h['index']}.cert.pem") == set(names)
    assert stat.S_IMODE((run / "grpc" / "cloud.yaml").stat().st_mode) == 0o600


def test_host_killed_with_sigkill_is_restarted_and_its_nodes_rejoin_at_their_next_window(tmp_path):
    sc = load_scenario("tdgan-host-kill")
    assert sc.engine.backend == "grpc" and sc.engine.host_kills[0].host == 0
    s = simulate(sc, tmp_path / "run")
    assert s.tdgan.status == "finished" and s.tdgan.generator_steps == 120
    rows = read_metrics(tmp_path / "run" / "metrics.jsonl")
    steps = {r["tick"]: r for r in rows if r["kind"] == "step"}
    assert [r for r in rows if r["kind"] == "host_killed"][0]["nodes"] == ["node0", "node2", "node4"]
    # host 0 hosts node0, node2, node4; at step 60 only node4 of them is online: it fails with its host
    assert steps[50]["failed"] == ["node5"] and steps[60]["failed"] == ["node4"]
    assert "node4" not in steps[61]["online"] and all("node4" not in steps[t]["online"] for t in range(61, 120))
    # the restarted host's nodes come back at their scheduled joins (the tick waits for their streams)
    assert "node0" in steps[70]["online"] and "node0" not in steps[69]["online"]
    assert "node2" in steps[80]["online"] and "node2" not in steps[79]["online"]
    host0 = s.engine.workers_stats[0]
    assert host0["killed_at_step"] == 60 and len(host0["restarts"]) == 1 and host0["returncode"] == 0
    assert s.tdgan.final is not None and s.tdgan.final.fid_whole > 0


def test_tdgan_churn_is_the_same_run_on_inproc_ray_and_grpc(tmp_path):
    """The churn scenario as users run it: every metrics row, the 600 generator steps, the accepted
    feedback and the final feature-FID are equal on the three backends (Ray: 2 workers)."""
    pytest.importorskip("ray")
    runs = {"inproc": {"workers": 1}, "ray": {"workers": 2}, "grpc": {"hosts": 2}}
    out = {}
    for backend, engine in runs.items():
        sc = load_scenario("tdgan-churn")
        sc.engine.backend = backend
        for k, v in engine.items():
            setattr(sc.engine, k, v)
        out[backend] = simulate(sc, tmp_path / backend)
    steps = {b: s.tdgan.generator_steps for b, s in out.items()}
    accepted = {b: s.tdgan.totals["accepted"] for b, s in out.items()}
    fid = {b: s.tdgan.final.fid_whole for b, s in out.items()}
    assert len(set(steps.values())) == 1 and steps["grpc"] == 600, steps
    assert len(set(accepted.values())) == 1, accepted
    assert len(set(fid.values())) == 1, fid
    assert_same_metrics(tmp_path / "grpc", tmp_path / "inproc", rows=600)
    assert_same_metrics(tmp_path / "ray", tmp_path / "inproc", rows=600)
