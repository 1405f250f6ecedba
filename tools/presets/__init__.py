"""Architecture presets of tools/export_onnx.py: each builds a `Prepared` (network, card, time sampler)."""

from . import adm, diffusers_unet2d, fmnist_unet, ncsnpp_rf

PRESETS = {
    "adm": adm,
    "diffusers-unet2d": diffusers_unet2d,
    "fmnist-unet": fmnist_unet,
    "ncsnpp-rf": ncsnpp_rf,
}
