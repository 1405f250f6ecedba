#!/usr/bin/env python3
"""Time the official C-PiGDM sampler loop (PyTorch) against `conjure run` on the same work (issue 13).

What is compared
  * official: mandt-lab/c-pigdm's ConjugatePGDMSampler, driven as its main.py loop drives it (one sampler
    for the run, Phi solved at the first batch by its torchdiffeq/scipy RK45, float64 state, one forward
    with autograd + one input gradient per step), on the fmnist-ddpm UNet in PyTorch (weights read from
    models/fmnist-ddpm/weights.bin, checked against ONNX Runtime).  Imported from a checkout of the
    official repository; tools/official_cpigdm/ says what is adapted (the network call, the CPU device,
    the initial noise, the loop without dataset and metrics) and why the code is not copied here.
  * conjure: `conjure run` on the same 8x8 block-mean measurements (sr-average 4x = the official sr4),
    with the same initial noise (sampler.init_noise), NFE, guidance, lambda, time grid, and CPU threads.

Each configuration runs in a fresh process, interleaved with the others, `--runs` times; the table
reports the median seconds, images/s, and conjure's speed-up over the official loop.  Timed: official =
from building the sampler to the last output written (PNG decode, Phi, sampling, .npy writes; the Python
and torch start-up and this script's network loading are not counted); conjure = the whole `conjure run`
process (start-up and model loading included).  The outputs of every conjure configuration are compared
with the official batch-1 outputs (max and mean absolute difference).

Needs: the torch venv (torch, onnx, onnxruntime, numpy, Pillow) plus torchdiffeq, omegaconf, tqdm and scipy
(the official code's imports), a checkout of https://github.com/mandt-lab/c-pigdm (--official or
$CPIGDM_DIR), and a built conjure (--conjure, $CONJURE_BIN, $CARGO_TARGET_DIR or ./target).

  python tools/compare_pytorch.py --official ~/c-pigdm --threads 2          # the README table
  python tools/compare_pytorch.py --official ~/c-pigdm --images 16 --runs 1 --official-batches 1
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent / "official_cpigdm"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--official", default=os.environ.get("CPIGDM_DIR"),
                   help="checkout of mandt-lab/c-pigdm (default $CPIGDM_DIR)")
    p.add_argument("--images", type=int, default=64, help="images to restore (cycling the inputs)")
    p.add_argument("--threads", type=int, default=2, help="CPU threads on both sides")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per configuration (median reported)")
    p.add_argument("--official-batches", default="1,16", help="official loader batch sizes")
    p.add_argument("--conjure-batches", default="1,16", help="conjure runtime.batch_size values (16 = default)")
    p.add_argument("--input", default=str(ROOT / "examples" / "sr4-average"), help="folder of 8x8 measurements")
    p.add_argument("--model", default=str(ROOT / "models" / "fmnist-ddpm"))
    p.add_argument("--torch-weights", default=None, help="a state dict .pt instead of the ONNX weights")
    p.add_argument("--spec", default=str(ROOT / "pipelines" / "sr4-average-c-pigdm.yaml"))
    p.add_argument("--conjure", default=None, help="the conjure binary")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--guidance", type=float, default=15.0, help="w (official README value)")
    p.add_argument("--lam", type=float, default=0.0, help="lambda (official README value)")
    p.add_argument("--start-time", type=float, default=0.4,
                   help="diffusion start time tau (official exp.t_start = 1 - tau = 0.6)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared initial noise")
    p.add_argument("--json", default=None, help="write the results as JSON to this file")
    p.add_argument("--worker", nargs=3, metavar=("WORKDIR", "BATCH", "OUT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


END_TIME = 0.001  # official exp.t_end = 0.999
NUM_EPS = 1e-6
SCALE = 4


def read_measurements(paths):
    """8-bit gray PNGs -> float32 [N, 1, h, w] in [0, 1] (Pillow, as the official loaders decode)."""
    import numpy as np
    from PIL import Image

    return np.stack([np.asarray(Image.open(p).convert("L"), np.float32)[None] / 255.0 for p in paths])


# ------------------------------------------------------------------------------ official worker process
def official_worker(args):
    """One timed run of the official loop in this process; writes a JSON line to OUT."""
    work, batch, out = Path(args.worker[0]), int(args.worker[1]), Path(args.worker[2])
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    import adapter
    from fmnist_unet import load_fmnist_unet

    meta = json.loads((work / "work.json").read_text())
    noise = torch.from_numpy(np.load(work / "noise.npy"))
    unet = load_fmnist_unet(args.model, args.torch_weights, check=False)
    official = adapter.import_official(args.official)
    outdir = work / ("official-b%d" % batch)
    outdir.mkdir()
    rels = meta["inputs"]

    t0 = time.perf_counter()
    cfg = adapter.official_config(args.guidance, args.lam, 1.0 - args.start_time, 1.0 - END_TIME, args.steps,
                                  SCALE, num_eps=NUM_EPS)
    algo = adapter.build_sampler(official, unet, cfg)
    for i0 in range(0, len(rels), batch):
        names = rels[i0:i0 + batch]
        y01 = torch.from_numpy(read_measurements([work / "in" / r for r in names]))

        def write(_, x, names=names):
            for r, xi in zip(names, x):
                dst = (outdir / r).with_suffix(".npy")
                dst.parent.mkdir(parents=True, exist_ok=True)
                np.save(dst, xi.to(torch.float32).numpy())

        adapter.run_official(official, algo, cfg, y01, noise[i0:i0 + len(names)], batch, on_batch=write)
    seconds = time.perf_counter() - t0
    out.write_text(json.dumps({"seconds": seconds, "commit": official.commit, "torch": torch.__version__}))


# ------------------------------------------------------------------------------------------------ driver
def find_conjure(given):
    cands = [given, os.environ.get("CONJURE_BIN")]
    if os.environ.get("CARGO_TARGET_DIR"):
        cands.append(str(Path(os.environ["CARGO_TARGET_DIR"]) / "release" / "conjure"))
    cands.append(str(ROOT / "target" / "release" / "conjure"))
    for c in cands:
        if c and Path(c).is_file():
            return c
    sys.exit("no conjure binary: build it (cargo build --release) and pass --conjure or set CONJURE_BIN")


def run_official(args, work, batch):
    out = work / ("official-b%d.json" % batch)
    shutil.rmtree(work / ("official-b%d" % batch), ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(work), str(batch), str(out)]
    for k in ("official", "model", "torch_weights"):
        v = getattr(args, k)
        if v:
            cmd += ["--" + k.replace("_", "-"), str(v)]
    cmd += ["--threads", str(args.threads), "--steps", str(args.steps), "--guidance", repr(args.guidance),
            "--lam", repr(args.lam), "--start-time", repr(args.start_time)]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        sys.exit("the official run failed (batch %d):\n%s" % (batch, r.stderr))
    return json.loads(out.read_text())


def conjure_cmd(args, conjure, work, batch):
    return [conjure, "run", args.spec, "--input", str(work / "in"), "--output", str(work / ("conjure-b%d" % batch)),
            "--quiet", "--overwrite",
            "--set", "sampler.init_noise=%s" % (work / "noise.npy"),
            "--set", "sampler.steps=%d" % args.steps,
            "--set", "sampler.guidance=%r" % args.guidance,
            "--set", "sampler.lambda=%r" % args.lam,
            "--set", "sampler.start_time=%r" % args.start_time,
            "--set", "sampler.end_time=%r" % END_TIME,
            "--set", "sampler.num_eps=%r" % NUM_EPS,
            "--set", "sampler.jacobian=exact",
            # The official loop has no final data-consistency projection (conjure's default when σ_y = 0).
            "--set", "task.data_consistency=false",
            "--set", "io.format=npy",
            "--set", "runtime.engine=onnxruntime",
            "--set", "runtime.providers=[cpu]",
            "--set", "runtime.threads=%d" % args.threads,
            "--set", "runtime.batch_size=%d" % batch]


def run_conjure(args, conjure, work, batch):
    shutil.rmtree(work / ("conjure-b%d" % batch), ignore_errors=True)
    t0 = time.perf_counter()
    subprocess.run(conjure_cmd(args, conjure, work, batch), check=True)
    return {"seconds": time.perf_counter() - t0}


def diff(work, a, b, rels):
    import numpy as np

    d = [np.abs(np.load((work / a / r).with_suffix(".npy")).astype(np.float64)
                - np.load((work / b / r).with_suffix(".npy")).astype(np.float64)) for r in rels]
    return float(max(x.max() for x in d)), float(np.mean([x.mean() for x in d]))


def main(argv=None):
    args = parse_args(argv)
    if args.worker:
        return official_worker(args)
    if not args.official:
        sys.exit("give --official DIR (a checkout of https://github.com/mandt-lab/c-pigdm) or set CPIGDM_DIR")
    import numpy as np

    official_batches = [int(b) for b in args.official_batches.split(",") if b]
    conjure_batches = [int(b) for b in args.conjure_batches.split(",") if b]
    conjure = find_conjure(args.conjure)
    inputs = sorted(p for p in Path(args.input).rglob("*.png") if not p.name.startswith("."))
    if not inputs:
        sys.exit("no PNG files under %s" % args.input)
    work = Path(tempfile.mkdtemp(prefix="conjure-compare-"))
    try:
        # N images cycling the inputs: in/<cycle>/<name>, listed in conjure's order (sorted relative paths);
        # noise.npy row i is image i's initial noise on both sides.
        rels = []
        for i in range(args.images):
            src = inputs[i % len(inputs)]
            rel = Path("%05d" % (i // len(inputs))) / src.relative_to(args.input)
            (work / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, work / "in" / rel)
            rels.append(rel.as_posix())
        rels.sort()
        (work / "work.json").write_text(json.dumps({"inputs": rels}))
        noise = np.random.default_rng(args.seed).standard_normal((args.images, 1, 32, 32)).astype(np.float32)
        np.save(work / "noise.npy", noise)

        configs = [("official", b) for b in official_batches] + [("conjure", b) for b in conjure_batches]
        times = {c: [] for c in configs}
        meta = {}
        for r in range(args.runs):
            # Interleaved, the order rotated every run so no configuration always follows the same one.
            order = configs[r % len(configs):] + configs[:r % len(configs)]
            for side, b in order:
                if side == "official":
                    res = run_official(args, work, b)
                    meta = res
                else:
                    res = run_conjure(args, conjure, work, b)
                times[(side, b)].append(res["seconds"])
                print("run %d  %-8s batch %-3d %8.3f s" % (r + 1, side, b, res["seconds"]), file=sys.stderr)

        ref = "official-b%d" % official_batches[0]
        agree = {}
        for side, b in configs:
            if (side, b) != ("official", official_batches[0]):
                agree["%s-b%d" % (side, b)] = diff(work, ref, "%s-b%d" % (side, b), rels)

        med = {c: statistics.median(v) for c, v in times.items()}
        n = args.images
        rows = []
        print("fmnist-ddpm C-PiGDM, sr4 (block mean), %d NFE, w %g, lambda %g, start %g; %d images; %d threads; "
              "median of %d interleaved runs" % (args.steps, args.guidance, args.lam, args.start_time, n,
                                                 args.threads, args.runs))
        print("official %s @ %s, torch %s; conjure %s" % (
            "mandt-lab/c-pigdm", meta.get("commit", "?")[:12], meta.get("torch", "?"), conjure))
        print("%-22s %10s %10s   runs (s)" % ("", "seconds", "images/s"))
        for side, b in configs:
            s = med[(side, b)]
            print("%-22s %10.3f %10.2f   %s" % ("%s batch %d" % (side, b), s, n / s,
                                                " ".join("%.2f" % v for v in times[(side, b)])))
            rows.append({"side": side, "batch": b, "median_seconds": s, "images_per_second": n / s,
                         "runs_seconds": times[(side, b)]})
        ratios = {}
        for bo in official_batches:
            for bc in conjure_batches:
                k = "conjure_b%d_over_official_b%d" % (bc, bo)
                ratios[k] = med[("official", bo)] / med[("conjure", bc)]
                print("speed-up conjure batch %d vs official batch %d: %.2fx" % (bc, bo, ratios[k]))
        for k, (mx, mean) in agree.items():
            print("agreement %s vs %s: max |dx| %.3g, mean |dx| %.3g" % (k, ref, mx, mean))
        if args.json:
            Path(args.json).write_text(json.dumps({
                "images": n, "threads": args.threads, "runs": args.runs, "steps": args.steps,
                "guidance": args.guidance, "lambda": args.lam, "start_time": args.start_time,
                "official_commit": meta.get("commit"), "torch": meta.get("torch"), "rows": rows,
                "speedups": ratios,
                "agreement": {k: {"max_abs": mx, "mean_abs": mean} for k, (mx, mean) in agree.items()},
            }, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
