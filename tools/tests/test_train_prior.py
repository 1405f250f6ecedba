"""Tests of tools/train_prior.py's crop size (--patch) and its record of training runs.

Run with the exporter's environment: ``python -m pytest tools/tests/test_train_prior.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

TOOLS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TOOLS))

import train_prior as tp  # noqa: E402


@pytest.fixture()
def photos(tmp_path):
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(90, 120), (70, 70)]):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(tmp_path / f"p{i}.png")
    return tmp_path


@pytest.mark.parametrize("patch", [32, 48, 64])
def test_patches_have_the_requested_size_and_come_from_the_photos(photos, patch):
    data = tp.Patches(photos, scales=(1024,), seed=0, patch=patch)
    x = data.batch(5)
    assert x.shape == (5, 3, patch, patch)
    assert x.min() >= -1 and x.max() <= 1
    # each crop is a window of one of the photos (possibly mirrored), at the value map u8 / 127.5 - 1
    srcs = [torch.from_numpy(a.copy()).permute(2, 0, 1).float() / 127.5 - 1 for a in data.images]
    for crop in x:
        found = False
        for s in srcs:
            for c in (crop, crop.flip(-1)):
                win = s.unfold(1, patch, 1).unfold(2, patch, 1)  # 3, H', W', p, p
                d = (win - c[:, None, None]).abs().amax(dim=(0, 3, 4))
                found |= bool((d < 1e-6).any())
        assert found


def test_small_crops_train_the_same_network(photos, tmp_path):
    # the UNet is convolutional: a 32x32 run resumes a checkpoint and records both runs
    out = tmp_path / "run"
    common = ["--kind", "ddpm", "--data", str(photos), "--out", str(out), "--ch", "8", "--mults", "1,2",
              "--samples", "0", "--threads", "1", "--save-every", "1e9"]
    tp.main(common + ["--max-steps", "2", "--batch", "2"])
    tp.main(common + ["--max-steps", "5", "--batch", "4", "--patch", "32"])
    st = torch.load(out / "ddpm.pt", weights_only=False)
    assert st["step"] == 5
    assert [(r["first_step"], r["patch"], r["batch"]) for r in st["runs"]] == [(1, 64, 2), (3, 32, 4)]
    assert tp.runs_text(st) == "batch 2 of 64x64 crops; from step 3 batch 4 of 32x32 crops"


def test_runs_text_of_an_old_checkpoint_and_of_a_repeated_run():
    assert tp.runs_text({"batch": 8}) == "batch 8 of 64x64 crops"
    runs = [dict(first_step=1, patch=64, batch=8), dict(first_step=336, patch=32, batch=8),
            dict(first_step=900, patch=32, batch=8)]
    assert tp.runs_text({"batch": 8, "runs": runs}) == "batch 8 of 64x64 crops; from step 336 batch 8 of 32x32 crops"


@pytest.mark.parametrize("patch", ["30", "8"])
def test_bad_patch_is_refused(photos, tmp_path, patch):
    with pytest.raises(SystemExit):
        tp.main(["--kind", "ddpm", "--data", str(photos), "--out", str(tmp_path / "r"), "--patch", patch])
