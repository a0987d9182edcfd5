"""Tensor and model wire codec: exact round trips, and every malformed input refused."""

import hashlib

import pytest
import torch

from edgegan.nn import build_gan
from edgegan.runtime.proto.v1 import edgegan_pb2 as pb
from edgegan.runtime.tensor_codec import (
    DTYPES,
    WireError,
    assemble,
    decode_bundle,
    decode_tensor,
    encode_bundle,
    encode_tensor,
    iter_chunks,
)


@pytest.mark.parametrize("name", sorted(DTYPES))
def test_tensor_round_trip_is_exact(name: str) -> None:
    dt = DTYPES[name][0]
    t = (torch.randn(2, 3, 4) * 50).to(dt)
    msg = encode_tensor(t)
    assert msg.dtype == name and list(msg.shape) == [2, 3, 4]
    assert len(msg.data) == t.numel() * t.element_size()
    back = decode_tensor(pb.Tensor.FromString(msg.SerializeToString()))
    assert back.dtype == dt and torch.equal(back, t)


def test_float32_bytes_are_little_endian() -> None:
    assert encode_tensor(torch.tensor([1.0])).data == b"\x00\x00\x80\x3f"


@pytest.mark.parametrize("bad, kwargs, field", [
    (pb.Tensor(dtype="object", shape=[1], data=b"x"), {}, "tensor.dtype"),
    (pb.Tensor(dtype="float32", shape=[2], data=b"\x00" * 4), {}, "tensor.data"),
    (pb.Tensor(dtype="float32", shape=[-1], data=b""), {}, "tensor.shape"),
    (encode_tensor(torch.zeros(3)), {"shape": (4,)}, "tensor.shape"),
    (encode_tensor(torch.zeros(3)), {"dtype": "int64"}, "tensor.dtype"),
    (encode_tensor(torch.zeros(10)), {"max_elements": 9}, "tensor.shape"),
    (encode_tensor(torch.tensor([0.0, float("nan")])), {"finite": True}, "tensor.data"),
    (pb.Tensor(dtype="float32", shape=[1 << 40, 1 << 20], data=b""), {"max_elements": 10}, "tensor.shape"),
])
def test_malformed_tensors_are_refused(bad: pb.Tensor, kwargs: dict, field: str) -> None:
    with pytest.raises(WireError) as e:
        decode_tensor(bad, **kwargs)
    assert str(e.value).startswith(field)


@pytest.mark.parametrize("name", ["float32", "float64", "float16", "bfloat16"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_float_dtype_refuses_non_finite_values_when_asked(name: str, bad: float) -> None:
    t = torch.tensor([[0.5, -2.0], [bad, 3.0]]).to(DTYPES[name][0])
    with pytest.raises(WireError, match="non-finite"):
        decode_tensor(encode_tensor(t), finite=True)
    assert torch.equal(decode_tensor(encode_tensor(t[0]), finite=True), t[0])
    assert torch.isnan(decode_tensor(encode_tensor(t))[1, 0]) == (bad != bad)  # finite=False: as sent


def test_model_bundle_round_trip_through_chunks() -> None:
    G, D = build_gan("mlp", (1, 8, 8), 16, 10, 32)
    blob = encode_bundle({"generator": G, "critic": D}, {"eta": 0.25})
    chunks = list(iter_chunks("edge-0", "upload", blob, 1000))
    assert len(chunks) == 1 + -(-len(blob) // 1000)
    header, got = assemble(chunks, max_bytes=len(blob))
    assert header.sha256 == hashlib.sha256(blob).hexdigest()
    models, scalars = decode_bundle(got)
    assert scalars == {"eta": 0.25}
    for name, m in (("generator", G), ("critic", D)):
        assert type(models[name]) is type(m)
        for a, b in zip(m.state_dict().values(), models[name].state_dict().values()):
            assert torch.equal(a, b)


def test_corrupt_or_oversized_model_streams_are_refused() -> None:
    G, _ = build_gan("mlp", (1, 8, 8), 16, 10, 32)
    blob = encode_bundle({"generator": G})
    chunks = list(iter_chunks("edge-0", "upload", blob, 4096))
    flipped = chunks[:1] + [pb.ModelChunk(data=bytes([chunks[1].data[0] ^ 1]) + chunks[1].data[1:])] + chunks[2:]
    with pytest.raises(WireError, match="checksum"):
        assemble(flipped, len(blob))
    with pytest.raises(WireError, match="bound"):
        assemble(chunks, len(blob) - 1)
    with pytest.raises(WireError, match="ended after"):
        assemble(chunks[:-1], len(blob))
    # a spec asking for a bigger architecture than the tensors sent
    bundle = pb.ModelBundle.FromString(blob)
    bundle.models[0].spec_json = bundle.models[0].spec_json.replace('"hidden": 32', '"hidden": 100000')
    assert '100000' in bundle.models[0].spec_json
    with pytest.raises(WireError):
        decode_bundle(bundle.SerializeToString())
    nan = pb.ModelBundle.FromString(blob)
    t = nan.models[0].tensors[0].tensor
    t.data = b"\x00\x00\xc0\x7f" + t.data[4:]  # a float32 NaN in the first weight
    with pytest.raises(WireError, match="non-finite"):
        decode_bundle(nan.SerializeToString())
