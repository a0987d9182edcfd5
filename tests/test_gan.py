import time

import pytest
import torch

from edgegan.data import ring8_sampler
from edgegan.eval import FeatureFID, exact_w1
from edgegan.gan import MultiCriticWGAN, WGANConfig, gradient_penalty, weighted_generator_loss
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


def test_weighted_generator_loss_is_weighted_sum():
    fake = torch.randn(16, 2)
    c1, c2 = (lambda x: x[:, 0]), (lambda x: 2 * x[:, 1])
    got = weighted_generator_loss([c1, c2], fake, [0.25, 0.75])
    want = -(0.25 * fake[:, 0].mean() + 0.75 * 2 * fake[:, 1].mean())
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def train_ring(seed: int, device: torch.device) -> tuple[float, float, float]:
    """WGAN-GP on the 8-Gaussian ring for 1000 steps on one thread; also the statistic of
    benchmarks/test_margins.py. Returns (W1 start, W1 end, CPU seconds of training)."""
    torch.manual_seed(seed)
    sampler = ring8_sampler(generator=torch.Generator().manual_seed(seed + 1))
    G, D = build_gan("mlp", (2,), latent_dim=2, width=128)
    G, D = G.to(device), D.to(device)
    ref = sampler(512)
    w_start = exact_w1(G.sample(512), ref)
    # toy setting: Adam(0, 0.9) (β1 = 0.5 oscillates on the ring), batch 256
    trainer = MultiCriticWGAN(G, [D], [lambda m: sampler(m).to(device)], None,
                              WGANConfig(lr=1e-4, beta1=0.0, beta2=0.9, batch_size=256))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        t0 = time.process_time()  # CPU seconds: robust to other load on the machine
        trainer.train(1000)
        cpu_seconds = time.process_time() - t0
    finally:
        torch.set_num_threads(threads)
    return w_start, exact_w1(G.sample(512), ref), cpu_seconds


@pytest.mark.stochastic
def test_ring_wgan_gp_halves_exact_w1(device):
    """WGAN-GP on the 8-Gaussian ring: exact W1 (POT, 512 samples) falls below half of its start."""
    w_start, w_end, cpu_seconds = train_ring(0, device)
    # CPU seconds for the 1000 steps, measured here: 34-37 s with native kernels (avx2/avx512),
    # 58-63 s under ATEN_CPU_CAPABILITY=default (which .ci/run uses for its rerun); 60 s failed there
    assert device.type == "cuda" or cpu_seconds < 90, cpu_seconds
    # measured W1_end / W1_start (seeds 0-2 × ATEN_CPU_CAPABILITY default/avx2/avx512, 1 thread; avx2 and
    # avx512 agree to the last digit): min 0.22, median 0.25, max 0.33; an avx2-only machine gave 0.38 for
    # this seed (issue 16), so the kernels are not the only source of spread. The old bound 1/3 sat inside
    # that range; 1/2 leaves 0.12 over the worst value seen, and an untrained G stays near 1
    assert w_end < w_start / 2, (w_start, w_end)


@pytest.mark.stochastic
def test_digits_feature_fid_falls_toward_real_split(digits, digits_classifier):
    torch.manual_seed(0)
    perm = torch.randperm(len(digits))
    fid = FeatureFID(digits_classifier, digits.x[perm[:900]])
    real_split = fid(digits.x[perm[900:]])
    noise = fid(torch.rand(900, 1, 8, 8) * 2 - 1)
    G, D = build_gan("mlp", (1, 8, 8), 32, width=256)
    trainer = MultiCriticWGAN(G, [D], [digits.sampler(64)], None, WGANConfig(lr=2e-4, beta2=0.9))
    trainer.train(150)
    early = fid(G.sample(900))
    trainer.train(350)
    final = fid(G.sample(900))
    assert real_split < 10 < noise / 20
    assert final < early and final < noise / 10, (noise, early, final, real_split)
