import pytest
import torch

from edgegan.checkpoint import load_checkpoint, pack_model, save_checkpoint, unpack_model
from edgegan.errors import EdgeganError
from edgegan.nn import build_gan


@pytest.mark.parametrize("arch, shape", [("mlp", (2,)), ("mlp", (1, 8, 8)), ("dcgan", (1, 8, 8)),
                                         ("dcgan", (1, 28, 28)), ("dcgan", (3, 32, 32))])
@pytest.mark.parametrize("num_classes", [0, 10])
def test_shapes(arch, shape, num_classes, device):
    G, D = build_gan(arch, shape, latent_dim=16, num_classes=num_classes, width=16)
    G, D = G.to(device), D.to(device)
    z = torch.randn(5, 16, device=device)
    y = torch.randint(0, 10, (5,), device=device) if num_classes else None
    x = G(z, y) if num_classes else G(z)
    assert x.shape == (5, *shape) and x.device.type == device.type
    s = D(x, y) if num_classes else D(x)
    assert s.shape == (5,)
    if len(shape) == 3:
        assert x.abs().max() <= 1


def test_conditional_generator_uses_label():
    torch.manual_seed(0)
    G, _ = build_gan("dcgan", (1, 8, 8), 16, num_classes=10, width=16)
    G.eval()
    z = torch.randn(4, 16)
    a, b = G(z, torch.zeros(4, dtype=torch.long)), G(z, torch.ones(4, dtype=torch.long))
    assert (a - b).abs().max() > 1e-4


def test_checkpoint_rebuilds_model(tmp_path):
    G, _ = build_gan("dcgan", (1, 28, 28), 16, width=8)
    save_checkpoint(tmp_path / "g.pt", pack_model(G))
    G2 = unpack_model(load_checkpoint(tmp_path / "g.pt"))
    G.eval(), G2.eval()
    z = torch.randn(3, 16)
    torch.testing.assert_close(G(z), G2(z))
    assert not list(tmp_path.glob("*.tmp"))


def test_corrupt_checkpoint_is_one_line(tmp_path):
    p = tmp_path / "bad.pt"
    p.write_bytes(b"not a checkpoint")
    with pytest.raises(EdgeganError, match="^checkpoint: .*corrupt"):
        load_checkpoint(p)


def test_unknown_arch():
    with pytest.raises(EdgeganError, match="^arch:"):
        build_gan("resnet", (1, 8, 8))


@pytest.mark.parametrize("num_classes", [0, 10])
def test_stacked_critics_backward_is_autograd_of_each_critic(num_classes):
    """K MLP critics at once (:meth:`MLPCritic.stacked`, hand-written :meth:`stacked_backward`):
    scores, parameter and input gradients of Σ ds ⊙ s equal autograd through each critic alone
    (in float64, so that only the maths is compared, not float32 summation order)."""
    from torch.func import functional_call

    torch.manual_seed(0)
    K, B = 3, 5
    D = build_gan("mlp", (1, 8, 8), 8, num_classes, 16)[1].double()
    Ws = [{n: torch.randn_like(p) for n, p in D.named_parameters()} for _ in range(K)]
    W = {n: torch.stack([w[n] for w in Ws]) for n in Ws[0]}
    x, ds = torch.randn(K, B, 1, 8, 8, dtype=torch.float64), torch.randn(K, B, dtype=torch.float64)
    y = torch.randint(max(num_classes, 1), (K, B))
    s, tape = D.stacked(W, x, y)
    grads, dx = D.stacked_backward(W, tape, ds, weights=True, inputs=True)
    assert list(W) == [n for n, _ in D.named_parameters()] and len(grads) == len(W)
    for k in range(K):
        w = {n: t.clone().requires_grad_(True) for n, t in Ws[k].items()}
        xk = x[k].clone().requires_grad_(True)
        sk = functional_call(D, w, (xk, y[k] if num_classes else None))
        torch.testing.assert_close(s[k], sk.detach(), rtol=1e-12, atol=1e-12)
        expected = torch.autograd.grad((sk * ds[k]).sum(), [*w.values(), xk])
        for name, got, e in zip(W, [g[k] for g in grads] + [dx[k]], expected):
            torch.testing.assert_close(got, e, rtol=1e-12, atol=1e-12, msg=name)
