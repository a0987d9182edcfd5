"""A real Prometheus against a live run: Debian's ``prometheus`` scrapes ``edgegan simulate
--metrics-port`` every second, then every query of the Grafana dashboard is evaluated through
Prometheus' HTTP API the way a Grafana panel does (``query_range`` over the run, the dashboard's
variables substituted) and must return at least one series with at least one finite value (a
series of only NaN, e.g. a quantile of a histogram nothing was observed in, draws nothing).

One small scenario touches every panel: a coalescence run (source pre-training, a Stage I
aggregation, Stage II) followed by TDGAN (membership, feedback round trips, bytes, losses,
generator steps). Metrics only Flower updates (server round, nodes per round) are registered at 0
by every edgegan process, so they return a series here too; their values are covered by
tests/test_monitoring.py and the Flower tests.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from grpc_procs import Procs, free_port

REPO = Path(__file__).resolve().parents[1]
DASHBOARD = REPO / "deploy" / "grafana" / "dashboards" / "edgegan.json"
PROMETHEUS_YML = REPO / "deploy" / "prometheus" / "prometheus.yml"
PROMETHEUS = shutil.which("prometheus")
SIM_JOB = "edgegan-sim"  # the deployment's job for `edgegan simulate --metrics-port`
SCRAPE_S = 1

pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="the 'prometheus' binary is not installed "
                                "(Debian package 'prometheus'; .ci/run installs it)")

# Small, yet each phase spans several 1 s scrapes: a rate needs an increase between two samples,
# so Prometheus must see the Stage I counter at 0 before the aggregation, and the TDGAN counters
# (steps, bytes, round trips) move between two scrapes before the run exits. The Stage I panel is
# a plain sum/count (mean per aggregation since the process started), so a Stage I that ends
# before the first scrape (a quiet machine: CI once) still shows its number. Measured in-process
# (CPU seconds ≈ wall seconds on an idle core): 4.0–4.4 s from the start to Stage I, 3.3 s of TDGAN.
SCENARIO: dict[str, Any] = {
    "name": "prometheus-live",
    "description": "coalescence then TDGAN on digits, sized to touch every dashboard panel",
    "seed": 0,
    "pipeline": ["coalescence", "tdgan"],
    "data": {"dataset": "digits", "partition": "classes", "classes": [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]},
    "nodes": {"count": 2},
    "training": {"pretrain_steps": 40, "stage1_steps": 5, "adapt_steps": 5, "steps": 100,
                 "tdgan": {"batch_size": 16, "width": 32}},
    "target": {"methods": ["barycentric_fa"]},
    "evaluation": {"every": 30, "samples": 200, "samples_per_class": 20},
    "outputs": {"plots": False, "sample_grids": False},
    "engine": {"backend": "inproc"},
}


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def _queries(dash: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title / refId, expr) of every panel target and annotation with a PromQL expr."""
    out = [(f"{p.get('title')} / {t.get('refId')}", t["expr"]) for p in dash["panels"] for t in p.get("targets", [])
           if t.get("expr")]
    out += [(f"annotation {a.get('name')}", a["expr"]) for a in dash.get("annotations", {}).get("list", [])
            if a.get("expr")]
    return out


def _variables(dash: dict[str, Any], range_s: int) -> dict[str, str]:
    """What Grafana substitutes: each template variable's 'All' value (else its current value)
    and the built-in intervals for a ``SCRAPE_S`` scrape interval."""
    out = {"__interval": f"{SCRAPE_S}s", "__rate_interval": f"{4 * SCRAPE_S}s", "__range": f"{range_s}s"}
    for v in dash.get("templating", {}).get("list", []):
        if v.get("includeAll") and v.get("allValue"):
            out[v["name"]] = v["allValue"]
        else:
            cur = v.get("current", {}).get("value")
            assert isinstance(cur, str) and not cur.startswith("$"), f"variable {v['name']}: no concrete value"
            out[v["name"]] = cur
    return out


