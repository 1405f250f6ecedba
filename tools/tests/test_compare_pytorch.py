"""Smoke tests of tools/compare_pytorch.py's glue: the PyTorch fmnist-ddpm network read from the shipped
ONNX weights, and (when a checkout of mandt-lab/c-pigdm is given in $CPIGDM_DIR) the official C-PiGDM loop
on one image with the injected initial noise."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")

TOOLS = Path(__file__).resolve().parent.parent
ROOT = TOOLS.parent
sys.path.insert(0, str(TOOLS / "official_cpigdm"))

from fmnist_unet import FmnistUNet, load_fmnist_unet, state_dict_from_onnx  # noqa: E402

MODEL = ROOT / "models" / "fmnist-ddpm"


def test_unet_from_onnx_weights_matches_onnxruntime():
    # load_fmnist_unet compares with ONNX Runtime itself and raises past 1e-4.
    net = load_fmnist_unet(MODEL, check=True)
    n_params = sum(p.numel() for p in net.parameters())
    assert n_params > 1_000_000
    # Every GroupNorm got the exported affine parameters, not the identity it is initialised with.
    norms = [m for m in net.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 36
    assert all(not torch.all(m.weight == 1) for m in norms)


def test_swapped_groupnorm_parameters_change_the_output():
    # The normalisations' parameters are matched by position: a wrong match must show in the output.
    net = FmnistUNet()
    state = state_dict_from_onnx(net, MODEL / "denoiser.onnx")
    good = FmnistUNet()
    good.load_state_dict(state)
    a, b = "down.0.n1", "down.1.n1"
    state[f"{a}.weight"], state[f"{b}.weight"] = state[f"{b}.weight"], state[f"{a}.weight"]
    net.load_state_dict(state)
    x, t = torch.randn(1, 1, 32, 32), torch.tensor([300.0])
    with torch.no_grad():
        assert (net.eval()(x, t) - good.eval()(x, t)).abs().max() > 1e-3


@pytest.mark.skipif(not os.environ.get("CPIGDM_DIR"), reason="set CPIGDM_DIR to a checkout of mandt-lab/c-pigdm")
def test_official_loop_on_one_image_uses_the_given_noise():
    pytest.importorskip("torchdiffeq")
    pytest.importorskip("omegaconf")
    import adapter

    official = adapter.import_official(os.environ["CPIGDM_DIR"])
    net = load_fmnist_unet(MODEL, check=False)
    cfg = adapter.official_config(15.0, 0.0, 0.6, 0.999, 5, 4)
    from PIL import Image

    y = np.asarray(Image.open(sorted((ROOT / "examples" / "sr4-average").glob("*.png"))[0]).convert("L"))
    y01 = torch.from_numpy(y.astype(np.float32)[None, None] / 255.0)
    z = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 1, 32, 32)))
    runs = []
    for noise in (z, z, -z):
        algo = adapter.build_sampler(official, net, cfg)
        runs.append(adapter.run_official(official, algo, cfg, y01, noise, 1))
    x = runs[0]
    assert x.shape == (1, 1, 32, 32) and torch.isfinite(x).all()
    assert torch.equal(runs[0], runs[1])  # the noise is what we gave, not a fresh draw
    assert (runs[0] - runs[2]).abs().max() > 1e-3
    # The restoration is consistent with the measurement: its 4x4 block means are close to y.
    means = torch.nn.functional.avg_pool2d(x.float(), 4)
    assert (means - (y01 * 2 - 1)).abs().mean() < 0.1
