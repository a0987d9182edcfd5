"""WGAN-GP sanity: does the foundation learn?

- 8-Gaussian ring: exact W1 (POT, 512 samples) of G's samples to the data, before/after.
- digits: feature-FID of noise, of a real/real split, and of a trained generator (its weight
  average, the default ``WGANConfig``, and the raw G).

    python benchmarks/wgan_sanity.py [--quick] --json benchmarks/results/wgan_sanity.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import machine, parser, print_table, write_json  # noqa: E402

from edgegan.data import load_digits, ring8_sampler  # noqa: E402
from edgegan.device import resolve_device  # noqa: E402
from edgegan.eval import FeatureFID, exact_w1, get_classifier  # noqa: E402
from edgegan.gan import MultiCriticWGAN, WGANConfig  # noqa: E402
from edgegan.nn import build_gan  # noqa: E402


def main() -> None:
    args = parser(__doc__.splitlines()[0], "benchmarks/results/wgan_sanity.json").parse_args()
    dev = resolve_device(args.device)
    torch.manual_seed(args.seed)
    ring_steps, digit_steps = (1000, 500) if args.quick else (2000, 2000)

    sampler = ring8_sampler(generator=torch.Generator().manual_seed(args.seed + 1))
    G, D = build_gan("mlp", (2,), latent_dim=2, width=128)
    G, D = G.to(dev), D.to(dev)
    ref = sampler(512)
    w1_initial = exact_w1(G.sample(512), ref)
    tr = MultiCriticWGAN(G, [D], [lambda m: sampler(m).to(dev)], None,
                         WGANConfig(lr=1e-4, beta1=0.0, beta2=0.9, batch_size=256))
    t0 = time.time()
    tr.train(ring_steps)
    ring_sps = ring_steps / (time.time() - t0)
    w1_final = exact_w1(G.sample(512), ref)

    data = load_digits()
    clf = get_classifier(data)
    perm = torch.randperm(len(data))
    fid = FeatureFID(clf, data.x[perm[:900]])
    fid_real = fid(data.x[perm[900:]])
    fid_noise = fid(torch.rand(900, 1, 8, 8) * 2 - 1)
    G, D = build_gan("mlp", (1, 8, 8), 32, width=256)
    G, D = G.to(dev), D.to(dev)
    x = data.x.to(dev)
    tr = MultiCriticWGAN(G, [D], [lambda m: x[torch.randint(0, len(x), (m,), device=dev)]], None,
                         WGANConfig())
    curve = []
    t0 = time.time()
    for _ in range(digit_steps // 100):
        tr.train(100)
        G_avg = tr.generator.eval()  # the weight average (WGANConfig.ema_decay), G itself when off
        curve.append({"step": tr.steps_done, "feature_fid": fid(G_avg.sample(900).cpu()),
                      "feature_fid_raw": fid(G.eval().sample(900).cpu())})
        G.train()
    digits_sps = digit_steps / (time.time() - t0)

    result = {
        "w1_ring_initial": w1_initial, "w1_ring_final": w1_final, "ring_steps": ring_steps,
        "digits_fid_noise": fid_noise, "digits_fid_real_split": fid_real,
        "digits_fid_final": curve[-1]["feature_fid"], "digits_steps": digit_steps,
        "digits_fid_curve": curve, "steps_per_second": digits_sps, "ring_steps_per_second": ring_sps,
        "classifier_val_accuracy": clf.val_accuracy, "device": str(dev), "quick": args.quick,
        "machine": machine(),
    }
    print_table([{k: v for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}],
                "WGAN-GP sanity")
    write_json(args.json, result)


if __name__ == "__main__":
    main()