def _substitute(expr: str, variables: dict[str, str]) -> str:
    """``$name``, ``${name}`` and ``[[name]]`` replaced; an unknown variable fails the test."""
    def one(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        assert name in variables, f"dashboard variable ${name} in {expr!r} has no value to substitute"
        return variables[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", one, expr)


def _prometheus_config(sim_port: int) -> dict[str, Any]:
    """The deployment's config, its ``edgegan-sim`` job pointed at the live run, 1 s scrapes."""
    deploy = yaml.safe_load(PROMETHEUS_YML.read_text())
    job = next((j for j in deploy["scrape_configs"] if j["job_name"] == SIM_JOB), None)
    assert job is not None, f"{PROMETHEUS_YML} has no job {SIM_JOB!r} for `edgegan simulate --metrics-port`"
    labels = {k: v for sc in job["static_configs"] for k, v in sc.get("labels", {}).items()}
    job = {**job, "static_configs": [{"targets": [f"127.0.0.1:{sim_port}"], "labels": labels}]}
    return {"global": {"scrape_interval": f"{SCRAPE_S}s", "scrape_timeout": f"{SCRAPE_S}s",
                       "evaluation_interval": f"{SCRAPE_S}s"}, "scrape_configs": [job]}


class PrometheusAPI:
    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"

    def get(self, path: str, **params: Any) -> Any:
        url = f"{self.base}{path}?{urllib.parse.urlencode(params, doseq=True)}"
        try:
            with urllib.request.urlopen(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query is a 400 with Prometheus' error in the body
            body = json.loads(e.read())
        assert body["status"] == "success", f"{path} {params}: {body.get('errorType')}: {body.get('error')}"
        return body["data"]

    def ready(self, deadline_s: float, proc: subprocess.Popen, log: Path) -> None:
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            assert proc.poll() is None, f"prometheus exited with {proc.returncode}:\n{log.read_text()[-3000:]}"
            try:
                with urllib.request.urlopen(f"{self.base}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"prometheus not ready after {deadline_s} s:\n{log.read_text()[-3000:]}")

    def scraping(self, job: str, deadline_s: float) -> None:
        """Wait until Prometheus has tried to scrape ``job`` at least once: its scrape loops start
        only once service discovery hands over the targets (up to ~5 s after it is ready), and a
        run started before that can be half over when the first scrape lands."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            targets = self.get("/api/v1/targets", state="active")["activeTargets"]
            if any(t.get("scrapePool") == job and not t.get("lastScrape", "0001").startswith("0001") for t in targets):
                return
            time.sleep(0.2)
        raise AssertionError(f"prometheus never tried to scrape job {job!r} within {deadline_s} s: {targets}")

    def range(self, query: str, start: float, end: float) -> list[dict[str, Any]]:
        """``query_range`` at the scrape interval, as a Grafana panel asks: the series' results."""
        return self.get("/api/v1/query_range", query=query, start=start, end=end, step=SCRAPE_S)["result"]


@pytest.fixture
def scraped_run(tmp_path):
    """Prometheus scraping a whole ``edgegan simulate`` run; yields (api, start, end) in Unix
    seconds. Every process is killed at teardown."""
    sim_port, prom_port = free_port(), free_port()
    cfg = tmp_path / "prometheus.yml"
    cfg.write_text(yaml.safe_dump(_prometheus_config(sim_port)))
    scenario = tmp_path / "scenario.yaml"
    scenario.write_text(yaml.safe_dump(SCENARIO))
    prom_log = tmp_path / "prometheus.log"
    procs = Procs(tmp_path)
    with open(prom_log, "wb") as f:
        prom = subprocess.Popen([PROMETHEUS, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                                stdout=f, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        api = PrometheusAPI(prom_port)
        api.ready(30, prom, prom_log)
        api.scraping(SIM_JOB, 30)
        start = time.time()
        sim = procs.start("simulate", "simulate", "--scenario", str(scenario), "--out", str(tmp_path / "run"),
                          "--no-progress", "--metrics-port", str(sim_port))
        assert procs.wait(sim, 120) == 0, procs.log(sim)[-3000:]
        yield api, start, time.time()
    finally:
        procs.kill_all()
        prom.terminate()
        try:
            prom.wait(10)
        except subprocess.TimeoutExpired:
            prom.kill()
            prom.wait(10)


def _finite_series(result: list[dict[str, Any]]) -> int:
    return sum(any(math.isfinite(float(v)) for _, v in s["values"]) for s in result)


@pytest.mark.timeout(240)
def test_every_dashboard_query_returns_a_series_from_a_live_simulation(scraped_run):
    api, start, end = scraped_run
    dash = _dashboard()
    queries = _queries(dash)
    assert len(queries) >= 14, "the dashboard lost its panels"
    variables = _variables(dash, int(end - start) + 1)

    ups = api.get("/api/v1/query", query=f'sum_over_time(up{{job="{SIM_JOB}"}}[{int(end - start) + 1}s])',
                  time=end)["result"]
    scrapes = float(ups[0]["value"][1]) if ups else 0
    assert scrapes >= 2, f"Prometheus scraped the run {scrapes} time(s)"
    # each query variable (label_values(metric, label) filtered by its regex) offers a value
    for v in dash.get("templating", {}).get("list", []):
        m = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", v.get("definition", ""))
        assert m, f"variable {v['name']}: cannot evaluate {v.get('definition')!r}"
        match = {"match[]": m.group(1)} if m.group(1) else {}
        values = api.get(f"/api/v1/label/{m.group(2)}/values", start=start, end=end, **match)
        offered = [x for x in values if re.search(v.get("regex") or "", x)]  # Grafana's JS regex search
        assert SIM_JOB in offered, f"variable {v['name']}: {v['definition']} gave {values}, filtered {offered}"

    empty = []
    for where, expr in queries:
        promql = _substitute(expr, variables)
        result = api.range(promql, start, end)
        if _finite_series(result) == 0:
            empty.append(f"{where}: {promql} -> {len(result)} series, none with a finite value")
    if empty:  # a rate needs an increase between two samples: say where each counter started
        firsts = {name: _first_value(api, name, start, end) for name in
                  ("edgegan_aggregation_seconds_count", "edgegan_generator_steps_total")}
        raise AssertionError("dashboard queries without data:\n" + "\n".join(empty)
                             + f"\nfirst scraped values: {firsts}")


def _first_value(api: PrometheusAPI, name: str, start: float, end: float) -> str | None:
    result = api.range(name, start, end)
    return result[0]["values"][0][1] if result else None
