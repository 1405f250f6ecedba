"""The small ADM-style UNet of conjure's embedded Fashion-MNIST priors (models/fmnist-ddpm, models/fmnist-flow).

32×32 single-channel images in [-1, 1]; levels 32→16→8 with widths ch·(1, 2, 2), two residual blocks per
level (GroupNorm(16) + SiLU, a per-block time projection), one 4-head self-attention block at 8×8, nearest
upsampling + 3×3 convolution, sinusoidal time embedding [cos, sin] of ``t·time_scale``. Parameter names follow
the training script that produced the shipped state dicts (``temb.*``, ``inp``, ``down.N.*``, ``mid1``,
``mid_attn``, ``mid2``, ``up.N.*``, ``out.*``), so its EMA state dict loads strictly.

Configs: ``ddpm`` (ε-prediction, DDPM linear betas 1e-4…0.02 over 1000 steps, t = step index as float) and
``flow`` (rectified-flow velocity x₁ − z with x_t = t·x₁ + (1 − t)·z, t ∈ [0, 1] scaled by 1000 inside the
network). ``--reduced`` builds width 16 with one residual block per level (tests).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import load_strict, torch_load

HELP = "ddpm (default) | flow — the checkpoint is a state dict of the training script's UNet"

CONFIGS = {
    "ddpm": dict(ch=48, nres=2, time_scale=1.0),
    "flow": dict(ch=48, nres=2, time_scale=1000.0),
}


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int):
        super().__init__()
        self.n1 = nn.GroupNorm(16, cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2 = nn.GroupNorm(16, cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.norm = nn.GroupNorm(16, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        d = c // self.heads
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, d, h * w).unbind(1)
        # softmax over keys of qᵀk/√d, as batched matrix products ([b, heads, d, hw] layout).
        attn = torch.softmax(torch.matmul(q.transpose(-1, -2), k) / math.sqrt(d), dim=-1)
        o = torch.matmul(v, attn.transpose(-1, -2)).reshape(b, c, h, w)
        return x + self.out(o)


class UNet(nn.Module):
    def __init__(self, in_ch=1, ch=48, mults=(1, 2, 2), nres=2, time_scale=1.0):
        super().__init__()
        self.time_scale = time_scale
        temb = ch * 4
        self.ch = ch
        self.temb = nn.Sequential(nn.Linear(ch, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, ch, 3, padding=1)
        self.down = nn.ModuleList()
        chans = [ch]
        cur = ch
        for lvl, m in enumerate(mults):
            for _ in range(nres):
                self.down.append(ResBlock(cur, ch * m, temb))
                cur = ch * m
                chans.append(cur)
            if lvl < len(mults) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                chans.append(cur)
        self.mid1 = ResBlock(cur, cur, temb)
        self.mid_attn = Attention(cur)
        self.mid2 = ResBlock(cur, cur, temb)
        self.up = nn.ModuleList()
        for lvl, m in reversed(list(enumerate(mults))):
            for _ in range(nres + 1):
                self.up.append(ResBlock(cur + chans.pop(), ch * m, temb))
                cur = ch * m
            if lvl > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out = nn.Sequential(nn.GroupNorm(16, cur), nn.SiLU(), nn.Conv2d(cur, in_ch, 3, padding=1))

    def forward(self, x, t):
        emb = self.temb(timestep_embedding(t * self.time_scale, self.ch))
        h = self.inp(x)
        hs = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for layer in self.up:
            if isinstance(layer, ResBlock):
                h = layer(torch.cat([h, hs.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


def build(config=None, checkpoint=None, reduced=False, **_):
    from export_onnx import Prepared, diffusion_index_t, unit_t

    name = config or "ddpm"
    if name not in CONFIGS:
        raise ValueError(f"fmnist-unet: unknown config {name!r} (expected one of {sorted(CONFIGS)})")
    cfg = dict(CONFIGS[name])
    if reduced:
        cfg.update(ch=16, nres=1)
    net = UNet(**cfg)
    if checkpoint is not None:
        state = torch_load(Path(checkpoint))
        load_strict(net, state, f"fmnist-unet checkpoint {checkpoint}")
    net = net.float().eval()
    image = {"channels": 1, "height": 32, "width": 32, "value_range": [-1, 1]}
    if name == "ddpm":
        card = {"kind": "diffusion", "parameterization": "eps",
                "schedule": {"type": "ddpm-linear", "beta_start": 0.0001, "beta_end": 0.02, "timesteps": 1000},
                "time_input": "index", "image": image}
        notes = ["Fashion-MNIST UNet prior, eps-prediction (tools/presets/fmnist_unet.py)."]
        return Prepared(module=net, card=card, sample_t=diffusion_index_t(1000), notes=notes)
    card = {"kind": "flow", "parameterization": "velocity", "schedule": {"type": "rectified-flow"},
            "time_input": "unit", "image": image}
    notes = ["Fashion-MNIST UNet prior, rectified-flow velocity (tools/presets/fmnist_unet.py)."]
    return Prepared(module=net, card=card, sample_t=unit_t(), notes=notes)
