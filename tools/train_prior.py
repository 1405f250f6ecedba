#!/usr/bin/env python3
"""Train the photo priors (models/photo-ddpm, models/photo-flow): an RGB UNet on 64x64 patches of photographs.

Data: the train split written by ``tools/photo_data.py`` (``<cache>/train/*.png``; held-out photos are in
another folder and never read here). Each photo is kept at several scales (long side 1024, 512, 256 px);
a patch is a random 64x64 crop of a random photo at a random scale, flipped left-right with probability 1/2,
mapped to [-1, 1].

--kind ddpm : ε-prediction, discrete DDPM schedule (linear betas 1e-4..0.02, 1000 steps); the network is
              called as eps(x, k) with k the step index 0..999 as a float (card: time_input index).
--kind flow : rectified-flow velocity, x_t = t·x1 + (1 − t)·z (t = 0 noise, t = 1 data), v(x, t) ≈ x1 − z,
              t in [0, 1] (card: time_input unit); t drawn logit-normal.

The UNet is ADM-style (residual blocks with GroupNorm + SiLU and an added time embedding, strided-conv
downsampling, nearest-upsampling + conv, one multi-head self-attention block at the lowest resolution).
Training: AdamW (default 2e-4, 500 warm-up steps), gradient clipping at 1, EMA of the weights (decay up to 0.999),
fixed seeds. Runs until --seconds or --max-steps; writes ``<out>/<kind>.pt`` (config, EMA and raw weights,
optimizer, step, loss log) every --save-every seconds and at the end (atomically), and resumes from it.
``tools/train_prior.py export --checkpoint <out>/<kind>.pt --out models/photo-<kind>`` exports the EMA weights
through tools/export_onnx.py (forward + VJP graphs, one shared weights.bin, self-check against torch).

Example (small CPU run)::

    nice -n 15 python3 tools/train_prior.py --kind ddpm --out ~/.cache/photo-train --ch 32 --seconds 3600
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

PATCH = 64
SCALES = (1024, 512, 256)


# ------------------------------------------------------------------------------------------------------
# Network
# ------------------------------------------------------------------------------------------------------


def timestep_embedding(t, dim):
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


def norm(ch):
    return nn.GroupNorm(min(16, ch // 4), ch)


class ResBlock(nn.Module):
    def __init__(self, cin, cout, temb):
        super().__init__()
        self.n1 = norm(cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.t = nn.Linear(temb, cout)
        self.n2 = norm(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        h = h + self.t(emb)[:, :, None, None]
        h = self.c2(F.silu(self.n2(h)))
        return self.skip(x) + h


class Attention(nn.Module):
    def __init__(self, ch, heads=4):
        super().__init__()
        self.norm = norm(ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        self.heads = heads

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        attn = torch.softmax(torch.einsum("bhdi,bhdj->bhij", q, k) / math.sqrt(c // self.heads), dim=-1)
        o = torch.einsum("bhij,bhdj->bhdi", attn, v).reshape(b, c, h, w)
        return x + self.out(o)


class UNet(nn.Module):
    """ADM-style UNet for RGB patches: 64 -> 32 -> 16 (attention in the middle, at 16x16)."""

    def __init__(self, in_ch=3, ch=32, mults=(1, 2, 2), nres=1, time_scale=1.0):
        super().__init__()
        self.config = dict(in_ch=in_ch, ch=ch, mults=list(mults), nres=nres, time_scale=time_scale)
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
        self.out = nn.Sequential(norm(cur), nn.SiLU(), nn.Conv2d(cur, in_ch, 3, padding=1))

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


def build(config: dict) -> UNet:
    return UNet(**config)


def ddpm_alphas_cumprod():
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


# ------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------


class Patches:
    """Random square crops (64x64 unless ``patch`` says otherwise) of the train photos at several scales, with
    left-right flips. The UNet is convolutional, so it can train on crops smaller than the 64x64 tiles it is
    applied in: a 32x32 crop costs a quarter of the compute of a 64x64 one (more steps per minute on a CPU), at
    the price of less context per sample."""

    def __init__(self, folder: Path, scales=SCALES, seed=0, patch=PATCH):
        from PIL import Image

        files = sorted(glob.glob(str(folder / "*.png")))
        if not files:
            raise SystemExit(f"error: no photos in {folder} (run tools/photo_data.py first)")
        self.images = []
        for f in files:
            im = Image.open(f).convert("RGB")
            for s in scales:
                w, h = im.size
                r = min(1.0, s / max(w, h))
                if r < 1.0:
                    sc = im.resize((max(PATCH, round(w * r)), max(PATCH, round(h * r))), Image.LANCZOS)
                else:
                    sc = im
                if min(sc.size) >= PATCH:
                    self.images.append(np.asarray(sc, dtype=np.uint8))
        self.files = files
        self.patch = patch
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int) -> torch.Tensor:
        s = self.patch
        out = np.empty((n, s, s, 3), np.uint8)
        for i in range(n):
            a = self.images[self.rng.integers(len(self.images))]
            y = self.rng.integers(a.shape[0] - s + 1)
            x = self.rng.integers(a.shape[1] - s + 1)
            p = a[y : y + s, x : x + s]
            out[i] = p[:, ::-1] if self.rng.random() < 0.5 else p
        return torch.from_numpy(out).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------------
# Sampling (a quick look at what the prior has learnt)
# ------------------------------------------------------------------------------------------------------


@torch.no_grad()
def sample(model, kind, n, steps=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, 3, PATCH, PATCH), generator=g)
    if kind == "ddpm":
        ac = ddpm_alphas_cumprod()
        ks = torch.linspace(999, 0, steps).round().long()
        for i, k in enumerate(ks):
            a = ac[k]
            eps = model(x, torch.full((n,), float(k)))
            x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
            a_next = ac[ks[i + 1]] if i + 1 < len(ks) else torch.tensor(1.0)
            x = a_next.sqrt() * x0 + (1 - a_next).sqrt() * eps
    else:
        ts = torch.linspace(0, 1, steps + 1)
        for i in range(steps):
            t = ts[i].clamp(min=1e-3)
            x = x + (ts[i + 1] - ts[i]) * model(x, torch.full((n,), float(t)))
    return x.clamp(-1, 1)


def save_grid(x, path):
    from PIL import Image

    a = ((x.permute(0, 2, 3, 1).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    n = int(math.sqrt(a.shape[0]))
    grid = a[: n * n].reshape(n, n, PATCH, PATCH, 3).transpose(0, 2, 1, 3, 4).reshape(n * PATCH, n * PATCH, 3)
    Image.fromarray(grid).save(path)


# ------------------------------------------------------------------------------------------------------
# Training
# ------------------------------------------------------------------------------------------------------


def loss_fn(model, kind, x1, ac, gen):
    b = x1.shape[0]
    z = torch.randn(x1.shape, generator=gen)
    if kind == "ddpm":
        k = torch.randint(0, 1000, (b,), generator=gen)
        a = ac[k][:, None, None, None]
        xt = a.sqrt() * x1 + (1 - a).sqrt() * z
        tin, target = k.float(), z
    else:
        t = torch.sigmoid(torch.randn((b,), generator=gen))  # logit-normal times
        tt = t[:, None, None, None]
        xt = tt * x1 + (1 - tt) * z
        tin, target = t, x1 - z
    return F.mse_loss(model(xt, tin), target)


def save(path: Path, state: dict):
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kind", choices=["ddpm", "flow"], required=True)
    ap.add_argument("--data", type=Path, default=Path.home() / ".cache" / "conjure-photos" / "train")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seconds", type=float, default=600)
    ap.add_argument("--max-steps", type=int, default=10**9)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--patch", type=int, default=PATCH,
                    help="training crop size (a multiple of 4; the model is still exported and applied at 64x64)")
    ap.add_argument("--ch", type=int, default=32)
    ap.add_argument("--mults", default="1,2,2")
    ap.add_argument("--nres", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--warmup", type=int, default=500, help="linear learning-rate warm-up steps")
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--save-every", type=float, default=300, help="seconds between checkpoints")
    ap.add_argument("--samples", type=int, default=16, help="patches to sample at the end (0: none)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.patch < 16 or args.patch % 4:
        ap.error(f"--patch {args.patch}: must be a multiple of 4, at least 16 (the UNet halves it twice)")

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    args.out.mkdir(parents=True, exist_ok=True)
    ckpt_path = args.out / f"{args.kind}.pt"
    config = dict(in_ch=3, ch=args.ch, mults=[int(m) for m in args.mults.split(",")], nres=args.nres,
                  time_scale=1.0 if args.kind == "ddpm" else 1000.0)
    model = build(config).to(dev)
    ema = build(config).to(dev)
    ema.load_state_dict(model.state_dict())
    ema.requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    step, elapsed, log, runs = 0, 0.0, [], []
    data = Patches(args.data, seed=args.seed, patch=args.patch)
    gen = torch.Generator().manual_seed(args.seed + 1)
    if ckpt_path.exists():
        st = torch.load(ckpt_path, map_location=dev, weights_only=False)
        if st["config"] != config:
            raise SystemExit(f"error: {ckpt_path} has config {st['config']}, not {config}")
        model.load_state_dict(st["model"])
        ema.load_state_dict(st["ema"])
        opt.load_state_dict(st["opt"])
        step, elapsed, log = st["step"], st["seconds"], st["log"]
        runs = st.get("runs") or [dict(first_step=1, patch=PATCH, batch=st["batch"])]
        data.rng = np.random.default_rng([args.seed, step])
        gen.manual_seed(args.seed + 1 + step)
        print(f"resumed {ckpt_path} at step {step}", flush=True)
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{args.kind}: {nparams / 1e6:.2f} M parameters, {len(data.files)} train photos, "
          f"{len(data.images)} scaled images, device {dev}, {torch.get_num_threads()} threads", flush=True)
    ac = ddpm_alphas_cumprod().to(dev)
    # One entry per invocation: the crop size, batch and learning rate from its first step on.
    runs.append(dict(first_step=step + 1, patch=args.patch, batch=args.batch, lr=args.lr))

    def state():
        return dict(kind=args.kind, config=config, model=model.state_dict(), ema=ema.state_dict(),
                    opt=opt.state_dict(), step=step, seconds=elapsed, log=log, params=nparams, batch=args.batch,
                    patch=args.patch, runs=runs,
                    device=str(dev), data=[Path(f).name for f in data.files])

    t0, last_save, run_loss, n_loss = time.time(), time.time(), 0.0, 0
    start_elapsed = elapsed
    while time.time() - t0 < args.seconds and step < args.max_steps:
        x1 = data.batch(args.batch).to(dev)
        for g in opt.param_groups:
            g["lr"] = args.lr * min(1.0, (step + 1) / args.warmup)
        if dev.type == "cpu":
            loss = loss_fn(model, args.kind, x1, ac, gen)
        else:  # on a GPU: noise drawn there, bfloat16 autocast
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
                loss = loss_fn_gpu(model, args.kind, x1, ac)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        run_loss += loss.item()
        n_loss += 1
        step += 1
        elapsed = start_elapsed + time.time() - t0
        if step % 50 == 0:
            log.append((step, round(elapsed, 1), run_loss / n_loss))
            print(f"step {step} {elapsed:.0f} s loss {run_loss / n_loss:.4f}", flush=True)
            run_loss, n_loss = 0.0, 0
        if time.time() - last_save > args.save_every:
            save(ckpt_path, state())
            last_save = time.time()
    save(ckpt_path, state())
    summary = dict(kind=args.kind, params=nparams, steps=step, seconds=round(elapsed, 1), batch=args.batch,
                   patch=args.patch, runs=runs, config=config, device=str(dev), final_loss=log[-1][2] if log else None)
    (args.out / f"{args.kind}_log.json").write_text(json.dumps(dict(summary, log=log), indent=1))
    # The EMA weights alone (what `export` reads), small enough to carry back from a training machine.
    light = {k: v for k, v in state().items() if k not in ("model", "opt")}
    save(args.out / f"{args.kind}_ema.pt", {**light, "ema": {k: v.cpu() for k, v in ema.state_dict().items()}})
    print(json.dumps(summary), flush=True)
    if args.samples:
        ema.eval()
        save_grid(sample(ema.cpu(), args.kind, args.samples), args.out / f"{args.kind}_samples.png")


def loss_fn_gpu(model, kind, x1, ac):
    b = x1.shape[0]
    z = torch.randn_like(x1)
    if kind == "ddpm":
        k = torch.randint(0, 1000, (b,), device=x1.device)
        a = ac[k][:, None, None, None]
        xt, tin, target = a.sqrt() * x1 + (1 - a).sqrt() * z, k.float(), z
    else:
        t = torch.sigmoid(torch.randn((b,), device=x1.device))
        tt = t[:, None, None, None]
        xt, tin, target = tt * x1 + (1 - tt) * z, t, x1 - z
    return F.mse_loss(model(xt, tin).float(), target)


# ------------------------------------------------------------------------------------------------------
# Export (tools/export_onnx.py: forward + VJP graphs sharing one weights.bin, self-checked against torch)
# ------------------------------------------------------------------------------------------------------


def runs_text(ckpt: dict) -> str:
    """The training runs of a checkpoint in words: "batch 8 of 64x64 crops; from step 336 batch 32 of 32x32"."""
    runs = ckpt.get("runs") or [dict(first_step=1, patch=PATCH, batch=ckpt["batch"])]
    parts = []
    for i, r in enumerate(runs):
        if i and (r["patch"], r["batch"]) == (runs[i - 1]["patch"], runs[i - 1]["batch"]):
            continue  # a resumed run with the same settings
        what = f"batch {r['batch']} of {r['patch']}x{r['patch']} crops"
        parts.append(what if not parts else f"from step {r['first_step']} {what}")
    return "; ".join(parts)


def prepared(ckpt: dict, size: int = PATCH):
    """The exporter's `Prepared` for a checkpoint of this script (its EMA weights)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from export_onnx import Prepared, diffusion_index_t, unit_t

    net = build(ckpt["config"])
    net.load_state_dict(ckpt["ema"])
    net = net.float().eval()
    image = {"channels": 3, "height": size, "width": size, "value_range": [-1, 1]}
    # What the model knows (conjure warns when the inputs do not look like it, e.g. gray or tiny images).
    domain = "RGB photographs (natural images, learnt from small patches)"
    how = (f"{ckpt['params'] / 1e6:.2f} M parameters, {ckpt['step']} steps ({runs_text(ckpt)}) "
           f"in {ckpt['seconds'] / 60:.0f} min on {ckpt['device']}")
    if ckpt["kind"] == "ddpm":
        card = {"domain": domain, "kind": "diffusion", "parameterization": "eps",
                "schedule": {"type": "ddpm-linear", "beta_start": 0.0001, "beta_end": 0.02, "timesteps": 1000},
                "time_input": "index", "image": image}
        notes = [f"Photo prior (tools/train_prior.py --kind ddpm), EMA weights; {how}.",
                 "Training data and licences: models/photo-ddpm/DATA.md."]
        return Prepared(module=net, card=card, sample_t=diffusion_index_t(1000), notes=notes)
    card = {"domain": domain, "kind": "flow", "parameterization": "velocity", "schedule": {"type": "rectified-flow"},
            "time_input": "unit", "image": image}
    notes = [f"Photo prior (tools/train_prior.py --kind flow), EMA weights; {how}.",
             "Training data and licences: models/photo-ddpm/DATA.md."]
    return Prepared(module=net, card=card, sample_t=unit_t(), notes=notes)


def export_main(argv):
    import sys

    ap = argparse.ArgumentParser(prog="train_prior.py export", description="export a checkpoint to ONNX")
    ap.add_argument("--checkpoint", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--name")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import export_onnx as ex

    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    prep = prepared(ckpt)
    ex.export(prep, args.out, args.name or args.out.resolve().name)
    try:
        ex.self_check(prep, args.out)
    except ex.SelfCheckError as e:
        print(f"SELF-CHECK FAILED: {e}", file=sys.stderr)
        return 1
    print(f"export OK: {args.out}")
    return 0


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["export"]:
        sys.exit(export_main(sys.argv[2:]))
    main()
