"""``edgegan scenarios``: list the built-in simulation scenarios."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scenarios", help="list the built-in simulation scenarios")
    p.add_argument("--show", default=None, metavar="NAME", help="print one scenario's YAML")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from edgegan.errors import require
    from edgegan.sim.scenario import builtin_scenarios, load_scenario

    known = builtin_scenarios()
    if args.show:
        require(args.show in known, "show", f"unknown scenario {args.show!r}", "choose from " + ", ".join(known))
        print(known[args.show].read_text(), end="")
        return 0
    width = max(len(n) for n in known)
    for name, path in known.items():
        sc = load_scenario(str(path))
        print(f"{name:{width}s}  {', '.join(sc.pipelines):18s} {sc.description}")
    print("\nrun one with: edgegan simulate --scenario NAME --out DIR")
    return 0
