"""Generate the Python gRPC code from ``protos/edgegan/v1/edgegan.proto`` with grpcio-tools.

The proto is mapped to the virtual path ``edgegan/runtime/proto/v1/edgegan.proto`` so the
generated ``edgegan_pb2_grpc.py`` imports ``edgegan.runtime.proto.v1.edgegan_pb2`` and works
inside the package. Output is committed; ``tests/test_proto_drift.py`` regenerates it into a
temporary folder and fails on any difference. Run: ``python -m edgegan.runtime.codegen``.
"""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTO_DIR = REPO / "protos" / "edgegan" / "v1"
VIRTUAL = "edgegan/runtime/proto/v1"
GENERATED = ("edgegan_pb2.py", "edgegan_pb2.pyi", "edgegan_pb2_grpc.py")


def generate(out_root: Path = REPO) -> list[Path]:
    """Run protoc; write the generated files under ``out_root/edgegan/runtime/proto/v1``."""
    from grpc_tools import protoc  # grpcio-tools: a dev/test dependency, not a runtime one

    out_root = Path(out_root)
    args = ["grpc_tools.protoc", f"-I{VIRTUAL}={PROTO_DIR}", f"--python_out={out_root}",
            f"--pyi_out={out_root}", f"--grpc_python_out={out_root}", f"{VIRTUAL}/edgegan.proto"]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed on " + " ".join(args))
    return [out_root / VIRTUAL / name for name in GENERATED]


if __name__ == "__main__":
    for p in generate():
        print(p.relative_to(REPO))
    sys.exit(0)
