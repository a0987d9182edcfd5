"""Amortized Wasserstein barycenters of 2-D histograms on a regular grid (seed 002).

A DCNN with ``n`` weight-shared contractive paths φ (one per input measure μ_i) and one
expansive path ψ predicts the barycenter ``b ≈ argmin_b Σ_i λ_i W(b, μ_i)`` in one forward
pass. At every depth j the contractive features are combined by the barycentric weights,
``F'_j = Σ_i λ_i F^i_j`` (seed 002 §3.1), and concatenated to the expansive path; a softmax
over the grid gives a probability vector. The net is trained on pairs (n = 2) with
``KL(b* ‖ b̂)`` against POT's entropic convolutional barycenter ``b*`` and SGDR, then used for
any ``n`` by duplicating φ with no retraining (seed 002 §3.2).

Also here: :func:`sinkhorn_grid_barycenter` (POT, the reference), :func:`euclidean_grid_barycenter`
(the linear baseline ``Σ λ_i μ_i``), :func:`aggregate_grid` (the cloud aggregator).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from edgegan.checkpoint import load_checkpoint, save_checkpoint
from edgegan.errors import EdgeganError, require

log = logging.getLogger(__name__)

DEFAULT_REG = 0.004  # entropic regularisation on the unit square (POT's grid convention)
DEFAULT_MODEL = "grid_dcnn_64.pt"
AGGREGATORS = ("grid-dcnn", "grid-sinkhorn")


# ----------------------------------------------------------------------------- input checks
def check_histograms(histograms: Any, weights: Any | None = None,
                     field_name: str = "histograms") -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``n`` grid histograms and barycentric weights; return them as float64 tensors
    ``(n, H, W)`` normalised to mass 1 and ``(n,)``. Bad input is a one-line EdgeganError."""
    if isinstance(histograms, (list, tuple)):
        require(len(histograms) > 0, field_name, "no histograms given", "pass at least one (H, W) array")
        shapes = {tuple(np.shape(h)) for h in histograms}
        require(len(shapes) == 1, field_name, f"grid sizes differ: {sorted(shapes)}",
                "resample every histogram to the same H×W grid")
        histograms = np.stack([np.asarray(torch.as_tensor(h).detach().cpu()) for h in histograms])
    h = torch.as_tensor(np.asarray(histograms.detach().cpu() if torch.is_tensor(histograms) else histograms),
                        dtype=torch.float64)
    require(h.dim() == 3 and h.shape[0] >= 1, field_name,
            f"shape {tuple(h.shape)} is not (n, H, W)", "stack n histograms of one grid")
    require(bool(torch.isfinite(h).all()), field_name, "contains NaN or inf", "pass finite masses")
    require(bool((h >= 0).all()), field_name, f"negative mass (min {float(h.min()):.3g})",
            "histograms must be non-negative")
    mass = h.sum(dim=(1, 2))
    empty = (mass <= 0).nonzero().flatten().tolist()
    require(not empty, field_name, f"histogram(s) {empty} are all zero", "every input needs positive mass")
    n = h.shape[0]
    if weights is None:
        w = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        w = torch.as_tensor(np.asarray(weights.detach().cpu() if torch.is_tensor(weights) else weights,
                                       dtype=np.float64)).flatten()
        require(w.numel() == n, "weights", f"{w.numel()} weights for {n} histograms", "give one weight per input")
        require(bool(torch.isfinite(w).all()) and bool((w >= 0).all()), "weights",
                "must be finite and non-negative", "use barycentric weights λ_i >= 0")
        require(abs(float(w.sum()) - 1.0) <= 1e-6, "weights", f"sum to {float(w.sum()):.6g}, not 1",
                "normalise them (λ / Σλ)")
    return h / mass[:, None, None], w


# ----------------------------------------------------------------------------- baselines
def sinkhorn_grid_barycenter(histograms: Any, weights: Any | None = None, reg: float = DEFAULT_REG,
                             stop_thr: float = 1e-4, max_iter: int = 10000) -> np.ndarray:
    """Entropic Wasserstein barycenter on the grid by POT's convolutional Sinkhorn
    (Solomon et al. 2015; ``ot.bregman.convolutional_barycenter2d``), renormalised to mass 1.

    ``histograms``: (n, H, W); ``weights``: (n,) on the simplex; ``reg`` on the unit square.
    """
    import ot

    h, w = check_histograms(histograms, weights)
    require(reg > 0, "reg", f"{reg} <= 0", "use e.g. 0.004")
    bar = ot.bregman.convolutional_barycenter2d(h.numpy(), reg, w.numpy(), stopThr=stop_thr,
                                                numItermax=max_iter, warn=False)
    return bar / bar.sum()


