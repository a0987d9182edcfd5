"""deploy/: compose commands are real ``edgegan`` subcommands with valid flags (the CLI parser
decides), the cloud YAML validates, the systemd unit's ExecStart parses, the TLS script makes
certificates openssl verifies. ``docker compose config`` cannot run here, hence PyYAML."""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from edgegan.cli import COMMANDS, build_parser

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def _parse(argv: list[str]) -> argparse.Namespace:
    """Parse with the real CLI parser; argparse's exit becomes a test failure naming the argv."""
    try:
        return build_parser().parse_args(argv)
    except SystemExit as e:
        pytest.fail(f"`edgegan {' '.join(argv)}` is not a valid command line (exit {e.code})")


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def _edgegan_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("edgegan")}


def test_compose_has_cloud_three_edges_prometheus_grafana():
    services = _compose()["services"]
    assert set(services) == {"cloud", "edge-0", "edge-1", "edge-2", "prometheus", "grafana"}
    assert set(_edgegan_services(_compose())) == {"cloud", "edge-0", "edge-1", "edge-2"}


def test_every_compose_command_is_a_valid_edgegan_command(monkeypatch):
    compose = _compose()
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["edgegan"]' in dockerfile  # compose `command` = arguments of `edgegan`
    services = _edgegan_services(compose)
    edges = []
    for name, svc in services.items():
        assert svc["build"]["dockerfile"] == "deploy/Dockerfile"
        argv = svc["command"]
        assert isinstance(argv, list), f"{name}: use the exec form (a list) so no shell re-splits it"
        args = _parse(argv)
        assert args.command in COMMANDS and args.command == ("cloud" if name == "cloud" else "edge"), name
        if args.command == "edge":
            edges.append(args)
            host, port = args.cloud.rsplit(":", 1)
            assert host == "cloud" and port == "7600"
            assert "EDGEGAN_TOKEN" in svc["environment"], f"{name} has no token"
    assert sorted(a.node_id for a in edges) == ["edge-0", "edge-1", "edge-2"]

    # the cloud's YAML (mounted in the image at /app/deploy/cloud.yaml) validates, and knows every edge
    from edgegan.config import load_yaml
    from edgegan.runtime.config import CloudConfig

    cloud = _parse(services["cloud"]["command"])
    assert cloud.config == "/app/deploy/cloud.yaml"
    assert "COPY deploy/cloud.yaml ./deploy/cloud.yaml" in dockerfile
    for var in re.findall(r"env:(\w+)", (DEPLOY / "cloud.yaml").read_text()):
        assert var in services["cloud"]["environment"], f"cloud needs {var} in its environment"
        monkeypatch.setenv(var, "test-token")
    cfg = load_yaml(CloudConfig, DEPLOY / "cloud.yaml")
    cfg.validate()
    assert set(cfg.tokens) == {a.node_id for a in edges}
    assert f"{cfg.listen.rsplit(':', 1)[1]}:7600" in services["cloud"]["ports"][0]
    assert f"{cfg.metrics_port}:{cfg.metrics_port}" in services["cloud"]["ports"]
    scraped = [t for job in yaml.safe_load((DEPLOY / "prometheus/prometheus.yml").read_text())["scrape_configs"]
               if job["job_name"] == "edgegan-cloud" for sc in job["static_configs"] for t in sc["targets"]]
    assert scraped == [f"cloud:{cfg.metrics_port}"]


def test_non_edgegan_services_mount_files_that_exist():
    compose = _compose()
    for name in ("prometheus", "grafana"):
        for mount in compose["services"][name]["volumes"]:
            src = mount.split(":")[0]
            if src.startswith("./"):
                assert (DEPLOY / src).exists(), f"{name} mounts {src}, which is missing"
    assert "--config.file=/etc/prometheus/prometheus.yml" in compose["services"]["prometheus"]["command"]


