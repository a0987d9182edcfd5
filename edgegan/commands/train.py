"""``edgegan train``: WGAN-GP on one data set, with feature-FID along the way."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from edgegan.data.registry import DATASETS
from edgegan.nn.factory import ARCHS

# the CLI imports every command to build --help: heavy modules (POT, sklearn) load inside run()


def register(sub: argparse._SubParsersAction) -> None:
    from edgegan.cli import add_device_option

    p = sub.add_parser("train", help="train a WGAN-GP on one data set (a single node)")
    p.add_argument("--dataset", default="digits", help="one of " + ", ".join(DATASETS))
    p.add_argument("--data-root", default=None, help="folder with torchvision-format files")
    p.add_argument("--download", action="store_true", help="download the data set into --data-root")
    p.add_argument("--arch", default="dcgan", choices=ARCHS)
    p.add_argument("--steps", type=int, default=2000, help="generator iterations")
    p.add_argument("--lr", type=float, default=None,
                   help="Adam step size [default: edgegan.gan.WGANConfig's, 2e-4; seed 000 table 1: 1e-4]")
    p.add_argument("--eval-every", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/train", help="folder for generator.pt and metrics.json")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from edgegan.checkpoint import pack_model, save_checkpoint
    from edgegan.data import load_dataset
    from edgegan.device import resolve_device
    from edgegan.eval import FeatureFID, get_classifier
    from edgegan.gan import MultiCriticWGAN, WGANConfig
    from edgegan.nn import build_gan

    torch.manual_seed(args.seed)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, args.data_root, download=args.download)
    cfg = WGANConfig() if args.lr is None else WGANConfig(lr=args.lr)
    cfg.validate()
    G, D = build_gan(args.arch, data.image_shape, cfg.latent_dim)
    G, D = G.to(device), D.to(device)
    fid = FeatureFID(get_classifier(data).to(device), data.x[:2000])
    x = data.x.to(device)
    trainer = MultiCriticWGAN(G, [D], [lambda m: x[torch.randint(0, len(x), (m,), device=device)]], None, cfg)
    rows, t0 = [], time.time()
    for s in range(1, args.steps + 1):
        stats = trainer.step()
        if s % args.eval_every == 0 or s == args.steps:
            G.eval()
            rows.append({"step": s, "feature_fid": fid(G.sample(1000).cpu()), "w1_estimate": stats["w1_estimate"],
                         "seconds": time.time() - t0})
            G.train()
            print(f"step {s:6d}  feature-FID {rows[-1]['feature_fid']:8.2f}  W1 est {stats['w1_estimate']:.3f}")
    out = Path(args.out)
    save_checkpoint(out / "generator.pt", {**pack_model(G), "step": args.steps,
                                           "config": vars(args) | {"device": str(device)}})
    (out / "metrics.json").write_text(json.dumps(rows, indent=2))
    print(f"wrote {out}/generator.pt and {out}/metrics.json")
    return 0