def euclidean_grid_barycenter(histograms: Any, weights: Any | None = None) -> np.ndarray:
    """The linear (Euclidean-mean) baseline ``Σ_i λ_i μ_i``: blends the inputs, moves no mass."""
    h, w = check_histograms(histograms, weights)
    return (w[:, None, None] * h).sum(0).numpy()


# ----------------------------------------------------------------------------- the network
def gibbs_blur(h: torch.Tensor, reg: float) -> torch.Tensor:
    """``K h Kᵀ`` on the last two axes with POT's grid kernel ``K_xy = exp(−(x−y)²/reg)``,
    ``x, y ∈ linspace(0, 1, ·)``, renormalised to the input's mass."""
    def kernel(m: int) -> torch.Tensor:
        t = torch.linspace(0, 1, m, dtype=h.dtype, device=h.device)
        return torch.exp(-((t[:, None] - t[None]) ** 2) / reg)

    out = kernel(h.shape[-2]) @ h @ kernel(h.shape[-1]).T
    return out * (h.sum((-2, -1), keepdim=True) / out.sum((-2, -1), keepdim=True).clamp_min(1e-30))


def _block(c_in: int, c_out: int) -> nn.Sequential:
    """Two 3×3 convolutions (stride 1, padding 1), each with InstanceNorm before its ReLU."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.InstanceNorm2d(c_out, affine=True), nn.ReLU(),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.InstanceNorm2d(c_out, affine=True), nn.ReLU())


class GridBarycenterNet(nn.Module):
    """Seed 002 fig. 1: contractive path φ (shared by all inputs; blocks + 2×2 average pooling),
    λ-weighted features ``F'_j = Σ_i λ_i φ_j(μ_i)`` at every depth j, expansive path ψ
    (nearest upsampling, concatenation with ``F'_j``, blocks), softmax over the grid.

    ``pool > 1`` runs both paths on the ``pool×pool`` average-pooled grid (mass kept) and
    upsamples the logits bilinearly before the softmax: ~``pool²`` fewer operations; the
    entropic reference is smooth at that scale (blur σ = √(reg/2) ≈ 2.9 cells at 64×64,
    reg 0.004). ``pool = 1`` is seed 002's full-resolution network.

    ``prior_reg > 0`` adds ``log(K (Σ_i λ_i μ_i) K)`` to the logits, the Euclidean mean blurred
    by POT's Gibbs kernel ``K = exp(−|x−y|²/prior_reg)``: the net then learns only how far the
    Wasserstein barycenter moves mass away from that blend (not in seed 002, whose output is
    the softmax of ψ alone; ``prior_reg = 0`` is the paper's network).
    Fully convolutional: any ``H, W`` divisible by ``pool · 2**(len(channels)-1)``.
    """

    def __init__(self, channels: Sequence[int] = (8, 16, 32, 64), pool: int = 1,
                 prior_reg: float = 0.0) -> None:
        super().__init__()
        require(pool >= 1, "model.pool", f"{pool} < 1", "use 1 (full resolution) or 2")
        require(prior_reg >= 0, "model.prior_reg", f"{prior_reg} < 0", "use 0 (off) or e.g. 0.004")
        self.model_args = {"channels": [int(c) for c in channels], "pool": int(pool), "prior_reg": float(prior_reg)}
        ch = self.model_args["channels"]
        self.contract = nn.ModuleList(_block(c_in, c_out) for c_in, c_out in zip([1] + ch[:-1], ch))
        self.expand = nn.ModuleList(_block(ch[j + 1] + ch[j], ch[j]) for j in range(len(ch) - 1))
        self.head = nn.Conv2d(ch[0], 1, 1)

    @property
    def multiple(self) -> int:
        """Grid sides must be multiples of this."""
        return self.model_args["pool"] * 2 ** (len(self.contract) - 1)

    def forward(self, mu: torch.Tensor, lam: torch.Tensor) -> torch.Tensor:
        """``mu``: (B, n, H, W) probability vectors, ``lam``: (B, n) → log-probabilities (B, H, W)."""
        B, n, H, W = mu.shape
        x = (mu * (H * W)).reshape(B * n, 1, H, W)  # mean cell value 1, whatever the grid
        pool = self.model_args["pool"]
        if pool > 1:
            x = F.avg_pool2d(x, pool)
        lam = lam.to(mu.dtype)
        skips = []
        for j, block in enumerate(self.contract):
            if j:
                x = F.avg_pool2d(x, 2)
            x = block(x)  # (B·n, c_j, H/2^j, W/2^j)
            skips.append(torch.einsum("bn,bnchw->bchw", lam, x.reshape(B, n, *x.shape[1:])))
        y = skips[-1]
        for j in reversed(range(len(self.expand))):
            y = F.interpolate(y, scale_factor=2, mode="nearest")
            y = self.expand[j](torch.cat([y, skips[j]], dim=1))
        logits = self.head(y)
        if pool > 1:
            logits = F.interpolate(logits, size=(H, W), mode="bilinear", align_corners=False)
        logits = logits.reshape(B, H, W)
        if self.model_args["prior_reg"] > 0:
            logits = logits + torch.log(gibbs_blur(torch.einsum("bn,bnhw->bhw", lam, mu),
                                                   self.model_args["prior_reg"]) + 1e-12)
        return F.log_softmax(logits.reshape(B, H * W), dim=1).reshape(B, H, W)


def kl_loss(log_pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``KL(target ‖ pred) = Σ t (log t − log p)`` (seed 002 §3.2)."""
    t = target.flatten(1)
    return (torch.xlogy(t, t) - t * log_pred.flatten(1)).sum(1).mean()


# ----------------------------------------------------------------------------- training
@dataclass
class GridTrainConfig:
    """Training knobs; SGDR restarts after 1, 2, 4, 8, 16 epochs (T_mult 2) as seed 002 fig. 10."""

    epochs: int = field(default=15, metadata={"unit": "epochs; 1+2+4+8(+16) ends a cosine cycle"})
    batch_size: int = field(default=32, metadata={"unit": "pairs per step"})
    lr: float = field(default=2e-3, metadata={"unit": "Adam peak learning rate"})
    lr_min: float = field(default=1e-6, metadata={"unit": "SGDR floor"})
    first_cycle: float = field(default=1.0, metadata={"unit": "epochs in the first SGDR cycle"})
    channels: tuple[int, ...] = field(default=(8, 16, 32, 64), metadata={"unit": "features per depth"})
    pool: int = field(default=2, metadata={"unit": "input pooling; 1 = seed 002 full resolution"})
    prior_reg: float = field(default=0.004, metadata={"unit": "blurred-mean skip; 0 = seed 002 (off)"})
    augment: bool = field(default=True, metadata={"unit": "random grid symmetries + input swaps"})
    seed: int = field(default=0, metadata={"unit": "rng seed"})

    def validate(self, prefix: str = "train") -> None:
        require(self.epochs >= 1, f"{prefix}.epochs", f"{self.epochs} < 1", "use >= 1")
        require(self.batch_size >= 1, f"{prefix}.batch_size", f"{self.batch_size} < 1", "use >= 1")
        require(self.lr > 0 and 0 <= self.lr_min < self.lr, f"{prefix}.lr",
                f"need 0 <= lr_min < lr, got {self.lr_min}, {self.lr}", "e.g. lr 2e-3, lr_min 1e-6")
        require(len(self.channels) >= 2 and all(c >= 1 for c in self.channels), f"{prefix}.channels",
                f"{self.channels} needs >= 2 positive widths", "e.g. 8,16,32,64")


def _symmetry(x: torch.Tensor, k: int) -> torch.Tensor:
    """One of the 8 symmetries of the square grid on the last two axes; the entropic
    barycenter commutes with all of them, so they are free training data."""
    x = torch.rot90(x, k % 4, dims=(-2, -1))
    return x.flip(-1) if k >= 4 else x


def train_grid_net(data: dict[str, torch.Tensor], cfg: GridTrainConfig, model: GridBarycenterNet | None = None,
                   callback: Callable[[dict[str, float]], None] | None = None,
                   ) -> tuple[GridBarycenterNet, list[dict[str, float]]]:
    """Fit the DCNN on pair barycenters (``make_pair_dataset`` output) with KL and Adam under
    SGDR (cosine annealing with warm restarts, seed 002 app. A). Returns the model (eval mode)
    and one row per epoch ``{"epoch", "loss", "lr", "seconds"}``. Runs on ``model``'s device."""
    cfg.validate()
    torch.manual_seed(cfg.seed)
    model = model if model is not None else GridBarycenterNet(cfg.channels, cfg.pool, cfg.prior_reg)
    dev = next(model.parameters()).device
    shapes, pairs = data["shapes"].to(dev), data["pairs"].to(dev)
    weights, bars = data["weights"].to(dev), data["barycenters"].to(dev)
    P = len(pairs)
    steps_per_epoch = max(1, math.ceil(P / cfg.batch_size))
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
        opt, T_0=max(1, round(cfg.first_cycle * steps_per_epoch)), T_mult=2, eta_min=cfg.lr_min)
    g = torch.Generator().manual_seed(cfg.seed)
    rows, t0 = [], time.time()
    model.train()
    for epoch in range(1, cfg.epochs + 1):
        total, count = 0.0, 0
        for idx in torch.randperm(P, generator=g).split(cfg.batch_size):
            idx = idx.to(dev)
            mu, lam, target = shapes[pairs[idx]], weights[idx], bars[idx]  # (b,2,H,W), (b,2), (b,H,W)
            if cfg.augment:
                k = int(torch.randint(8, (1,), generator=g))
                mu, target = _symmetry(mu, k), _symmetry(target, k)
                if int(torch.randint(2, (1,), generator=g)):
                    mu, lam = mu.flip(1), lam.flip(1)
            loss = kl_loss(model(mu, lam), target)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total, count = total + float(loss.detach()) * len(idx), count + len(idx)
        rows.append({"epoch": epoch, "loss": total / count, "lr": opt.param_groups[0]["lr"],
                     "seconds": time.time() - t0})
        if callback:
            callback(rows[-1])
    return model.eval(), rows


# ----------------------------------------------------------------------------- checkpoints
def default_model_path() -> Path:
    """The shipped 64×64 model inside the package."""
    return Path(str(resources.files("edgegan.barycenter") / "assets" / DEFAULT_MODEL))


def save_grid_model(path: str | Path, model: GridBarycenterNet, **extra: Any) -> None:
    """Checkpoint with ``model_args`` beside the state dict (plus e.g. data/train configs)."""
    save_checkpoint(path, {"model_args": model.model_args,
                           "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                           **extra})


_LOADED: dict[str, GridBarycenterNet] = {}


def load_grid_model(path: str | Path | None = None) -> GridBarycenterNet:
    """Rebuild a :class:`GridBarycenterNet` from a checkpoint (default: the shipped model, cached)."""
    path = Path(path) if path is not None else default_model_path()
    key = str(path.resolve())
    if key not in _LOADED:
        ck = load_checkpoint(path)
        require("model_args" in ck and "state_dict" in ck, "model", f"'{path}' has no model_args/state_dict",
                "pass a file written by `edgegan grid-barycenter train`")
        model = GridBarycenterNet(**ck["model_args"])
        model.load_state_dict(ck["state_dict"])
        _LOADED[key] = model.eval()
    return _LOADED[key]


# ----------------------------------------------------------------------------- prediction
def predict_grid_barycenters(model: GridBarycenterNet, histograms: torch.Tensor,
                             weights: torch.Tensor) -> torch.Tensor:
    """Batched prediction without input checks: (B, n, H, W), (B, n) → (B, H, W) probabilities,
    on the model's device and dtype (float32)."""
    p = next(model.parameters())
    with torch.no_grad():
        return model(histograms.to(p), weights.to(p)).exp()


def grid_barycenter(histograms: Any, weights: Any | None = None,
                    model: GridBarycenterNet | str | Path | None = None) -> np.ndarray:
    """Barycenter of ``n`` grid histograms (n, H, W) with weights (n,) predicted by the DCNN
    in one forward pass (seed 002); ``model`` None uses the shipped 64×64 model. Returns (H, W)
    float64 summing to 1."""
    h, w = check_histograms(histograms, weights)
    net = model if isinstance(model, GridBarycenterNet) else load_grid_model(model)
    m = net.multiple
    require(h.shape[1] % m == 0 and h.shape[2] % m == 0, "histograms",
            f"grid {tuple(h.shape[1:])} is not divisible by {m}", f"resample to a multiple of {m}")
    out = predict_grid_barycenters(net, h[None], w[None])[0].double().cpu()
    return (out / out.sum()).numpy()


def aggregate_grid(histograms: Any, weights: Any | None = None, method: str = "grid-dcnn",
                   model: GridBarycenterNet | str | Path | None = None, reg: float = DEFAULT_REG) -> np.ndarray:
    """Cloud aggregator for grid-valued node summaries: ``grid-dcnn`` (amortized, seed 002) or
    ``grid-sinkhorn`` (POT's entropic convolutional barycenter); underscores are accepted."""
    method = str(method).strip().lower().replace("_", "-")
    if method == "grid-dcnn":
        return grid_barycenter(histograms, weights, model)
    if method == "grid-sinkhorn":
        return sinkhorn_grid_barycenter(histograms, weights, reg=reg)
    raise EdgeganError("aggregator", f"unknown grid method '{method}'", f"use one of {', '.join(AGGREGATORS)}")


# ----------------------------------------------------------------------------- metrics
KL_EPS = 1e-8


def grid_kl(reference: torch.Tensor, pred: torch.Tensor, eps: float = KL_EPS) -> torch.Tensor:
    """``Σ p log((p + ε)/(q + ε))`` per barycenter over the last two axes (ε keeps the
    Euclidean mean's empty cells finite)."""
    p, q = reference.flatten(-2).double(), pred.flatten(-2).double()
    return (p * torch.log((p + eps) / (q + eps))).sum(-1)


def grid_l1(reference: torch.Tensor, pred: torch.Tensor) -> torch.Tensor:
    """``Σ |p − q|`` per barycenter over the last two axes (total variation × 2)."""
    return (reference.flatten(-2).double() - pred.flatten(-2).double()).abs().sum(-1)
