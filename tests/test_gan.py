import time

import pytest
import torch

from edgegan.data import ring8_sampler
from edgegan.eval import FeatureFID, exact_w1
from edgegan.gan import MultiCriticWGAN, WGANConfig, gradient_penalty, weighted_generator_loss
from edgegan.gan.train import WeightAverage
from edgegan.nn import build_gan


def test_gradient_penalty_zero_for_unit_slope():
    lin = torch.nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.6, 0.8, 0.0]]))  # ‖∇‖ = 1 everywhere
    gp = gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(8, 3), torch.randn(8, 3), 10.0)
    assert float(gp) == pytest.approx(0.0, abs=1e-10)
    with torch.no_grad():
        lin.weight.mul_(2.0)  # ‖∇‖ = 2 → 10·(2−1)² = 10
    gp = gradient_penalty(lambda x: lin(x).squeeze(1), torch.randn(8, 3), torch.randn(8, 3), 10.0)
    assert float(gp) == pytest.approx(10.0, rel=1e-6)


def test_weight_average_ramps_its_decay_and_is_what_the_trainer_hands_on():
    torch.manual_seed(0)
    lin = torch.nn.Linear(2, 1)
    avg = WeightAverage(lin, 0.5)
    with torch.no_grad():
        w0 = lin.weight.clone()
        lin.weight.add_(1.0)
    avg.update(lin)  # d_0 = min(0.5, 1/10): 0.1·w0 + 0.9·w1
    torch.testing.assert_close(avg.model.weight, 0.1 * w0 + 0.9 * (w0 + 1))
    for _ in range(20):
        avg.update(lin)  # d_t reaches 0.5 at t = 8; the average converges to the constant weights
    torch.testing.assert_close(avg.model.weight, w0 + 1, atol=1e-5, rtol=0)
    G, D = build_gan("mlp", (2,), 2, width=8)
    on = MultiCriticWGAN(G, [D], [lambda m: torch.randn(m, 2)], None, WGANConfig(critic_steps=1, batch_size=8))
    off = MultiCriticWGAN(G, [D], [lambda m: torch.randn(m, 2)], None, WGANConfig(ema_decay=0.0))
    on.train(3)
    assert off.generator is G and on.generator is not G and on.average.updates == 3
    assert all(p.requires_grad for p in on.generator.parameters())  # a later stage can train it


def test_weighted_generator_loss_is_weighted_sum():
    fake = torch.randn(16, 2)
    c1, c2 = (lambda x: x[:, 0]), (lambda x: 2 * x[:, 1])
    got = weighted_generator_loss([c1, c2], fake, [0.25, 0.75])
    want = -(0.25 * fake[:, 0].mean() + 0.75 * 2 * fake[:, 1].mean())
    assert float(got) == pytest.approx(float(want), rel=1e-6)


RING_CHECKPOINTS = (600, 700, 800, 900, 1000)


def train_ring(seed: int, device: torch.device,
               checkpoints: tuple[int, ...] = RING_CHECKPOINTS) -> tuple[float, list[float], float]:
    """WGAN-GP on the 8-Gaussian ring on one thread, W1 measured after each of ``checkpoints`` steps;
    also the statistic of benchmarks/test_margins.py. Returns (W1 start, [W1 at each checkpoint],
    CPU seconds of training)."""
    torch.manual_seed(seed)
    sampler = ring8_sampler(generator=torch.Generator().manual_seed(seed + 1))
    G, D = build_gan("mlp", (2,), latent_dim=2, width=128)
    G, D = G.to(device), D.to(device)
    ref = sampler(512)
    w_start = exact_w1(G.sample(512), ref)
    z = torch.randn(512, 2, generator=torch.Generator().manual_seed(seed + 2)).to(device)  # the training RNG is untouched
    # toy setting: Adam(0, 0.9) (β1 = 0.5 oscillates on the ring), batch 256
    trainer = MultiCriticWGAN(G, [D], [lambda m: sampler(m).to(device)], None,
                              WGANConfig(lr=1e-4, beta1=0.0, beta2=0.9, batch_size=256))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    w, cpu_seconds = [], 0.0
    try:
        for c in checkpoints:
            t0 = time.process_time()  # CPU seconds: robust to other load on the machine
            trainer.train(c - trainer.steps_done)
            cpu_seconds += time.process_time() - t0
            with torch.no_grad():
                w.append(exact_w1(G(z), ref))
    finally:
        torch.set_num_threads(threads)
    return w_start, w, cpu_seconds


