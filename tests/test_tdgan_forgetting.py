"""Seed 003 table 3's shape on a short run: fine-tuning forgets task 1, TDGAN keeps it."""

import pytest

from edgegan.data import partition_by_classes
from edgegan.errors import EdgeganError
from edgegan.tdgan import Schedule, TDGANConfig
from edgegan.eval import Evaluator
from edgegan.tdgan.harness import run_method


STEPS_PER_TASK = 600


def two_tasks(digits, classifier, steps_per_task: int = STEPS_PER_TASK):
    """Node a holds classes 0-2, node b 3-5; one node online per task; the evaluator."""
    parts = partition_by_classes(digits, [[0, 1, 2], [3, 4, 5]], seed=0)
    nodes = {"a": parts[0], "b": parts[1]}
    return nodes, Schedule.single_entity(["a", "b"], steps_per_task), Evaluator(digits, classifier)


@pytest.fixture(scope="module")
def setup(digits, digits_classifier):
    return two_tasks(digits, digits_classifier)


def tdgan_and_finetune(seed: int, setup) -> tuple[dict, dict]:
    """Summaries of TDGAN and fine-tuning trained with ``TDGANConfig(seed=seed)`` on ``setup``
    (the test's body; benchmarks/test_margins.py runs it over seeds)."""
    nodes, sched, ev = setup
    cfg = TDGANConfig(seed=seed)
    res = {m: run_method(m, nodes, sched, cfg, ev, samples_per_class=100).summary() for m in ("tdgan", "finetune")}
    return res["tdgan"], res["finetune"]


SEEDS = (0, 1)


@pytest.mark.stochastic
def test_tdgan_keeps_old_classes_and_finetuning_forgets_them(setup):
    runs = [tdgan_and_finetune(seed, setup) for seed in SEEDS]
    for td, ft in runs:  # task 1 is identical for both (λ only acts after the first membership change)
        assert td["task_acc"][0] == ft["task_acc"][0]
        assert td["rejected"] == 0 and ft["rejected"] == 0

    def mean(f):
        return sum(f(td, ft) for td, ft in runs) / len(runs)

    task1 = mean(lambda td, ft: td["task_acc"][0][0])
    kept = mean(lambda td, ft: td["old_class_acc"][1] - td["task_acc"][0][0])
    left = mean(lambda td, ft: ft["old_class_acc"][1] - ft["task_acc"][0][0])
    gap = mean(lambda td, ft: td["old_class_acc"][1] - ft["old_class_acc"][1])
    # Means over seeds 0 and 1 at 600 steps/task. Single runs drop a class now and then (task-1 accuracy 2/3)
    # or fine-tuning barely forgets, so one seed is a knife edge: with one seed and 300 steps/task (the old
    # test) 1 of 10 runs (seeds 0-4 × ATEN_CPU_CAPABILITY default/avx2, 1 thread) failed and 4 more came
    # within 0.05 of a bound; with 600 steps the single run avx2/seed 0 (the old test's seed) still failed:
    # task 1 0.67, TDGAN − fine-tuning gap 0.13.
    # Measured: 15 single runs (seeds 0-4 × default/avx2/avx512, 1 thread; avx2 = avx512 here) give 30 means
    # over two seeds of one capability. Pair means min/median/max: task 1 0.668/0.987/1.0, kept
    # −0.005/0.002/0.023, left −0.997/−0.839/−0.398, gap 0.420/0.853/0.998; this test's seeds (0, 1): gap
    # 0.985 (default), 0.523 (avx2, avx512). Bounds keep ≥ 0.145 from the worst pair mean. An untrained
    # G scores 0.0 on classes 0-2 (0.2-0.33 on 3-5); a reminding term that does nothing gives gap 0.
    assert task1 > 0.5, task1
    assert kept > -0.15, kept  # TDGAN keeps its task-1 classes
    assert left < -0.25, left  # fine-tuning forgets them
    assert gap > 0.25, gap  # a reminding term that does nothing makes the two runs identical: gap 0
    # both learnt the new task; measured single runs: min 0.817, median 0.980
    assert min(min(td["new_class_acc"][1], ft["new_class_acc"][1]) for td, ft in runs) > 0.5


def test_unknown_method_is_an_error(setup):
    nodes, sched, ev = setup
    with pytest.raises(EdgeganError, match="^method: "):
        run_method("fedavg", nodes, sched, TDGANConfig(), ev)
