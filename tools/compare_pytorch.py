#!/usr/bin/env python3
"""Time a plain reference-style C-PiGDM against `conjure run` (issue 6, item 4).

What is compared
  * reference: C-PiGDM written from docs/samplers.md §4 the way the official research code runs
    it -- float64 state, the five coefficient integrals Phi recomputed for every image by an adaptive ODE
    solver (scipy's solve_ivp RK45, rtol = atol = 1e-5, chained interval by interval from t = 0 as in
    section 4.3; a built-in Dormand-Prince RK45 with the same tolerances when scipy is missing), batch 1,
    one network forward + one VJP per step.  The state math runs in PyTorch float64 when torch is
    installed, else in NumPy float64 (the script says which).
  * conjure: `conjure run` on the same spec, the same images, the same initial noise (passed with
    sampler.init_noise), the same NFE, the same number of CPU threads, its own batching (runtime.batch_size).

The network: there is no PyTorch checkpoint of models/fmnist-ddpm -- the model ships only as ONNX -- so
both sides run the shipped ONNX forward graph (denoiser.onnx) and VJP graph (denoiser_vjp.onnx) through
ONNX Runtime on the CPU.  The comparison therefore measures everything *around* the network: Phi setup,
state math, operators, batching, I/O.

Both sides read the same PNG measurements and write float32 .npy results (the script reports the largest
difference between the two outputs as a sanity check; they differ only by float32 network round-off
amplified by A^-1, section 4.7).

Needs: Python 3.8+, numpy, onnxruntime (scipy and torch optional), and a built conjure
(`cargo build --release`; found through --conjure, $CONJURE_BIN, $CARGO_TARGET_DIR or ./target).

  python3 tools/compare_pytorch.py                  # 16 images of examples/sr4, all cores
  python3 tools/compare_pytorch.py --images 64 --threads 2
"""

import argparse
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=16, help="images to restore (cycling the inputs)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads for both sides")
    p.add_argument("--input", default=str(ROOT / "examples" / "sr4"), help="folder of 8x8 PNG measurements")
    p.add_argument("--model", default=str(ROOT / "models" / "fmnist-ddpm"))
    p.add_argument("--spec", default=str(ROOT / "pipelines" / "sr4-c-pigdm.yaml"))
    p.add_argument("--conjure", default=None, help="the conjure binary")
    p.add_argument("--batch-size", type=int, default=16, help="conjure's runtime.batch_size")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


ARGS = parse_args()
# Same cores on both sides: pin BLAS threads before numpy is imported.
for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[var] = str(ARGS.threads)

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

try:
    import torch  # noqa: E402

    torch.set_num_threads(ARGS.threads)
    BACKEND = "torch %s (float64)" % torch.__version__
except ImportError:
    torch = None
    BACKEND = "numpy %s (float64; torch is not installed)" % np.__version__

try:
    from scipy.integrate import solve_ivp  # noqa: E402

    SOLVER = "scipy solve_ivp RK45"
except ImportError:
    solve_ivp = None
    SOLVER = "built-in RK45 (Dormand-Prince; scipy is not installed)"

# ---- sampler settings: pipelines/sr4-c-pigdm.yaml and conjure's defaults (docs/samplers.md §4.6) ----
W = 15.0  # guidance
LAMBDA = 0.0
TAU = 0.4  # start time (diffusion)
T_END = 0.001
K = 5  # steps = NFE
EPS_N = 1e-6  # num_eps
SCALE = 4
SVD_THRESHOLD = 0.03
BETA_MIN, BETA_MAX = 0.1, 20.0  # VP-SDE matching the DDPM linear schedule 1e-4..0.02, 1000 steps


# ---------------------------------------------------------------------------------------------- PNG I/O
def read_png(path):
    """A minimal PNG decoder (8/16-bit gray, gray+alpha, RGB, RGBA; not interlaced) -> float [C,H,W] in [0,1]."""
    data = Path(path).read_bytes()
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise ValueError("%s: not a PNG" % path)
    pos, idat = 8, []
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    if interlace or depth not in (8, 16) or ctype not in (0, 2, 4, 6):
        raise ValueError("%s: unsupported PNG (depth %d, color type %d)" % (path, depth, ctype))
    chans = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    bpp = chans * depth // 8
    stride = w * bpp
    raw = zlib.decompress(b"".join(idat))
    out = np.zeros((h, stride), np.uint8)
    prev = np.zeros(stride, np.int32)
    for r in range(h):
        f = raw[r * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, r * (stride + 1) + 1).astype(np.int32)
        cur = np.zeros(stride, np.int32)
        for i in range(stride):
            a = cur[i - bpp] if i >= bpp else 0
            b = prev[i]
            c = prev[i - bpp] if i >= bpp else 0
            if f == 0:
                p = 0
            elif f == 1:
                p = a
            elif f == 2:
                p = b
            elif f == 3:
                p = (a + b) // 2
            else:
                pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                p = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
            cur[i] = (line[i] + p) & 0xFF
        out[r] = cur
        prev = cur
    if depth == 16:
        px = out.reshape(h, w * chans, 2).astype(np.uint32)
        px = ((px[..., 0] << 8) | px[..., 1]).reshape(h, w, chans) / 65535.0
    else:
        px = out.reshape(h, w, chans) / 255.0
    color = px[..., : 1 if chans <= 2 else 3]
    return np.ascontiguousarray(color.transpose(2, 0, 1))


