"""Rectified-flow NCSN++ (Liu, Gong & Liu 2023, "Flow Straight and Fast", github RectifiedFlow/ImageGeneration).

The network is NCSN++ (tools/presets/ncsnpp.py). RectifiedFlow calls it as ``model(x_t, 999·t)`` with
x_t = t·x₁ + (1 − t)·z (t = 0 noise, t = 1 data) and trains it to predict the velocity x₁ − z. In its
CelebA-HQ-256 config (``configs/rectified_flow/celeba_hq_pytorch_rf_gaussian.py`` on
``default_lsun_configs``) the time input is embedded as Gaussian Fourier features of log(999·t)
(``embedding_type: fourier``, scale 16) and ``scale_by_sigma: True`` divides the output by that same 999·t.
Both are part of the trained network and are kept in the exported graph, so the graph's time input is
999·t: the card says ``time_input: index`` with the rectified-flow schedule, which conjure reads as
(N − 1)·t with N = 1000 (src/schedules TimeInput::flow).

Checkpoints: RectifiedFlow/score_sde ``checkpoint_*.pth`` (``{'model', 'ema', 'optimizer', 'step'}``, keys
prefixed ``module.``); by default the EMA weights (``ema.shadow_params``, in the order of the trainable
parameters) are used, as RectifiedFlow's sampling does; ``--no-ema`` keeps the raw ones. A bare state dict
also loads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import load_config_file, load_strict, strip_prefix, torch_load
from .ncsnpp import NCSNpp

HELP = "celebahq256 (default) | FILE.yaml/json with 'model:' and 'data:' sections of a score_sde config"

#: RectifiedFlow configs/rectified_flow/celeba_hq_pytorch_rf_gaussian.py over default_lsun_configs.py.
CELEBAHQ256 = dict(
    image_size=256, num_channels=3, centered=True,
    sigma_max=378.0, sigma_min=0.01, num_scales=2000, dropout=0.0, embedding_type="fourier",
    scale_by_sigma=True, nf=128, ch_mult=(1, 1, 2, 2, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
    resamp_with_conv=True, conditional=True, fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
    resblock_type="biggan", progressive="output_skip", progressive_input="input_skip",
    progressive_combine="sum", attention_type="ddpm", init_scale=0.0, fourier_scale=16.0, conv_size=3,
)
#: Same blocks (BigGAN resblocks with FIR up/down, input/output pyramids, attention at 16, Fourier time
#: embedding, scale_by_sigma) at 32x32 with 16/32/32 channels. init_scale 1 instead of 0 only changes the
#: random initialisation, so that no branch starts at ~0 and the self-check sees every path.
REDUCED = dict(CELEBAHQ256, image_size=32, nf=16, ch_mult=(1, 2, 2), num_res_blocks=1, init_scale=1.0,
               num_scales=10)
CONFIGS = {"celebahq256": CELEBAHQ256, "reduced": REDUCED}
_DATA_KEYS = ("image_size", "num_channels", "centered")


def resolve_config(config: str | None, reduced: bool) -> dict:
    if reduced:
        if config not in (None, "reduced"):
            raise ValueError("--reduced builds the built-in reduced config; do not pass --config with it")
        return dict(REDUCED)
    name = config or "celebahq256"
    if name in CONFIGS:
        return dict(CONFIGS[name])
    if not Path(name).is_file():
        raise ValueError(f"ncsnpp-rf: unknown config {name!r} (expected one of {sorted(CONFIGS)} or a file)")
    raw = load_config_file(name)
    cfg = dict(CELEBAHQ256)
    cfg.update(raw.get("model", {}))
    cfg.update({k: v for k, v in raw.get("data", {}).items() if k in _DATA_KEYS})
    unknown = sorted(set(cfg) - set(CELEBAHQ256))
    if unknown:
        raise ValueError(f"ncsnpp-rf: unknown config keys {unknown}")
    if cfg.get("attention_type", "ddpm") != "ddpm":
        raise ValueError("ncsnpp-rf: only attention_type 'ddpm' is supported")
    return cfg


def load_checkpoint(net: NCSNpp, path: Path, ema: bool = True) -> str:
    ckpt = torch_load(path)
    state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else ckpt
    state = dict(strip_prefix(dict(state), "module."))
    sigmas = state.pop("sigmas", None)
    own = {k: v for k, v in net.state_dict().items() if k != "sigmas"}
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"ncsnpp-rf checkpoint {path}: does not match the architecture (missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}); check --config")
    load_strict(net, {**state, "sigmas": net.sigmas if sigmas is None or sigmas.shape != net.sigmas.shape
                      else sigmas}, f"ncsnpp-rf checkpoint {path}")
    if sigmas is not None and sigmas.shape != net.sigmas.shape:
        net.sigmas = sigmas.clone()
    if ema and isinstance(ckpt, dict) and isinstance(ckpt.get("ema"), dict) and "shadow_params" in ckpt["ema"]:
        shadow = ckpt["ema"]["shadow_params"]
        params = [p for p in net.parameters() if p.requires_grad]
        if len(shadow) != len(params) or any(s.shape != p.shape for s, p in zip(shadow, params)):
            raise ValueError(f"ncsnpp-rf checkpoint {path}: EMA parameters do not match the architecture")
        with torch.no_grad():
            for s, p in zip(shadow, params):
                p.copy_(s)
        return "EMA weights"
    return "raw weights"


def build(config=None, checkpoint=None, reduced=False, ema=True, **_):
    from export_onnx import Prepared, flow_index_t

    cfg = resolve_config(config, reduced)
    net = NCSNpp(cfg)
    notes = ["Rectified-flow NCSN++ (Liu et al. 2023); velocity prediction; the graph's time input is 999*t."]
    if checkpoint is not None:
        which = load_checkpoint(net, Path(checkpoint), ema=ema)
        notes.append(f"Weights: {which} of {Path(checkpoint).name}.")
    net = net.float().eval()
    size = int(cfg["image_size"])
    card = {
        "kind": "flow",
        "parameterization": "velocity",
        "schedule": {"type": "rectified-flow"},
        "time_input": "index",
        "image": {"channels": int(cfg["num_channels"]), "height": size, "width": size,
                  "value_range": [-1, 1] if cfg["centered"] else [0, 1]},
    }
    return Prepared(module=net, card=card, sample_t=flow_index_t(1000), notes=notes)