@pytest.mark.stochastic
def test_ring_wgan_gp_cuts_exact_w1(device):
    """WGAN-GP on the 8-Gaussian ring: exact W1 (POT, 512 samples) at some checkpoint in 600-1000 steps falls
    below 0.7 of its start (the trajectory oscillates, so one final checkpoint is not a robust statistic)."""
    w_start, w, cpu_seconds = train_ring(0, device)
    # CPU seconds for the 1000 steps, measured here: 40-49 s with native kernels (avx512),
    # 63-78 s under ATEN_CPU_CAPABILITY=default (which .ci/run uses for its rerun), on a loaded machine
    assert device.type == "cuda" or cpu_seconds < 120, cpu_seconds
    # measured min over the checkpoints of W1 / W1_start (benchmarks/test_margins.py --stats ring; seeds 0-7
    # avx512 + 0-5 default, 1 thread, n = 14): min 0.24, median 0.27, max 0.54 (seed 4, under both). The
    # final checkpoint alone exceeded 1/2 in 3 of 14 runs (max 0.995: seed 7 avx512 collapses after 0.47 at
    # 800 steps), the median of the last three in 3 of 14 (max 0.72). Bound 0.7: 0.16 over the worst run.
    # An untrained G stays near 1: 0.99 after 50 steps, 0.88 after 100 (seed 0, avx512)
    assert min(w) < 0.7 * w_start, (w_start, w)


def digits_fid_run(seed: int, digits, classifier) -> dict[str, float]:
    """WGAN-GP on digits, feature-FID after 150 and 500 steps against a 900-image real half, with the other
    half and uniform noise as references; also the statistic of benchmarks/test_margins.py."""
    torch.manual_seed(seed)
    perm = torch.randperm(len(digits))
    fid = FeatureFID(classifier, digits.x[perm[:900]])
    real_split = fid(digits.x[perm[900:]])
    noise = fid(torch.rand(900, 1, 8, 8) * 2 - 1)
    G, D = build_gan("mlp", (1, 8, 8), 32, width=256)
    trainer = MultiCriticWGAN(G, [D], [digits.sampler(64)], None, WGANConfig(lr=2e-4, beta2=0.9))
    trainer.train(150)
    early = fid(G.sample(900))
    trainer.train(350)
    return {"real_split": real_split, "noise": noise, "early": early, "final": fid(G.sample(900))}


@pytest.mark.stochastic
def test_digits_feature_fid_falls_toward_real_split(digits, digits_classifier):
    r = digits_fid_run(0, digits, digits_classifier)
    real_split, noise, early, final = r["real_split"], r["noise"], r["early"], r["final"]
    # measured (benchmarks/test_margins.py --stats digits_fid; seeds 0-4 × ATEN_CPU_CAPABILITY default/avx2/
    # avx512, 1 thread, n = 15), min/median/max: real half-split FID 4.5/5.9/6.8 (bound 10, 1.5× margin);
    # noise FID / 20 35/37/37 (bound > 10, 3.5×); final / early FID 0.12/0.18/0.22 (bound < 1, 4.5×);
    # final / noise FID 0.049/0.053/0.064 (bound 1/10, 1.6×)
    assert real_split < 10 < noise / 20
    assert final < early and final < noise / 10, (noise, early, final, real_split)
