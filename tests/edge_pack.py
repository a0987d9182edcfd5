"""Test scaffolding: several TDGAN edge nodes in one process, each exactly what ``edgegan edge``
runs (its own :class:`EdgeNode`, channel, Session stream and retry loop via
:func:`~edgegan.runtime.grpc_edge.run_tdgan_edge`), so a 2-core machine can hold 16 nodes
online without 16 torch imports. Not a product feature: real many-node hosting is the lead's
module; this only gathers the public entry point.

    python tests/edge_pack.py --cloud HOST:PORT --retry-s 60 e0:t0:0,1,2 e1:t1:3,4,5 ...
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys


async def main(argv: list[str]) -> int:
    import torch

    from edgegan.data import load_dataset, partition_by_classes
    from edgegan.runtime.grpc_edge import EdgeConnection, run_tdgan_edge
    from edgegan.runtime.roles import EdgeNode

    p = argparse.ArgumentParser()
    p.add_argument("--cloud", required=True)
    p.add_argument("--retry-s", type=float, default=60.0)
    p.add_argument("nodes", nargs="+", help="NODE_ID:TOKEN:CLASSES (classes comma-separated)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    runs = []
    for i, spec in enumerate(args.nodes):
        node_id, token, classes = spec.split(":")
        torch.manual_seed(i)
        local = partition_by_classes(data, [[int(c) for c in classes.split(",")]], seed=i)[0]
        runs.append(run_tdgan_edge(EdgeNode(node_id, local), EdgeConnection(args.cloud, token, retry_s=args.retry_s)))
    done = await asyncio.gather(*runs)
    print(f"done: {[d.step for d in done]}")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(asyncio.run(main(sys.argv[1:])))
