"""``edgegan grid-barycenter train|predict|bench``: the amortized grid barycenter (seed 002)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from edgegan.errors import EdgeganError, require


def register(sub: argparse._SubParsersAction) -> None:
    from edgegan.cli import add_device_option

    p = sub.add_parser("grid-barycenter", help="DCNN Wasserstein barycenters of 2-D histograms (seed 002)")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    t = actions.add_parser("train", help="make (or load cached) pair barycenters, then fit the DCNN")
    t.add_argument("--size", type=int, default=64, help="grid side [default: 64]")
    t.add_argument("--shapes", type=int, default=1500, help="distinct CSG shapes")
    t.add_argument("--pairs", type=int, default=4000, help="pair barycenters computed by POT")
    t.add_argument("--reg", type=float, default=0.004, help="entropic regularisation (unit square)")
    t.add_argument("--filled-fraction", type=float, default=0.3, help="share of filled (not contour) shapes")
    t.add_argument("--smooth-fraction", type=float, default=0.0,
                   help="share of shapes drawn on an 8×8/16×16 grid and upsampled")
    t.add_argument("--epochs", type=int, default=15, help="1+2+4+8 = 15 closes an SGDR cycle")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--channels", default="8,16,32,64", help="features per depth, comma-separated")
    t.add_argument("--pool", type=int, default=2, help="input pooling (1 = seed 002 full resolution)")
    t.add_argument("--prior-reg", type=float, default=0.004,
                   help="blurred-Euclidean-mean skip into the logits; 0 = seed 002's network")
    t.add_argument("--init", default=None, help="start from this checkpoint's weights (its architecture wins)")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/grid_dcnn.pt", help="checkpoint path (rewritten every epoch)")
    t.add_argument("--threads", type=int, default=0, help="torch CPU threads [default: torch's choice]")
    add_device_option(t)
    t.set_defaults(func=run_train)

    r = actions.add_parser("predict", help="barycenter of .npy histograms (each H×W)")
    r.add_argument("inputs", nargs="+", help=".npy files, one (H, W) histogram each")
    r.add_argument("--weights", default=None, help="comma-separated λ summing to 1 [default: uniform]")
    r.add_argument("--method", default="grid-dcnn", choices=["grid-dcnn", "grid-sinkhorn", "euclidean"])
    r.add_argument("--model", default=None, help="checkpoint [default: the shipped 64×64 model]")
    r.add_argument("--out", default="barycenter.npy", help="output .npy (and a .png beside it)")
    r.set_defaults(func=run_predict)

    b = actions.add_parser("bench", help="run benchmarks/grid_barycenter.py's comparison")
    b.add_argument("--quick", action="store_true")
    b.add_argument("--model", default=None)
    b.add_argument("--json", default=None, help="write rows here (and the figure beside them as .png)")
    add_device_option(b)
    b.set_defaults(func=run_bench)


def run_train(args: argparse.Namespace) -> int:
    from edgegan.barycenter.grid import (GridBarycenterNet, GridTrainConfig, load_grid_model, save_grid_model,
                                         train_grid_net)
    from edgegan.barycenter.grid_data import GridDataConfig, make_pair_dataset
    from edgegan.device import resolve_device

    try:
        channels = tuple(int(c) for c in args.channels.split(","))
    except ValueError:
        raise EdgeganError("channels", f"'{args.channels}' is not comma-separated integers",
                           "e.g. 8,16,32,64") from None
    data_cfg = GridDataConfig(size=args.size, num_shapes=args.shapes, num_pairs=args.pairs, reg=args.reg,
                              filled_fraction=args.filled_fraction, smooth_fraction=args.smooth_fraction,
                              seed=args.seed)
    train_cfg = GridTrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                                channels=channels, pool=args.pool, prior_reg=args.prior_reg,
                                seed=args.seed)
    data_cfg.validate()
    train_cfg.validate()
    device = resolve_device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    model = load_grid_model(args.init) if args.init else GridBarycenterNet(channels, args.pool, args.prior_reg)
    train_cfg.channels, train_cfg.pool, train_cfg.prior_reg = (tuple(model.model_args["channels"]),
                                                               model.model_args["pool"], model.model_args["prior_reg"])
    require(args.size % model.multiple == 0, "size", f"{args.size} is not a multiple of {model.multiple}",
            "change --size, --pool or --channels")
    t0 = time.time()
    data = make_pair_dataset(data_cfg)
    print(f"data: {len(data['pairs'])} pairs of {args.size}×{args.size} ready in {time.time() - t0:.0f} s")
    configs = {"data_config": vars(data_cfg), "init": args.init,
               "train_config": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(train_cfg).items()}}
    history: list[dict[str, float]] = []

    def epoch_done(row: dict[str, float]) -> None:
        history.append(row)
        print(f"epoch {row['epoch']:3d}  KL {row['loss']:.4f}  lr {row['lr']:.2e}  {row['seconds']:.0f} s", flush=True)
        save_grid_model(args.out, model, **configs, history=history)  # a usable file after every epoch

    train_grid_net(data, train_cfg, model.to(device), callback=epoch_done)
    print(f"wrote {args.out}")
    return 0


def run_predict(args: argparse.Namespace) -> int:
    from edgegan.barycenter.grid import aggregate_grid, euclidean_grid_barycenter

    hists = []
    for f in args.inputs:
        require(Path(f).is_file(), "inputs", f"'{f}' does not exist", "pass .npy files")
        try:
            hists.append(np.load(f))
        except Exception as e:  # numpy raises several types for non-npy files
            raise EdgeganError("inputs", f"'{f}' is not a .npy array ({type(e).__name__})",
                               "save with np.save") from None
    weights = None
    if args.weights:
        try:
            weights = [float(w) for w in args.weights.split(",")]
        except ValueError:
            raise EdgeganError("weights", f"'{args.weights}' is not comma-separated numbers", "e.g. 0.3,0.7") from None
    if args.method == "euclidean":
        bar = euclidean_grid_barycenter(hists, weights)
    else:
        bar = aggregate_grid(hists, weights, method=args.method, model=args.model)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.save(out, bar)
    from edgegan.plotting import plt

    plt.imsave(out.with_suffix(".png"), bar, cmap="magma")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def run_bench(args: argparse.Namespace) -> int:
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "grid_barycenter.py"
    require(path.is_file(), "bench", f"{path} not found", "run from a source checkout")
    spec = importlib.util.spec_from_file_location("grid_barycenter_bench", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    png = str(Path(args.json).with_suffix(".png")) if args.json else ""  # never overwrite committed results
    argv = (["--quick"] if args.quick else []) + (["--model", args.model] if args.model else []) \
        + (["--json", args.json] if args.json else []) + ["--png", png, "--device", args.device]
    return mod.main(argv)