def test_systemd_unit_execstart_is_a_valid_edge_command():
    unit = (DEPLOY / "systemd" / "edgegan-edge@.service").read_text()
    env = dict(line.split("=", 1) for line in (DEPLOY / "systemd" / "edge.env.example").read_text().splitlines()
               if line and not line.startswith("#"))
    (exec_start,) = re.findall(r"^ExecStart=(.+)$", unit, re.M)
    # what systemd does for instance 1: %i → 1, ${VAR} → one word, $VAR → split on spaces
    line = exec_start.replace("%i", "1")
    line = re.sub(r"\$\{(\w+)\}", lambda m: shlex.quote(env[m.group(1)]), line)
    line = re.sub(r"\$(\w+)", lambda m: env[m.group(1)], line)
    argv = shlex.split(line)
    assert argv[0].endswith("/bin/edgegan")
    args = _parse(argv[1:])
    assert args.command == "edge" and args.device == "cuda:1" and args.node_id == "lab1-gpu1"
    assert args.token_file == "/etc/edgegan/token-1" and args.tls_ca and args.tls_cert and args.tls_key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl not installed")
def test_make_certs_makes_a_ca_server_and_client_certificates(tmp_path):
    out = tmp_path / "tls"
    done = subprocess.run([str(DEPLOY / "tls" / "make_certs.sh"), str(out), "--server-name", "cloud",
                           "--server-name", "10.1.2.3", "--node", "edge-0", "--node", "edge-1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    certs = [str(out / f) for f in ("server.pem", "edge-0.pem", "edge-1.pem")]
    verify = subprocess.run(["openssl", "verify", "-CAfile", str(out / "ca.pem"), *certs], capture_output=True,
                            text=True)
    assert verify.returncode == 0 and verify.stdout.count(": OK") == 3, verify.stdout + verify.stderr
    san = subprocess.run(["openssl", "x509", "-in", str(out / "server.pem"), "-noout", "-ext", "subjectAltName"],
                         capture_output=True, text=True).stdout
    assert "DNS:cloud" in san and "IP Address:10.1.2.3" in san and "IP Address:127.0.0.1" in san
    assert (out / "server.key").stat().st_mode & 0o077 == 0  # private keys are not group/world readable
    # a client certificate is not a server certificate
    purpose = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(out / "ca.pem"),
                              str(out / "edge-0.pem")], capture_output=True, text=True)
    assert purpose.returncode != 0
    # the cloud config accepts them for mutual TLS
    from edgegan.runtime.config import TLSConfig

    TLSConfig(str(out / "server.pem"), str(out / "server.key"), str(out / "ca.pem")).validate()


def test_the_cloud_limits_malloc_arenas_trims_the_heap_and_the_knobs_are_validated():
    """`malloc_arenas` (default 2) is applied by `edgegan cloud` through glibc's mallopt and
    `malloc_trim_every_s` (default 60 s) hands freed heap pages back: after freeing half of many
    small blocks, a trim lowers the RSS. A negative value is a one-line error naming the field."""
    import platform

    from edgegan.config import from_dict
    from edgegan.errors import EdgeganError
    from edgegan.runtime.config import CloudConfig
    from edgegan.runtime.malloc import limit_malloc_arenas, trim_malloc

    assert CloudConfig().malloc_arenas == 2
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert limit_malloc_arenas(2)
        blocks = [bytearray(64 * 1024 - 64) for _ in range(4000)]  # below the mmap threshold: heap pages
        del blocks[::2]
        before = _rss_mib()
        assert trim_malloc()
        assert _rss_mib() < before - 50  # half of 250 MiB is free in holes between live blocks
        del blocks
    for knob in ("malloc_arenas", "malloc_trim_every_s"):
        with pytest.raises(EdgeganError, match=knob):
            from_dict(CloudConfig, {knob: -1, "allow_anonymous": True}).validate()


def _rss_mib() -> float:
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
