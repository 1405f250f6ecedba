"""Helpers shared by the presets: reading config files and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def load_config_file(path: str | Path) -> dict:
    """A YAML or JSON mapping."""
    p = Path(path)
    text = p.read_text()
    if p.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"config {p} must hold a mapping, got {type(data).__name__}")
    return data


def torch_load(path: Path):
    """Load a checkpoint on the CPU; plain tensors first (safe), full unpickling only if that fails."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception:  # older checkpoints that pickle more than tensors (e.g. optimizer state objects)
        return torch.load(str(path), map_location="cpu", weights_only=False)


def strip_prefix(state: dict, prefix: str) -> dict:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_strict(module: torch.nn.Module, state: dict, what: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{what}: checkpoint does not match the architecture "
            f"(missing {len(missing)}: {missing[:5]}, unexpected {len(unexpected)}: {unexpected[:5]}); "
            "check --config"
        )


@torch.no_grad()
def randomize_zero_params(module: torch.nn.Module, seed: int = 0) -> int:
    """Give parameters that a random init leaves identically zero random values.

    ADM, NCSN++ and diffusers zero-initialise output convolutions (and NCSN++ its attention outputs), so a
    freshly initialised network would output exactly 0 and the ONNX-vs-torch check would prove nothing.
    Weights get N(0, 1/fan_in), vectors N(0, 0.1²). Returns how many parameters were changed.
    """
    g = torch.Generator().manual_seed(seed)
    changed = 0
    for p in module.parameters():
        if p.numel() and not torch.any(p):
            if p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            changed += 1
    return changed
