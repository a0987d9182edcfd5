"""Tensors and models ↔ wire messages: dtype, shape and raw little-endian bytes, never pickles.

A model travels as a :class:`~edgegan.runtime.proto.v1.edgegan_pb2.ModelBundle`
(``model_spec`` JSON + one named tensor per state-dict entry) serialized to bytes, cut into
chunks after a header with the total length and SHA-256. Everything decoded from the wire is
checked (dtype, shape, byte length, element budget, finiteness, architecture) and a violation
is a :class:`WireError` naming the field, which servers turn into INVALID_ARGUMENT.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping

import numpy as np
import torch
from torch import nn

from edgegan.errors import EdgeganError, FailureReason, Refused
from edgegan.finite import all_finite
from edgegan.nn import build_from_spec, model_spec
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb

# wire name → (torch dtype, little-endian numpy dtype used for the bytes)
DTYPES: dict[str, tuple[torch.dtype, np.dtype]] = {
    "float32": (torch.float32, np.dtype("<f4")),
    "float64": (torch.float64, np.dtype("<f8")),
    "float16": (torch.float16, np.dtype("<f2")),
    "bfloat16": (torch.bfloat16, np.dtype("<i2")),  # numpy has no bfloat16: move the raw 16 bits
    "int64": (torch.int64, np.dtype("<i8")),
    "int32": (torch.int32, np.dtype("<i4")),
    "int16": (torch.int16, np.dtype("<i2")),
    "int8": (torch.int8, np.dtype("i1")),
    "uint8": (torch.uint8, np.dtype("u1")),
    "bool": (torch.bool, np.dtype("?")),
}
_NAME = {t: name for name, (t, _) in DTYPES.items()}
_NATIVE = {name: nd.newbyteorder("=") for name, (_, nd) in DTYPES.items()}  # the bytes' dtype in this machine's order
_BIG_ENDIAN = sys.byteorder == "big"


class WireError(Refused):
    """A message from the wire that fails validation (shape, dtype, size, finiteness, checksum);
    ``reason`` is its typed :class:`~edgegan.errors.FailureReason` (``malformed`` unless given)."""


def encode_tensor(t: torch.Tensor, out: pb.Tensor | None = None) -> pb.Tensor:
    """Tensor → ``Tensor{dtype, shape, data}`` (C order, little-endian; moved to CPU), written into
    ``out`` when given: a field of the message that carries it, e.g. ``msg.request.fake``. Fill the
    field in place: passing a tensor message to a constructor (``FeedbackRequest(fake=…)``) copies
    it once per level, slowly (1.6 ms per level for a 786 KB CIFAR batch, against 56 µs in place)."""
    name = _NAME.get(t.dtype)
    if name is None:
        raise WireError("tensor.dtype", f"{t.dtype} cannot travel", "use one of " + ", ".join(DTYPES))
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    arr = t.numpy()
    if _BIG_ENDIAN:
        arr = arr.astype(DTYPES[name][1])
    out = pb.Tensor() if out is None else out
    out.dtype = name
    out.shape[:] = list(t.shape)
    out.data = arr.tobytes()
    return out


def decode_tensor(msg: pb.Tensor, field: str = "tensor", *, dtype: str | None = None,
                  shape: tuple[int, ...] | None = None, max_elements: int | None = None,
                  finite: bool = False) -> torch.Tensor:
    """``Tensor`` message → CPU tensor, after checking it.

    ``dtype`` / ``shape`` pin the expected type and shape; ``max_elements`` bounds the size
    before anything is allocated; ``finite`` rejects NaN/Inf.
    """
    name = msg.dtype
    spec = DTYPES.get(name)
    if spec is None:
        raise WireError(f"{field}.dtype", f"unknown dtype {name!r}", "use one of " + ", ".join(DTYPES),
                        reason=FailureReason.DTYPE)
    if dtype is not None and name != dtype:
        raise WireError(f"{field}.dtype", f"got {name}, expected {dtype}", reason=FailureReason.DTYPE)
    dims = tuple(msg.shape)  # ints already: one pass, no generator (this runs on every step's critical path)
    if len(dims) > 8 or (dims and min(dims) < 0):
        raise WireError(f"{field}.shape", f"bad shape {dims}", reason=FailureReason.SHAPE)
    if shape is not None and dims != tuple(shape):
        raise WireError(f"{field}.shape", f"got {dims}, expected {tuple(shape)}", reason=FailureReason.SHAPE)
    n = math.prod(dims)
    if max_elements is not None and n > max_elements:
        raise WireError(f"{field}.shape", f"{n} elements exceed the bound {max_elements}",
                        reason=FailureReason.SHAPE)
    tdtype, ndtype = spec
    data = msg.data  # each access of a bytes field is a copy
    if len(data) != n * ndtype.itemsize:
        raise WireError(f"{field}.data", f"{len(data)} bytes for shape {dims} of {name} "
                        f"(expected {n * ndtype.itemsize})")
    arr = np.frombuffer(data, dtype=ndtype).reshape(dims)
    t = torch.from_numpy(arr.astype(_NATIVE[name]))  # a writable copy in native order
    if tdtype == torch.bfloat16:
        t = t.view(torch.bfloat16)
    # numpy floats are checked on the received array (no torch call); bfloat16 travels as int16
    if finite and not (bool(np.isfinite(arr).all()) if arr.dtype.kind == "f" else all_finite(t)):
        raise WireError(f"{field}.data", "non-finite values", reason=FailureReason.NONFINITE)
    return t


# ---------------------------------------------------------------------------- models


def encode_model(name: str, model: nn.Module, out: pb.Model | None = None) -> pb.Model:
    """A model → ``Model{name, spec_json, tensors}`` (its ``model_spec`` and state dict), written
    into ``out`` when given (see :func:`encode_tensor`)."""
    msg = pb.Model() if out is None else out
    msg.name, msg.spec_json = name, json.dumps(model_spec(model))
    for k, v in model.state_dict().items():
        named = msg.tensors.add(name=k)
        encode_tensor(v, named.tensor)
    return msg


def decode_model(msg: pb.Model, device: torch.device | str = "cpu") -> nn.Module:
    """``Model`` message → a rebuilt model with its weights, checked against its own spec.

    The architecture is first built on the meta device (no memory), so a spec that does not
    match the tensors sent, or asks for more parameters than arrived, is refused cheaply.
    """
    field = f"model[{msg.name}]"
    try:
        spec = json.loads(msg.spec_json)
    except json.JSONDecodeError:
        raise WireError(f"{field}.spec_json", "not valid JSON") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("args"), dict):
        raise WireError(f"{field}.spec_json", "expected {\"cls\": ..., \"args\": {...}}")
    try:
        with torch.device("meta"):
            skeleton = build_from_spec(spec)
    except EdgeganError:
        raise
    except Exception as e:  # a constructor refusing its arguments
        raise WireError(f"{field}.spec_json", f"cannot build {spec.get('cls')!r} ({type(e).__name__}: {e})") from None
    expected = skeleton.state_dict()
    got = {}
    for nt in msg.tensors:
        ref = expected.get(nt.name)
        if ref is None:
            raise WireError(f"{field}.{nt.name}", "is not a parameter of this architecture")
        got[nt.name] = decode_tensor(nt.tensor, f"{field}.{nt.name}", dtype=_NAME[ref.dtype],
                                     shape=tuple(ref.shape), finite=True)
    missing = sorted(set(expected) - set(got))
    if missing:
        raise WireError(field, f"missing tensors {missing[:3]}{'...' if len(missing) > 3 else ''}")
    model = build_from_spec(spec)
    model.load_state_dict(got)
    return model.to(device)


def encode_bundle(models: Mapping[str, nn.Module], scalars: Mapping[str, float] | None = None) -> bytes:
    """Models by role name + scalars → the serialized ``ModelBundle`` bytes."""
    bundle = pb.ModelBundle(scalars=dict(scalars or {}))
    for k, m in models.items():
        encode_model(k, m, bundle.models.add())
    return bundle.SerializeToString()


def decode_bundle(blob: bytes, device: torch.device | str = "cpu") -> tuple[dict[str, nn.Module], dict[str, float]]:
    """Serialized ``ModelBundle`` → (models by role name, scalars); every part checked."""
    bundle = pb.ModelBundle()
    try:
        bundle.ParseFromString(blob)
    except Exception:
        raise WireError("bundle", "not a serialized ModelBundle") from None
    models = {m.name: decode_model(m, device) for m in bundle.models}
    if len(models) != len(bundle.models):
        raise WireError("bundle.models", "duplicate model names")
    scalars = dict(bundle.scalars)
    for k, v in scalars.items():
        if not math.isfinite(v):
            raise WireError(f"bundle.scalars.{k}", f"non-finite value {v}")
    return models, scalars


# ---------------------------------------------------------------------------- chunking


def iter_chunks(node_id: str, name: str, blob: bytes, chunk_bytes: int) -> Iterator[pb.ModelChunk]:
    """A header chunk (length, SHA-256) followed by ``blob`` in pieces of ``chunk_bytes``."""
    if chunk_bytes <= 0:
        raise EdgeganError("chunk_bytes", f"must be > 0, got {chunk_bytes}")
    yield pb.ModelChunk(header=pb.ChunkHeader(node_id=node_id, name=name, total_bytes=len(blob),
                                              sha256=hashlib.sha256(blob).hexdigest()))
    view = memoryview(blob)
    for i in range(0, len(blob), chunk_bytes):
        yield pb.ModelChunk(data=bytes(view[i:i + chunk_bytes]))


@dataclass
class ChunkAssembler:
    """Reassembles a model stream: header first, then data until ``total_bytes``, then the
    SHA-256 must match. ``max_bytes`` bounds what a peer may announce."""

    max_bytes: int
    header: pb.ChunkHeader | None = None

    def __post_init__(self) -> None:
        self._buf = bytearray()

    def add(self, chunk: pb.ModelChunk) -> None:
        kind = chunk.WhichOneof("kind")
        if self.header is None:
            if kind != "header":
                raise WireError("chunk", "the first chunk must be a header")
            h = chunk.header
            if not 0 <= h.total_bytes <= self.max_bytes:
                raise WireError("chunk.header.total_bytes", f"{h.total_bytes} bytes announced, bound {self.max_bytes}",
                                "raise max_model_bytes in the cloud config if this is legitimate")
            if len(h.sha256) != 64:
                raise WireError("chunk.header.sha256", "expected 64 hex digits")
            self.header = h
            return
        if kind != "data":
            raise WireError("chunk", "a second header in one stream")
        if len(self._buf) + len(chunk.data) > self.header.total_bytes:
            raise WireError("chunk.data", f"more than the announced {self.header.total_bytes} bytes")
        self._buf += chunk.data

    def finish(self) -> bytes:
        """The verified blob (length and SHA-256 checked)."""
        if self.header is None:
            raise WireError("chunk", "empty model stream")
        if len(self._buf) != self.header.total_bytes:
            raise WireError("chunk.data", f"stream ended after {len(self._buf)} of {self.header.total_bytes} bytes")
        blob = bytes(self._buf)
        if hashlib.sha256(blob).hexdigest() != self.header.sha256.lower():
            raise WireError("chunk.header.sha256", "checksum mismatch")
        return blob


def assemble(chunks: Iterable[pb.ModelChunk], max_bytes: int) -> tuple[pb.ChunkHeader, bytes]:
    """Synchronous helper: header and verified blob of a complete chunk sequence."""
    asm = ChunkAssembler(max_bytes)
    for c in chunks:
        asm.add(c)
    blob = asm.finish()
    assert asm.header is not None
    return asm.header, blob
