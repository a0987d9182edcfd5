"""``edgegan simulate --scenario NAME|FILE``: many simulated nodes on a Ray actor pool (or in
process), join/leave schedules, a run folder with metrics, plots and a report."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from edgegan.errors import require

if TYPE_CHECKING:
    from edgegan.sim.report import RunSummary


def register(sub: argparse._SubParsersAction) -> None:
    from edgegan.cli import add_device_option

    p = sub.add_parser("simulate", help="simulate many edge nodes (Ray actor pool) from a scenario")
    p.add_argument("--scenario", default="quickstart", help="built-in name (see `edgegan scenarios`) or YAML path "
                   "[default: quickstart]")
    p.add_argument("--out", default=None, help="run folder [default: runs/<scenario name>]")
    p.add_argument("--backend", choices=["ray", "inproc", "grpc"], default=None, help="override engine.backend")
    p.add_argument("--workers", type=int, default=None, help="pool actors (0: sized by the machine)")
    p.add_argument("--ray-address", default=None,
                   help="join an existing Ray cluster (auto, host:port, ray://host:port)")
    p.add_argument("--ray-connect-timeout", type=float, default=None, metavar="SECONDS",
                   help="give up on --ray-address after this long [default: engine.ray_connect_timeout_s, 30]")
    p.add_argument("--seed", type=int, default=None, help="override the scenario seed")
    p.add_argument("--data-root", default=None, help="folder of torchvision-format files (paper-* scenarios)")
    p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus /metrics here while running "
                   "(0: off)")
    p.add_argument("--no-progress", action="store_true", help="plain log lines instead of the live display")
    add_device_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgegan.sim.run import simulate
    from edgegan.sim.scenario import load_scenario

    sc = load_scenario(args.scenario)
    if args.seed is not None:
        sc.seed = sc.training.tdgan.seed = args.seed
    if args.backend:
        sc.engine.backend = args.backend
    if args.workers is not None:
        require(args.workers >= 0, "workers", f"must be >= 0, got {args.workers}")
        sc.engine.workers = args.workers
    if args.ray_address:
        sc.engine.ray_address = args.ray_address
        sc.engine.backend = "ray"
    if args.ray_connect_timeout is not None:
        require(args.ray_connect_timeout > 0, "ray-connect-timeout",
                f"must be > 0 seconds, got {args.ray_connect_timeout}")
        sc.engine.ray_connect_timeout_s = args.ray_connect_timeout
    if args.data_root:
        sc.data.data_root = args.data_root
    sc.engine.device = args.device
    require(0 <= args.metrics_port < 65536, "metrics-port", f"{args.metrics_port} is not a TCP port")
    out = Path(args.out or f"runs/{sc.name}")
    live = not args.no_progress and sys.stderr.isatty()
    if live:
        summary = _with_live_display(sc, out, args.metrics_port)
    else:
        log = logging.getLogger("edgegan.sim")
        last: dict[str, int] = {}

        def progress(phase: str, done: int, total: int, text: str) -> None:
            step = max(1, total // 10)
            if done == total or done - last.get(phase, -step) >= step:
                last[phase] = done
                log.info("%s %d/%d %s", phase, done, total, text)

        summary = simulate(sc, out, progress, metrics_port=args.metrics_port)
    print(f"\n{sc.name}: {summary.wall_seconds:.1f} s, {summary.engine.backend} with "
          f"{summary.engine.workers} worker(s)")
    for k, v in summary.final_fid.items():
        print(f"  feature-FID {k:16s} {v:8.1f}")
    co = summary.coalescence
    if co is not None and co.stage1.bw2_uvp is not None:
        for k, v in {f"stage1_{co.stage1.aggregator}": co.stage1.bw2_uvp, **co.sources}.items():
            print(f"  BW2-UVP {k:20s} {v:8.2f} %")
    gr = summary.grid
    if gr is not None:
        print(f"  grid {gr.aggregator}: {gr.ms:.1f} ms" + (f", KL {gr.kl_to_reference:.4f} to {gr.compare_to}"
                                                         if gr.kl_to_reference is not None else ""))
    print(f"wrote {out}/report.md, summary.json, metrics.jsonl and "
          + ", ".join(v for v in summary.files.values() if v.endswith(".png")))
    return 0


def _with_live_display(sc, out: Path, metrics_port: int) -> RunSummary:
    """Run under a rich progress display; log records print above it through its console
    (a RichHandler on the display's console) instead of into the progress line."""
    from rich.logging import RichHandler
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from edgegan.sim.run import simulate

    with Progress(TextColumn("[bold]{task.description:14s}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TimeElapsedColumn(), TextColumn("{task.fields[info]}"), transient=False) as bar:
        tasks: dict[str, int] = {}

        def progress(phase: str, done: int, total: int, text: str) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total, info="")
            bar.update(tasks[phase], completed=done, total=total, info=text)

        root = logging.getLogger()
        saved = root.handlers[:]
        handler = RichHandler(console=bar.console, show_path=False, show_time=False, markup=False)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.handlers = [handler]
        try:
            return simulate(sc, out, progress, metrics_port=metrics_port)
        finally:
            root.handlers = saved
