"""The committed generated gRPC code is exactly what grpcio-tools makes of the proto."""

from pathlib import Path

import pytest

from edgegan.runtime import codegen


def test_generated_code_matches_proto(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools")
    fresh = codegen.generate(tmp_path)
    for path in fresh:
        committed = codegen.REPO / codegen.VIRTUAL / path.name
        assert committed.is_file(), f"{committed} is missing: run python -m edgegan.runtime.codegen"
        assert path.read_bytes() == committed.read_bytes(), (
            f"{committed.name} differs from protos/edgegan/v1/edgegan.proto: "
            "run python -m edgegan.runtime.codegen and commit the result")


def test_every_rpc_and_field_is_commented() -> None:
    text = (codegen.PROTO_DIR / "edgegan.proto").read_text().splitlines()
    for i, line in enumerate(text):
        s = line.strip()
        is_decl = s.startswith("rpc ") or (s.endswith(";") and "=" in s and not s.startswith(("syntax", "package", "//")))
        if is_decl and not text[i - 1].strip().startswith("//"):
            # a field may share the comment of the field right above it (e.g. uploads/expected_uploads)
            assert text[i - 1].strip().endswith(";"), f"line {i + 1} has no comment: {s}"
