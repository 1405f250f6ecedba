"""Run the official C-PiGDM sampler of mandt-lab/c-pigdm on the CPU with the fmnist-ddpm network.

The official code is not copied into this repository (its repository carries no license; see README.md
beside this file): ``import_official(checkout)`` imports it from a checkout of the pinned commit.  What
this module adds, and nothing else:

* imports: ``algos/__init__.py`` and ``models/__init__.py`` import every algorithm and Hydra / DDP model
  builders; only the modules the C-PiGDM sampler needs are imported (cpgdm.py, its base class, the
  VP-SDE, the classifier-guidance model wrapper, the degradations, ``get_timesteps``), with those two
  packages registered empty;
* the degradation on the CPU: ``build_one_degredation_model`` hard-codes ``torch.device("cuda")``; the
  sampler's ``build_degredation_model`` is replaced by one that builds the same official operator
  (``SuperResolution`` for ``srN``) on the CPU;
* the network call: the official ``ClassifierGuidanceModel`` calls ``model(x, t, y)``; ``EpsModel`` calls
  the fmnist-ddpm UNet as ``unet(x, t)`` (class-unconditional, so y is None);
* the initial noise: ``initialize`` draws ``torch.randn_like(x)``; ``run_official`` makes that draw return
  the given noise (the same array `conjure run` reads through ``sampler.init_noise``), for that call only;
* the loop of main.py without its dataset, metrics and Hydra: per batch ``preprocess``, ``get_timesteps``,
  ``y_0`` (here the given measurement instead of ``H.H(x)``), ``algo.sample(x, y, ts, y_0=y_0)``, keep
  ``xt_s[0]``; one sampler object for the run, so the Phi coefficients are computed at the first batch.
"""

import contextlib
import subprocess
import sys
import types
from pathlib import Path

import torch
import torch.nn as nn

OFFICIAL_REPO = "https://github.com/mandt-lab/c-pigdm"
OFFICIAL_COMMIT = "11a5b2b9287d964a4385d5194417897cc11608d8"


class Official:
    """The official modules used here."""

    def __init__(self, cpgdm, vpsde, cgm, degredations, functions, commit):
        self.cpgdm, self.vpsde, self.cgm = cpgdm, vpsde, cgm
        self.degredations, self.functions, self.commit = degredations, functions, commit


def import_official(checkout):
    """Import the official C-PiGDM modules from a checkout of mandt-lab/c-pigdm (its root folder)."""
    root = Path(checkout).resolve()
    code = root / "diffusion"
    if not (code / "algos" / "continuous" / "ode" / "cpgdm.py").is_file():
        raise FileNotFoundError(
            "%s is not a checkout of %s (no diffusion/algos/continuous/ode/cpgdm.py); get it with\n"
            "  git clone %s && git -C c-pigdm checkout %s" % (root, OFFICIAL_REPO, OFFICIAL_REPO, OFFICIAL_COMMIT))
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown (not a git checkout)"
    if str(code) not in sys.path:
        sys.path.insert(0, str(code))
    for pkg in ("algos", "models"):
        if pkg not in sys.modules:
            mod = types.ModuleType(pkg)
            mod.__path__ = [str(code / pkg)]
            sys.modules[pkg] = mod
    import importlib

    cpgdm = importlib.import_module("algos.continuous.ode.cpgdm")
    vpsde = importlib.import_module("models.vpsde")
    cgm = importlib.import_module("models.classifier_guidance_model")
    degredations = importlib.import_module("utils.degredations")
    functions = importlib.import_module("utils.functions")
    return Official(cpgdm, vpsde, cgm, degredations, functions, commit)


class EpsModel(nn.Module):
    """The network as the official model wrapper calls it: ``model(x, t, y)`` -> eps."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x, t, y=None):
        return self.unet(x, t)


def official_config(w, lam, t_start, t_end, steps, scale, size=32, channels=1, num_eps=1e-6):
    """The Hydra config keys the sampler, the model wrapper and get_timesteps read (main.py's cfg)."""
    from omegaconf import OmegaConf

    return OmegaConf.create({
        "algo": {"name": "cpgdm", "w": float(w), "lam": float(lam), "num_eps": float(num_eps),
                 "deg": "sr%d" % scale, "sigma_y": 0.0, "denoise": False},
        "exp": {"t_start": float(t_start), "t_end": float(t_end), "num_steps": int(steps), "stride": "uniform"},
        "dataset": {"image_size": size, "channels": channels},
        "model": {"class_cond": False},
        "diffusion": {"beta_min": 0.1, "beta_max": 20.0, "n_timesteps": 1000},
    })


def build_sampler(official, unet, cfg):
    """``ConjugatePGDMSampler(ClassifierGuidanceModel(model, None, VPSDE, cfg), cfg)`` on the CPU."""
    deg = official.degredations

    def build_on_cpu(cfg):
        name = cfg.algo.deg
        if not name.startswith("sr"):
            raise ValueError("only the srN degradations are adapted to the CPU here, not %s" % name)
        return deg.SuperResolution(cfg.dataset.channels, cfg.dataset.image_size, int(name[2:]), torch.device("cpu"))

    official.cpgdm.build_degredation_model = build_on_cpu
    d = cfg.diffusion
    sde = official.vpsde.VPSDE(beta_min=d.beta_min, beta_max=d.beta_max, n_timesteps=d.n_timesteps)
    model = official.cgm.ClassifierGuidanceModel(EpsModel(unet), None, sde, cfg)
    return official.cpgdm.ConjugatePGDMSampler(model, cfg)


@contextlib.contextmanager
def fixed_randn_like(noise):
    """``torch.randn_like`` returns ``noise`` (same shape required) while the block runs."""
    orig = torch.randn_like

    def draw(x, *args, **kwargs):
        if tuple(x.shape) != tuple(noise.shape):
            raise ValueError("initial noise %s for a batch of %s" % (tuple(noise.shape), tuple(x.shape)))
        return noise.to(dtype=x.dtype)

    torch.randn_like = draw
    try:
        yield
    finally:
        torch.randn_like = orig


def run_official(official, algo, cfg, y01, noise, batch_size, on_batch=None):
    """main.py's loop over batches: y01 [N, C, h, w] measurements in [0, 1], noise [N, C, H, W] the initial
    noise; returns the restorations [N, C, H, W] (xt_s[0], in [-1, 1]).  ``on_batch(i0, x)`` is called
    with each batch's result (to write it)."""
    fn = official.functions
    n, c = y01.shape[0], y01.shape[1]
    size = cfg.dataset.image_size
    outs = []
    for i0 in range(0, n, batch_size):
        y_img = fn.preprocess(y01[i0:i0 + batch_size])  # [0, 1] -> [-1, 1]
        b = y_img.shape[0]
        ts = fn.get_timesteps(cfg)
        y_0 = y_img.reshape(b, -1)  # the official H.H(x) layout for srN: the b x (C h w) block means
        x = torch.zeros(b, c, size, size)  # main.py's clean x: only its shape reaches initialize()
        labels = torch.zeros(b, dtype=torch.long)
        with fixed_randn_like(noise[i0:i0 + b]):
            xt_s, _ = algo.sample(x, labels, ts, y_0=y_0)
        out = xt_s[0]
        if on_batch is not None:
            on_batch(i0, out)
        outs.append(out)
    return torch.cat(outs)
