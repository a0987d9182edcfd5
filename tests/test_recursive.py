import copy
import os

import pytest
import torch

from coalescence_setup import CFG, SOURCE_CLASSES, two_sources
from edgegan.barycenter import average_generators, coalescence_order, recursive_barycenter, relevance_weights
from edgegan.errors import EdgeganError
from edgegan.eval import class_shares, target_share
from edgegan.gan import WGANConfig
from edgegan.nn import build_gan

TINY = WGANConfig(lr=1e-3, beta2=0.9, critic_steps=1, batch_size=16)


def tiny_models(k, width=16, seed=0, device="cpu"):
    torch.manual_seed(seed)
    pairs = [build_gan("mlp", (1, 8, 8), 8, width=width) for _ in range(k)]
    return [g.to(device) for g, _ in pairs], [d.to(device) for _, d in pairs]


def states_equal(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k].cpu(), sb[k].cpu()) for k in sa)


def one_line_error(fn, field):
    with pytest.raises(EdgeganError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith(field) and "\n" not in msg, msg
    return msg


def test_relevance_weights_and_order():
    assert relevance_weights([1.0, 2.0, 4.0]) == [1.0, 0.5, 0.25]
    assert coalescence_order([1.0, 4.0, 2.0]) == [1, 2, 0]  # least relevant (largest η) first
    assert coalescence_order([1.0, 1.0, 1.0]) == [0, 1, 2]
    one_line_error(lambda: relevance_weights([1.0, 0.0]), "eta[1]")
    one_line_error(lambda: relevance_weights([-2.0]), "eta[0]")
    one_line_error(lambda: coalescence_order([1.0, float("nan")]), "eta[1]")
    one_line_error(lambda: relevance_weights([]), "eta")


def test_single_model_is_its_own_barycenter(device):
    gens, crits = tiny_models(1, device=device)
    before = copy.deepcopy(gens[0])
    res = recursive_barycenter(gens, crits, [2.0], steps_per_stage=5, cfg=TINY)
    assert res.generator is not gens[0] and states_equal(res.generator, gens[0])
    assert states_equal(res.critic_prev, crits[0]) and states_equal(res.critic_new, crits[0])
    assert res.order == [0] and res.lambdas == [0.5] and res.log["stages"] == []
    assert states_equal(gens[0], before)


def test_stage_weights_follow_accumulated_relevance_and_inputs_stay_untouched():
    gens, crits = tiny_models(3)
    before = [copy.deepcopy(m) for m in gens + crits]
    seen = []
    res = recursive_barycenter(gens, crits, [1.0, 2.0, 4.0], 3, TINY, callback=seen.append, log=True)
    assert res.order == [2, 1, 0]
    st = res.log["stages"]
    assert [(s["stage"], s["node"]) for s in st] == [(2, 1), (3, 0)]
    assert st[0]["lambda_prev"] == pytest.approx(0.25) and st[0]["lambda_new"] == pytest.approx(0.5)
    assert st[1]["lambda_prev"] == pytest.approx(0.75) and st[1]["lambda_new"] == pytest.approx(1.0)
    assert len(seen) == len(res.log["history"]) == 6 and {s["stage"] for s in seen} == {2, 3}
    assert all(states_equal(a, b) for a, b in zip(gens + crits, before))
    assert not states_equal(res.generator, gens[2])  # G*_3 was trained away from ν_1 = G_3


def test_bad_input_is_one_line_and_writes_nothing(tmp_path):
    gens, crits = tiny_models(2)
    wide_g, wide_d = build_gan("mlp", (1, 8, 8), 8, width=24)
    ck = tmp_path / "ck"
    one_line_error(lambda: recursive_barycenter([], [], [], 5, TINY, ck), "generators")
    one_line_error(lambda: recursive_barycenter([gens[0], wide_g], crits, [1, 1], 5, TINY, ck), "generators[1]")
    one_line_error(lambda: recursive_barycenter(gens, [crits[0], wide_d], [1, 1], 5, TINY, ck), "critics[1]")
    one_line_error(lambda: recursive_barycenter(gens, crits[:1], [1, 1], 5, TINY, ck), "critics")
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0], 5, TINY, ck), "eta")
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0, 0.0], 5, TINY, ck), "eta[1]")
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0, -1.0], 5, TINY, ck), "eta[1]")
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0, 1.0], 0, TINY, ck), "steps_per_stage")
    assert not ck.exists()


