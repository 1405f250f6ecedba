"""ADM / guided-diffusion UNet (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis").

The architecture is the one of openai/guided-diffusion, installed from PyPI as `guided-diffusion-sdk`
(package `guided_diffusion`, built through its own `script_util.create_model`), so public checkpoints load
with their original parameter names:

* ``imagenet256-uncond``: ``256x256_diffusion_uncond.pt`` (guided-diffusion's unconditional ImageNet-256 model,
  the flags of its README: attention 32,16,8, 256 channels, 2 res blocks, 64 head channels, learn_sigma,
  scale-shift norm, resblock up/down).
* ``ffhq256``: ``ffhq_10m.pt`` of DPS (Chung et al. 2023; configs/model_config.yaml: 128 channels, 1 res block,
  attention at 16, 64 head channels, learn_sigma, scale-shift norm, resblock up/down).
* a YAML/JSON file of `create_model` keyword arguments (plus ``diffusion_steps``, ``noise_schedule``), for
  other unconditional ADM checkpoints.

All are ε-prediction models of the linear DDPM schedule (β from 1e-4 to 0.02 over 1000 steps) that take the
step index as time input; with learn_sigma the network also outputs the variance interpolation v in
channels C..2C−1, which conjure does not use: the exported graph keeps only the first C (ε) channels.
Class-conditional models are refused (conjure's graphs have no label input).
"""

from __future__ import annotations

from pathlib import Path

import torch

from .common import load_config_file, load_strict, randomize_zero_params, strip_prefix, torch_load

HELP = "imagenet256-uncond (default) | ffhq256 | FILE.yaml/json of guided_diffusion create_model kwargs"

_BASE = dict(
    channel_mult="",
    learn_sigma=True,
    class_cond=False,
    use_checkpoint=False,
    num_heads=4,
    num_head_channels=64,
    num_heads_upsample=-1,
    use_scale_shift_norm=True,
    dropout=0.0,
    resblock_updown=True,
    use_fp16=False,
    use_new_attention_order=False,
)

CONFIGS = {
    "imagenet256-uncond": dict(_BASE, image_size=256, num_channels=256, num_res_blocks=2,
                               attention_resolutions="32,16,8"),
    "ffhq256": dict(_BASE, image_size=256, num_channels=128, num_res_blocks=1, attention_resolutions="16"),
    # Reduced: same blocks (scale-shift ResBlocks, resblock up/down through nearest upsampling and average
    # pooling, multi-head attention, learn_sigma) at 32x32 with 32/64 channels.
    "reduced": dict(_BASE, image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                    attention_resolutions="16", num_head_channels=16),
}


class _EpsOnly(torch.nn.Module):
    """Keep the first C output channels (ε) of a learn_sigma ADM network."""

    def __init__(self, net: torch.nn.Module, channels: int):
        super().__init__()
        self.net = net
        self.channels = channels

    def forward(self, x, t):
        return self.net(x, t)[:, : self.channels]


def resolve_config(config: str | None, reduced: bool) -> dict:
    if reduced:
        if config not in (None, "reduced"):
            raise ValueError("--reduced builds the built-in reduced config; do not pass --config with it")
        return dict(CONFIGS["reduced"])
    name = config or "imagenet256-uncond"
    if name in CONFIGS:
        return dict(CONFIGS[name])
    if not Path(name).is_file():
        raise ValueError(f"adm: unknown config {name!r} (expected one of {sorted(CONFIGS)} or a file)")
    cfg = dict(_BASE)
    cfg.update(load_config_file(name))
    return cfg


def build(config=None, checkpoint=None, reduced=False, **_):
    from export_onnx import Prepared, diffusion_index_t
    from guided_diffusion.script_util import create_model

    cfg = resolve_config(config, reduced)
    steps = int(cfg.pop("diffusion_steps", 1000))
    schedule = cfg.pop("noise_schedule", "linear")
    if schedule != "linear":
        raise ValueError(f"adm: noise_schedule {schedule!r} is not supported (only 'linear')")
    if cfg.get("class_cond"):
        raise ValueError("adm: class-conditional models are not supported (the graphs have no label input)")
    cfg["use_fp16"] = False  # export in float32 whatever the checkpoint was trained with
    known = create_model.__code__.co_varnames[: create_model.__code__.co_argcount]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise ValueError(f"adm: unknown create_model arguments {unknown}")
    net = create_model(**cfg)
    if checkpoint is not None:
        state = torch_load(Path(checkpoint))
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        load_strict(net, strip_prefix(state, "module."), f"adm checkpoint {checkpoint}")
    else:
        randomize_zero_params(net)
    net = net.float().eval()
    channels = 3  # guided_diffusion's create_model is RGB
    module = _EpsOnly(net, channels) if cfg["learn_sigma"] else net
    # guided_diffusion's linear schedule: betas linspace(scale·1e-4, scale·0.02, N) with scale = 1000/N.
    scale = 1000.0 / steps
    card = {
        "kind": "diffusion",
        "parameterization": "eps",
        "schedule": {"type": "ddpm-linear", "beta_start": scale * 0.0001, "beta_end": scale * 0.02,
                     "timesteps": steps},
        "time_input": "index",
        "image": {"channels": channels, "height": cfg["image_size"], "width": cfg["image_size"],
                  "value_range": [-1, 1]},
    }
    notes = ["ADM / guided-diffusion UNet (Dhariwal & Nichol 2021), eps-prediction; learn_sigma variance "
             "channels dropped." if cfg["learn_sigma"] else "ADM / guided-diffusion UNet, eps-prediction."]
    return Prepared(module=module, card=card, sample_t=diffusion_index_t(steps), notes=notes)