def to_gray(img):
    """[C,H,W] -> [1,H,W] (Rec. 601 luma for RGB)."""
    if img.shape[0] == 1:
        return img
    return (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None]


# ------------------------------------------------------------------------- operator (docs/samplers.md 2.4)
def keys(x, a=-0.5):
    x = abs(x)
    if x <= 1:
        return (a + 2) * x**3 - (a + 3) * x**2 + 1
    if x < 2:
        return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
    return 0.0


def bicubic_matrix(n, f):
    """The 1-D Keys bicubic downsampling matrix ((n/f) x n), symmetric reflection at the borders."""
    taps = [(o, keys((o - (f - 1) / 2) / f)) for o in range(-3 * f, 3 * f + 1)]
    taps = [(o, v) for o, v in taps if abs((o - (f - 1) / 2) / f) < 2]
    s = sum(v for _, v in taps)
    A = np.zeros((n // f, n))
    for r in range(n // f):
        for o, v in taps:
            j = f * r + o
            while j < 0 or j >= n:
                j = -j - 1 if j < 0 else 2 * n - 1 - j
            A[r, j] += v / s
    return A


class SrBicubic:
    """H = A X A^T per channel, as its thresholded SVD: H+ y and the projector P = H+ H."""

    def __init__(self, n, f, threshold):
        U, S, Vt = np.linalg.svd(bicubic_matrix(n, f))
        S = np.where(S < threshold, 0.0, S)
        m = len(S)
        self.U, self.V = U, Vt.T
        s2 = np.outer(S, S)
        self.inv = np.where(s2 > 0, 1.0 / np.where(s2 > 0, s2, 1.0), 0.0)
        mask = np.zeros((n, n))
        mask[:m, :m] = (s2 > 0).astype(float)
        self.mask = mask
        self.m = m
        self.n = n

    def to(self, conv):
        self.U, self.V, self.inv, self.mask = (conv(a) for a in (self.U, self.V, self.inv, self.mask))
        return self

    def pinv(self, y):
        c = self.U.T @ y @ self.U * self.inv
        full = y.new_zeros((y.shape[0], self.n, self.n)) if torch is not None and not isinstance(y, np.ndarray) \
            else np.zeros((y.shape[0], self.n, self.n))
        full[:, : self.m, : self.m] = c
        return self.V @ full @ self.V.T

    def P(self, x):
        return self.V @ ((self.V.T @ x @ self.V) * self.mask) @ self.V.T


# ---------------------------------------------------------------------- VP schedule and Phi (section 4)
def b(t):
    return BETA_MIN * t + 0.5 * t * t * (BETA_MAX - BETA_MIN)


def beta(t):
    return BETA_MIN + t * (BETA_MAX - BETA_MIN)


def mu(t):
    return math.exp(-0.5 * b(t))


def sigma(t):
    return math.sqrt(-math.expm1(-b(t)))


def c1(t):
    return LAMBDA * t + 0.5 * b(t)


def c2(t):
    return -0.5 * W * b(t)


def integrands(u, _y=None):
    """(f_y, f_s1, f_s2, f_j1, f_j2) of docs/samplers.md §4.3."""
    hb, m, s = 0.5 * beta(u), mu(u), sigma(u)
    e1, e12 = math.exp(c1(u)), math.exp(c1(u) + c2(u))
    ec2 = math.exp(c2(u)) - 1.0
    return [
        -W * hb * m * e12,
        hb * e1 / (s + EPS_N),
        hb * e1 * ec2 / (s + EPS_N) - W * hb * s * e12,
        W * hb * s * m * e1,
        W * hb * s * m * e1 * ec2,
    ]


def rk45(f, t0, t1, y0, rtol=1e-5, atol=1e-5):
    """Adaptive Dormand-Prince RK45 for y' = f(t) (the fallback when scipy is missing)."""
    c = [0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1, 1]
    a = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
         [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
         [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
         [35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
    b5 = np.array([35 / 384, 0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0])
    b4 = np.array([5179 / 57600, 0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40])
    y, t, h = np.array(y0, float), t0, (t1 - t0) / 100
    while t < t1:
        h = min(h, t1 - t)
        ks = []
        for i in range(7):
            yi = y + h * sum(a[i][j] * ks[j] for j in range(i)) if i else y
            ks.append(np.array(f(t + c[i] * h, yi)))
        ks = np.array(ks)
        y5, y4 = y + h * b5 @ ks, y + h * b4 @ ks
        err = np.max(np.abs(y5 - y4) / (atol + rtol * np.maximum(np.abs(y), np.abs(y5))))
        if err <= 1:
            t, y = t + h, y5
        h *= min(5.0, max(0.2, 0.9 * err ** -0.2 if err > 0 else 5.0))
    return y


def phi_increments(ts):
    """dPhi_k = Phi(t_{k+1}) - Phi(t_k) with Phi(t) = int_0^t f, chained from t = 0 upward (one RK45 solve
    per interval, as the official code does); returns a K x 5 array."""
    grid = [0.0] + sorted(ts)
    phis = [np.zeros(5)]
    for lo, hi in zip(grid[:-1], grid[1:]):
        if solve_ivp is not None:
            sol = solve_ivp(integrands, (lo, hi), phis[-1], method="RK45", rtol=1e-5, atol=1e-5)
            phis.append(sol.y[:, -1])
        else:
            phis.append(rk45(integrands, lo, hi, phis[-1]))
    at = {t: p for t, p in zip(grid, phis)}
    return np.array([at[ts[k + 1]] - at[ts[k]] for k in range(len(ts) - 1)])


# --------------------------------------------------------------------------------------- the sampler
class Reference:
    def __init__(self, model, threads):
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        cpu = ["CPUExecutionProvider"]
        self.fwd = ort.InferenceSession(str(Path(model) / "denoiser.onnx"), so, providers=cpu)
        self.vjp = ort.InferenceSession(str(Path(model) / "denoiser_vjp.onnx"), so, providers=cpu)
        self.op = SrBicubic(32, SCALE, SVD_THRESHOLD)
        if torch is not None:
            self.op.to(lambda a: torch.from_numpy(np.ascontiguousarray(a)))
        s = np.linspace(1 - TAU, 1 - T_END, K + 1)
        self.ts = [1 - v for v in s]
        self.ds = s[1] - s[0]
        self.net_s = 0.0  # seconds inside the ONNX forward / VJP calls
        self.phi_s = 0.0  # seconds solving for Phi

    def arr(self, a):
        return torch.from_numpy(np.asarray(a, np.float64)) if torch is not None else np.asarray(a, np.float64)

    def f32(self, x):
        x = x.numpy() if torch is not None else x
        return x[None].astype(np.float32)

    def restore(self, y, z):
        """One image: y [1,8,8] on [-1,1], z [1,32,32] initial noise -> x [1,32,32] (float64)."""
        t0 = time.perf_counter()
        dphi = phi_increments(self.ts)  # per run, as the reference code does
        self.phi_s += time.perf_counter() - t0
        op, ts = self.op, self.ts
        hpy = op.pinv(self.arr(y))
        x = mu(ts[0]) * hpy + sigma(ts[0]) * self.arr(z)
        xbar = math.exp(c1(ts[0])) * (x + (math.exp(c2(ts[0])) - 1) * op.P(x))
        for k in range(K):
            t = ts[k]
            tn = np.array([math.floor(999 * t)], np.float32)
            t0 = time.perf_counter()
            eps = self.fwd.run(None, {"x": self.f32(x), "t": tn})[0][0]
            self.net_s += time.perf_counter() - t0
            eps = self.arr(eps)
            x0 = (x - sigma(t) * eps) / mu(t)
            m = hpy - op.P(x0)  # a constant for the VJP (stop-gradient)
            t0 = time.perf_counter()
            g = self.vjp.run(None, {"x": self.f32(x), "t": tn, "cotangent": self.f32(m)})[1][0]
            self.net_s += time.perf_counter() - t0
            g = self.arr(g)
            dy, ds1, ds2, dj1, dj2 = dphi[k]
            xbar = (xbar - LAMBDA * self.ds * xbar + dy * hpy + ds1 * eps + ds2 * op.P(eps)
                    + dj1 * g + dj2 * op.P(g))
            tn1 = ts[k + 1]
            x = math.exp(-c1(tn1)) * (xbar + (math.exp(-c2(tn1)) - 1) * op.P(xbar))
        return x.numpy() if torch is not None else x


# ------------------------------------------------------------------------------------------- driver
def find_conjure():
    cands = [ARGS.conjure, os.environ.get("CONJURE_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(str(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "conjure"))
    cands.append(str(ROOT / "target" / "release" / "conjure"))
    for c in cands:
        if c and Path(c).is_file():
            return c
    print("building conjure (cargo build --release) ...", file=sys.stderr)
    subprocess.run(["cargo", "build", "--release"], cwd=ROOT, check=True)
    return str(Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "conjure")


def main():
    inputs = sorted(p for p in Path(ARGS.input).rglob("*.png") if not p.name.startswith("."))
    if not inputs:
        sys.exit("no PNG files under %s" % ARGS.input)
    n = ARGS.images
    tmp = Path(tempfile.mkdtemp(prefix="conjure-compare-"))
    try:
        # N images cycling the inputs: tmp/in/<cycle>/<name>; conjure sorts them the same way.
        work = []
        for i in range(n):
            src = inputs[i % len(inputs)]
            rel = Path("%05d" % (i // len(inputs))) / src.relative_to(ARGS.input)
            dst = tmp / "in" / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dst)
            work.append(rel)
        work.sort(key=lambda r: r.parts)
        noise = np.random.default_rng(ARGS.seed).standard_normal((n, 1, 32, 32))
        np.save(tmp / "noise.npy", noise)

        # ---- reference: batch 1, Phi per run, float64 state ----
        t0 = time.perf_counter()
        ref = Reference(ARGS.model, ARGS.threads)
        t_setup = time.perf_counter() - t0
        (tmp / "ref").mkdir()
        t1 = time.perf_counter()
        results = {}
        for i, rel in enumerate(work):
            y = to_gray(read_png(tmp / "in" / rel)) * 2 - 1
            x = ref.restore(y, noise[i])
            out = (tmp / "ref" / rel).with_suffix(".npy")
            out.parent.mkdir(parents=True, exist_ok=True)
            np.save(out, x.astype(np.float32))
            results[rel] = x
        t_ref = time.perf_counter() - t1

        # ---- conjure run: same images, noise, NFE, threads ----
        conjure = find_conjure()
        cmd = [conjure, "run", ARGS.spec, "--input", str(tmp / "in"), "--output", str(tmp / "out"),
               "--quiet", "--overwrite",
               "--set", "sampler.init_noise=%s" % (tmp / "noise.npy"),
               "--set", "io.format=npy",
               "--set", "runtime.engine=onnxruntime",
               "--set", "runtime.providers=[cpu]",
               "--set", "runtime.threads=%d" % ARGS.threads,
               "--set", "runtime.batch_size=%d" % ARGS.batch_size]
        t2 = time.perf_counter()
        subprocess.run(cmd, check=True)
        t_conjure = time.perf_counter() - t2

        diff = max(float(np.max(np.abs(np.load((tmp / "out" / r).with_suffix(".npy")) - results[r])))
                   for r in work)
        ref_total = t_setup + t_ref
        print("machine      %s, %d threads on both sides (%d CPUs visible)" % (
            os.uname().machine, ARGS.threads, os.cpu_count() or 0))
        print("network      shipped ONNX graphs %s via onnxruntime %s (cpu) on both sides; no PyTorch "
              "checkpoint exists for this model" % (Path(ARGS.model).name, ort.__version__))
        print("reference    C-PiGDM, state math in %s, Phi by %s per image, batch 1" % (BACKEND, SOLVER))
        print("workload     %d images, %d NFE (1 forward + 1 VJP per step), conjure batch %d" % (
            n, K, ARGS.batch_size))
        print("reference    %.3f s (%.3f s sessions + %.3f s restoring), %.2f images/s" % (
            ref_total, t_setup, t_ref, n / t_ref))
        print("             of which network %.3f s, Phi %.3f s, the rest %.3f s: overhead %.1f %% of "
              "network time" % (ref.net_s, ref.phi_s, t_ref - ref.net_s - ref.phi_s,
                                100 * (t_ref - ref.net_s) / ref.net_s))
        print("conjure run  %.3f s wall, whole process (model load included), %.2f images/s" % (
            t_conjure, n / t_conjure))
        print("ratio        reference / conjure = %.2fx" % (ref_total / t_conjure))
        print("max |x_ref - x_conjure| = %.3g (float32 network round-off, amplified by A^-1)" % diff)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