def test_checkpoint_resume_reproduces_uninterrupted_run(tmp_path, device):
    gens, crits = tiny_models(3, device=device)
    eta = [1.0, 1.0, 1.0]
    torch.manual_seed(7)
    full = recursive_barycenter(gens, crits, eta, 4, TINY, tmp_path / "a")

    class Crash(Exception):
        pass

    def crash_in_stage_3(stats):
        if stats["stage"] == 3 and stats["step"] == 2:
            raise Crash

    torch.manual_seed(7)
    with pytest.raises(Crash):
        recursive_barycenter(gens, crits, eta, 4, TINY, tmp_path / "b", callback=crash_in_stage_3)
    assert sorted(os.listdir(tmp_path / "b")) == ["stage_002.pt"]  # finished steps only, no temp files
    torch.manual_seed(123)  # the resumed run restores the RNG from the checkpoint
    resumed = recursive_barycenter(gens, crits, eta, 4, TINY, tmp_path / "b")
    assert resumed.log["resumed_from_stage"] == 2 and full.log["resumed_from_stage"] is None
    for a, b in ((full.generator, resumed.generator), (full.critic_prev, resumed.critic_prev),
                 (full.critic_new, resumed.critic_new)):
        assert states_equal(a, b)
    assert [s["w1_estimate"] for s in full.log["stages"]] == [s["w1_estimate"] for s in resumed.log["stages"]]
    # a finished folder resumes to the same result without training
    again = recursive_barycenter(gens, crits, eta, 4, TINY, tmp_path / "b")
    assert again.log["resumed_from_stage"] == 3 and states_equal(again.generator, full.generator)


def test_checkpoint_of_another_run_or_corrupt_is_refused(tmp_path):
    gens, crits = tiny_models(2)
    recursive_barycenter(gens, crits, [1.0, 1.0], 2, TINY, tmp_path)
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0, 2.0], 2, TINY, tmp_path), "checkpoint_dir")
    other = tiny_models(2, seed=1)
    one_line_error(lambda: recursive_barycenter(*other, [1.0, 1.0], 2, TINY, tmp_path), "checkpoint_dir")
    path = tmp_path / "stage_002.pt"
    path.write_bytes(path.read_bytes()[:100])
    one_line_error(lambda: recursive_barycenter(gens, crits, [1.0, 1.0], 2, TINY, tmp_path), "checkpoint")


def test_average_generators():
    gens, _ = tiny_models(3)
    avg = average_generators(gens)
    for key, v in avg.state_dict().items():
        want = sum(g.state_dict()[key] for g in gens) / 3
        torch.testing.assert_close(v, want)
    one_line_error(lambda: average_generators([]), "models")
    one_line_error(lambda: average_generators([gens[0], build_gan("mlp", (1, 8, 8), 8, width=24)[0]]),
                   "models[1]")


def unequal_eta_shares(seed: int, classifier) -> dict[str, float]:
    """Share of node 0's classes in 1000 samples of the barycenter for η = (1, 4) ("favour0") and
    η = (4, 1) ("favour1"), sources and barycenter trained from ``seed`` (the test's body;
    benchmarks/test_margins.py runs it over seeds)."""
    _, _, _, gens, crits = two_sources(seed=seed)
    share0 = {}
    for label, eta in {"favour0": [1.0, 4.0], "favour1": [4.0, 1.0]}.items():
        torch.manual_seed(seed)
        res = recursive_barycenter(gens, crits, eta, 200, CFG)
        x = res.generator.sample(1000, generator=torch.Generator().manual_seed(0))
        share0[label] = target_share(class_shares(classifier, x)["share"], SOURCE_CLASSES[0])
    return share0


@pytest.mark.stochastic
def test_unequal_eta_barycenter_leans_toward_more_relevant_node(digits_classifier):
    """η = (1, 4) puts more of the barycenter's samples on node 0's classes than η = (4, 1)."""
    share0 = unequal_eta_shares(0, digits_classifier)
    # Measured with benchmarks/test_margins.py --stats coalescence (sources and barycenter trained from seeds
    # 0-4 × ATEN_CPU_CAPABILITY default/avx2/avx512, 1 thread, n = 15): node-0 share 0.753/0.821/0.879
    # (min/median/max) for η = (1, 4) and 0.118/0.205/0.245 for η = (4, 1). Margins 0.15 each; equal
    # weights would give about 0.5 for both.
    assert share0["favour0"] > 0.6 and share0["favour1"] < 0.4, share0
