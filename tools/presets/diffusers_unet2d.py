"""diffusers `UNet2DModel` (the DDPM UNet of Ho et al. 2020 as ported to diffusers), e.g. DDPM CelebA-HQ-256.

The architecture comes from the `diffusers` package itself. ``--checkpoint`` is a local diffusers model
directory (``config.json`` + ``diffusion_pytorch_model.safetensors``/``.bin``, at its root or in ``unet/``,
as saved by ``save_pretrained`` or downloaded from a hub repository such as ``google/ddpm-ema-celebahq-256``),
or a weights file together with ``--config config.json``.

The card's schedule and parameterization come from the scheduler config (``--scheduler-config``, else
``scheduler_config.json`` / ``scheduler/scheduler_config.json`` beside the model): ``beta_schedule: linear``
becomes ``ddpm-linear``; any other schedule diffusers' DDPMScheduler knows is written out as an
``alphas-cumprod`` file; ``prediction_type`` epsilon → eps, sample → x0 (v_prediction has no card entry and
is refused). Without a scheduler config the DDPMScheduler defaults are used (linear 1e-4..0.02, 1000 steps,
epsilon), and the card says so. The time input is the step index.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .common import load_config_file, load_strict, randomize_zero_params, torch_load

HELP = "config.json of a UNet2DModel (or pass a diffusers model directory as --checkpoint)"

#: Reduced instance with the block types of DDPM CelebA-HQ-256 (ResNet down/up blocks, attention blocks,
#: conv downsampling with padding 0, flip_sin_to_cos False, freq_shift 1) at 32x32.
REDUCED = dict(
    sample_size=32,
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=None,
    flip_sin_to_cos=False,
    freq_shift=1,
    downsample_padding=0,
    center_input_sample=False,
    time_embedding_type="positional",
)


class _Wrapped(torch.nn.Module):
    def __init__(self, net: torch.nn.Module, channels: int):
        super().__init__()
        self.net = net
        self.channels = channels

    def forward(self, x, t):
        return self.net(x, t, return_dict=False)[0][:, : self.channels]


def _find_scheduler_config(checkpoint: Path | None, explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    if checkpoint is None:
        return None
    base = checkpoint if checkpoint.is_dir() else checkpoint.parent
    for cand in (base / "scheduler_config.json", base / "scheduler" / "scheduler_config.json",
                 base.parent / "scheduler" / "scheduler_config.json"):
        if cand.is_file():
            return cand
    return None


def schedule_card(sched_cfg: dict | None):
    """(card schedule dict, parameterization, extra files, notes) from a diffusers scheduler config."""
    from diffusers import DDPMScheduler

    notes = []
    if sched_cfg is None:
        sched_cfg = {}
        notes.append("No scheduler config given: DDPMScheduler defaults (linear 1e-4..0.02, 1000, epsilon).")
    pred = sched_cfg.get("prediction_type", "epsilon")
    param = {"epsilon": "eps", "sample": "x0"}.get(pred)
    if param is None:
        raise ValueError(f"diffusers-unet2d: prediction_type {pred!r} is not supported (epsilon or sample)")
    kind = sched_cfg.get("beta_schedule", "linear")
    n = int(sched_cfg.get("num_train_timesteps", 1000))
    if sched_cfg.get("trained_betas") is None and kind == "linear":
        sched = {"type": "ddpm-linear", "beta_start": float(sched_cfg.get("beta_start", 0.0001)),
                 "beta_end": float(sched_cfg.get("beta_end", 0.02)), "timesteps": n}
        return sched, param, {}, notes
    keys = {k: v for k, v in sched_cfg.items() if not k.startswith("_")}
    s = DDPMScheduler.from_config(keys)
    # diffusers keeps betas in float32; the product is taken in float64 to add no rounding of its own
    ac = np.cumprod(1.0 - s.betas.double().numpy())
    text = "\n".join(repr(float(a)) for a in ac) + "\n"
    notes.append(f"Schedule {kind!r} from the scheduler config, written as alphas_cumprod.txt.")
    return {"type": "alphas-cumprod", "file": "alphas_cumprod.txt"}, param, {"alphas_cumprod.txt": text}, notes


def build(config=None, checkpoint=None, reduced=False, scheduler_config=None, **_):
    from diffusers import UNet2DModel

    from export_onnx import Prepared, diffusion_index_t

    checkpoint = Path(checkpoint) if checkpoint is not None else None
    if reduced:
        if config is not None:
            raise ValueError("--reduced builds the built-in reduced config; do not pass --config with it")
        net = UNet2DModel(**REDUCED)
    elif checkpoint is not None and checkpoint.is_dir() and config is None:
        sub = "unet" if (checkpoint / "unet" / "config.json").is_file() else None
        net = UNet2DModel.from_pretrained(str(checkpoint), subfolder=sub, local_files_only=True)
    else:
        if config is None:
            raise ValueError("diffusers-unet2d: pass --config config.json (or a model directory as --checkpoint)")
        cfg = load_config_file(config)
        net = UNet2DModel.from_config({k: v for k, v in cfg.items() if not k.startswith("_")})
        if checkpoint is not None:
            state = torch_load(checkpoint)
            load_strict(net, state, f"diffusers checkpoint {checkpoint}")
    if checkpoint is None:
        randomize_zero_params(net)
    cfg = net.config
    if getattr(cfg, "num_class_embeds", None) or getattr(cfg, "class_embed_type", None):
        raise ValueError("diffusers-unet2d: class-conditional UNets are not supported")
    c_in, c_out = int(cfg.in_channels), int(cfg.out_channels)
    if c_out not in (c_in, 2 * c_in):
        raise ValueError(f"diffusers-unet2d: out_channels {c_out} must be in_channels {c_in} (or twice it)")
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)

    sched_path = _find_scheduler_config(checkpoint, scheduler_config)
    sched_cfg = json.loads(Path(sched_path).read_text()) if sched_path else None
    if reduced and sched_cfg is None:
        sched_cfg = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                     "num_train_timesteps": 1000, "prediction_type": "epsilon"}
    schedule, param, extra, notes = schedule_card(sched_cfg)
    card = {
        "kind": "diffusion",
        "parameterization": param,
        "schedule": schedule,
        "time_input": "index",
        "image": {"channels": c_in, "height": int(h), "width": int(w), "value_range": [-1, 1]},
    }
    n = schedule.get("timesteps", int((sched_cfg or {}).get("num_train_timesteps", 1000)))
    notes.insert(0, "diffusers UNet2DModel" + (" (learned variance channels dropped)." if c_out != c_in else "."))
    return Prepared(module=_Wrapped(net.float().eval(), c_in), card=card, sample_t=diffusion_index_t(n),
                    notes=notes, extra_files=extra)
