"""The Ray backend: 2 actors hosting virtual TDGAN nodes give the same metrics, byte for byte, as
the in-process backend for the same seed, whatever nodes share a worker call."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from edgegan.sim.report import read_metrics  # noqa: E402
from edgegan.sim.run import simulate  # noqa: E402
from edgegan.sim.scenario import scenario_from_dict  # noqa: E402

from test_sim_engine import strip, tiny_tdgan, windows_and_crashes  # noqa: E402


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs and one *declared* GPU (Ray only does the accounting: nothing runs on it)."""
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 << 20, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_pool_matches_inproc(tmp_path, ray_cluster):
    data = tiny_tdgan(seed=7)
    sc_ray = scenario_from_dict({**data, "engine": {"backend": "ray", "workers": 2, "resident_nodes": 3}})
    s_ray = simulate(sc_ray, tmp_path / "ray")
    assert s_ray.engine.backend == "ray" and s_ray.engine.workers == 2
    hosts = s_ray.engine.workers_stats
    assert len({h["pid"] for h in hosts}) == 2 and sum(h["nodes"] for h in hosts) == 10
    assert ray.is_initialized()  # the engine leaves a cluster it did not start running
    sc_in = scenario_from_dict({**data, "engine": {"backend": "inproc", "workers": 1, "resident_nodes": 100}})
    simulate(sc_in, tmp_path / "inproc")
    assert_same_metrics(tmp_path / "ray", tmp_path / "inproc")


def test_fractional_gpus_put_two_workers_on_one_gpu(ray_cluster):
    """``nodes.resources.num_gpus = 0.5``: the pool sizes itself by GPU share (2 × 0.5 of the one GPU),
    both workers are handed the same device and run their nodes on CUDA, and the GPU is fully booked."""
    from edgegan.sim.pool import RayPool

    pool = RayPool(workers=0, num_cpus=1, num_gpus=0.5)
    try:
        assert pool.size == 2 and pool.device == "cuda" and pool.resources == {"num_cpus": 1, "num_gpus": 0.5}
        assert ray.available_resources().get("GPU", 0.0) == 0.0
        assert [(st["gpu_ids"], st["device"]) for st in pool.stats()] == [([0], "cuda"), ([0], "cuda")]
    finally:
        pool.shutdown()
    t0 = time.monotonic()  # killed actors hand their share back asynchronously
    while ray.available_resources().get("GPU") != 1.0 and time.monotonic() - t0 < 20:
        time.sleep(0.2)
    assert ray.available_resources().get("GPU") == 1.0


def assert_same_metrics(run_a, run_b, rows: int = 24) -> None:
    """Two run folders' ``metrics.jsonl`` agree row by row, exactly (times left out)."""
    a = strip(read_metrics(run_a / "metrics.jsonl"))
    b = strip(read_metrics(run_b / "metrics.jsonl"))
    assert len(a) == len(b) > rows
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for k in ra:
            assert ra[k] == rb[k], (ra.get("kind"), ra.get("tick"), k, ra[k], rb[k])


def test_windows_and_crashes_at_the_churn_scenarios_widths_match_inproc_exactly(tmp_path, ray_cluster):
    """tdgan-churn's D_k width and batch (where a one-row pass once summed differently and the
    backends drifted apart at 1e-8 from the first lone node), nodes joining, leaving and crashing,
    spread over 2 Ray workers and over 1 or 3 in-process workers: the same bytes."""
    data = windows_and_crashes()
    runs = {"ray": {"backend": "ray", "workers": 2, "resident_nodes": 2},
            "inproc1": {"backend": "inproc", "workers": 1, "resident_nodes": 100},
            "inproc3": {"backend": "inproc", "workers": 3, "resident_nodes": 1}}
    finals = {}
    for name, engine in runs.items():
        finals[name] = simulate(scenario_from_dict({**data, "engine": engine}), tmp_path / name).final_fid
    assert finals["ray"] == finals["inproc1"] == finals["inproc3"]
    assert_same_metrics(tmp_path / "ray", tmp_path / "inproc1", rows=16)
    assert_same_metrics(tmp_path / "inproc3", tmp_path / "inproc1", rows=16)
