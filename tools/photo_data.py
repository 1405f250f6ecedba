#!/usr/bin/env python3
"""Rebuild the photo priors' training data: the photo list, its train / held-out split and the resized photos.

One command on a Debian/Ubuntu machine with network access to the Debian archive::

    python3 tools/photo_data.py            # needs numpy, pillow, scikit-image (pip install numpy pillow scikit-image)

1. ``apt-get download`` the four wallpaper packages (no root, nothing installed) into ``--cache``
   (default ``~/.cache/conjure-photos``) and unpack them there with ``dpkg-deb -x``;
2. reads each photo's author and licence from the package (``/usr/share/doc/<pkg>/copyright``, and for
   plasma-workspace-wallpapers each wallpaper's ``metadata.json`` / ``metadata.desktop``) and, for
   scikit-image's bundled photos, from the ``skimage.data`` docstrings (restated in ``SKIMAGE`` below);
3. keeps only real photographs. The decision for every file was taken by looking at it and is recorded
   in ``DECISIONS`` (renders, gradients, low-poly art and illustrations are rejected, with the reason);
4. splits BY PHOTOGRAPH: the photos in ``HELD_OUT`` never contribute a training crop;
5. writes ``<cache>/train/*.png`` and ``<cache>/heldout/*.png`` (RGB, long side at most 1024 px, Lanczos),
   the list ``models/photo-ddpm/DATA.md`` (every file: package, author, licence, decision, split) and,
   with ``--examples``, the small held-out example photos under ``examples/photos/clean/`` and the photo
   study's images under ``examples/photos/study/`` (``test/``: a 256×256 centre crop of every held-out photo
   resized to a short side of 320 px; ``tune/``: 12 random 64×64 crops of 12 train photos (one tile each; crops with a standard deviation under
   0.08 are redrawn) at a long side of
   512 px, seed 0), read by ``pipelines/experiments/photo.yaml``.

``--check`` only verifies that the committed DATA.md is what the packages give (exit 1 if not).
"""

from __future__ import annotations

import argparse
import glob
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_MD = ROOT / "models" / "photo-ddpm" / "DATA.md"
EXAMPLES = ROOT / "examples" / "photos" / "clean"
STUDY = ROOT / "examples" / "photos" / "study"
#: The photo study's held-out test images: centre crop STUDY_TEST of each held-out photo resized to a short side
#: of STUDY_TEST_SHORT px; its tuning images: STUDY_TUNE_COUNT random STUDY_TUNE crops of train photos (long side
#: STUDY_TUNE_LONG px).
STUDY_TEST, STUDY_TEST_SHORT = 256, 320
STUDY_TUNE, STUDY_TUNE_LONG, STUDY_TUNE_COUNT = 64, 512, 12
PACKAGES = ["lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "plasma-workspace-wallpapers", "ukui-wallpapers"]
LONG_SIDE = 1024

PHOTO = "photo"
#: Every candidate file and what was decided after looking at it: (keep?, reason). Keys are
#: ``package/file`` (plasma: ``plasma-workspace-wallpapers/<Wallpaper>``, its largest image) or ``skimage/<name>``.
DECISIONS = {
    "lomiri-wallpapers-16.04/Bridge_by_Sander_Klootwijk.jpg": (True, "photograph: cables of a bridge, sky, shore"),
    "lomiri-wallpapers-16.04/Dragonfly_by_Bolly.jpg": (True, "photograph: leaves and a twig against the sky"),
    "lomiri-wallpapers-16.04/Picture_0B_by_freespace.jpg": (True, "photograph: a fig in a red bowl on concrete"),
    "lomiri-wallpapers-16.04/Picture_1A_by_freespace.jpg": (True, "photograph: paint brushes"),
    "lomiri-wallpapers-16.04/Wine_by_Jakkub_Mede.jpg": (True, "photograph: a room with a drum and wine"),
    "lomiri-wallpapers-16.04/aitzgorri_by_Aitzol_Berasategi.jpg": (True, "photograph: mountain, forest, meadow"),
    "lomiri-wallpapers-16.04/analogpattern_by_Peter_Nerlich.jpg": (True, "photograph of a textured surface in coloured light (checked at full size)"),
    "lomiri-wallpapers-16.04/free_by_Peter_Nerlich.jpg": (True, "photograph: a wooden bird under a lamp (checked at full size)"),
    "lomiri-wallpapers-16.04/friends_by_Aitzol_Berasategi.jpg": (True, "photograph: two dogs at a wooden door"),
    "lomiri-wallpapers-16.04/greentock_by_Peter_Nerlich.jpg": (True, "photograph: a wall clock"),
    "lomiri-wallpapers-16.04/life_by_Aitzol_Berasategi.jpg": (True, "photograph: a stream over rocks in a forest"),
    "lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg": (True, "photograph: mountains, path, meadow"),
    "lomiri-wallpapers-16.04/seeding_by_Clements_Engelhardt.jpg": (True, "photograph: dandelion clocks in a meadow"),
    "lomiri-wallpapers-16.04/sunset_by_Aitzol_Berasategi.jpg": (True, "photograph: sunset over hills"),
    "lomiri-wallpapers-16.04/umang_by_Abhishek_Mudgal.jpg": (False, "render: colour gradients"),
    "lomiri-wallpapers-20.04/Fossa_by_Jasper_Roks.jpg": (False, "render: abstract curved shapes"),
    "lomiri-wallpapers-20.04/Infinite-Sea_by_Aury88.jpg": (False, "digital art: stylised night sky and sea"),
    "lomiri-wallpapers-20.04/Kleiber_by_Lukas_Baubkus.jpg": (True, "photograph: a nuthatch on a tree trunk"),
    "lomiri-wallpapers-20.04/Painting-Colors_by__herobrine7gamer.jpg": (False, "illustration: flat colour stripes"),
    "ukui-wallpapers/2004default.jpg": (False, "render: 3-D ribbon"),
    "ukui-wallpapers/calla.png": (False, "illustration: stylised calla"),
    "ukui-wallpapers/city.png": (False, "illustration: flat shapes"),
    "ukui-wallpapers/desert.png": (False, "illustration: flat shapes"),
    "ukui-wallpapers/firstgeneration.jpg": (False, "illustration: mascot"),
    "ukui-wallpapers/fluent-color.png": (False, "render: colour gradients"),
    "ukui-wallpapers/focal-ubuntukylin.png": (False, "render: logo on a gradient"),
    "ukui-wallpapers/goldfish.png": (False, "illustration: stylised fish"),
    "ukui-wallpapers/rhythm.jpg": (False, "render: 3-D ribbon"),
    "ukui-wallpapers/rollpaper.png": (False, "illustration: flat shapes"),
    "ukui-wallpapers/string.jpg": (False, "render: swirl"),
    "ukui-wallpapers/the-mouse.jpg": (False, "illustration: glowing mouse"),
    "plasma-workspace-wallpapers/Altai": (False, "render: low-poly mountains"),
    "plasma-workspace-wallpapers/Autumn": (False, "painting / illustration"),
    "plasma-workspace-wallpapers/BytheWater": (True, "photograph: a jetty on a lake"),
    "plasma-workspace-wallpapers/Canopee": (False, "render: abstract tiles"),
    "plasma-workspace-wallpapers/Cascade": (False, "render: abstract tiles"),
    "plasma-workspace-wallpapers/Cluster": (False, "render: hexagons"),
    "plasma-workspace-wallpapers/ColdRipple": (True, "photograph: a pier in fog (nearly monochrome)"),
    "plasma-workspace-wallpapers/ColorfulCups": (True, "photograph: plastic cups from above"),
    "plasma-workspace-wallpapers/DarkestHour": (True, "photograph: a lake at dusk"),
    "plasma-workspace-wallpapers/Elarun": (False, "render: abstract curves"),
    "plasma-workspace-wallpapers/EveningGlow": (True, "photograph: rowing boats on a shore at sunset"),
    "plasma-workspace-wallpapers/FallenLeaf": (True, "photograph: autumn leaves"),
    "plasma-workspace-wallpapers/Flow": (False, "render: hexagons"),
    "plasma-workspace-wallpapers/FlyingKonqui": (False, "illustration: mascot"),
    "plasma-workspace-wallpapers/Grey": (True, "photograph: a building facade (black and white)"),
    "plasma-workspace-wallpapers/Honeywave": (False, "render: abstract shapes"),
    "plasma-workspace-wallpapers/IceCold": (False, "render: hexagons"),
    "plasma-workspace-wallpapers/Kay": (False, "render: geometric shapes"),
    "plasma-workspace-wallpapers/Kite": (True, "photograph: a kite in a cloudy sky"),
    "plasma-workspace-wallpapers/Kokkini": (False, "render: abstract waves"),
    "plasma-workspace-wallpapers/MilkyWay": (False, "render: particles"),
    "plasma-workspace-wallpapers/OneStandsOut": (True, "photograph: moss from above"),
    "plasma-workspace-wallpapers/Opal": (False, "render: low-poly surfaces"),
    "plasma-workspace-wallpapers/PastelHills": (False, "render: low-poly hills"),
    "plasma-workspace-wallpapers/Patak": (False, "render: low-poly stream"),
    "plasma-workspace-wallpapers/Path": (True, "photograph: a path in a spruce forest"),
    "plasma-workspace-wallpapers/SafeLanding": (False, "illustration: rocket landscape"),
    "plasma-workspace-wallpapers/Shell": (False, "render: low-poly shell"),
    "plasma-workspace-wallpapers/Volna": (False, "render: low-poly beach"),
    "plasma-workspace-wallpapers/summer_1am": (True, "photograph: a lake at dawn"),
    "skimage/astronaut": (True, "photograph: portrait (NASA)"),
    "skimage/chelsea": (True, "photograph: a cat"),
    "skimage/coffee": (True, "photograph: a coffee cup"),
    "skimage/rocket": (True, "photograph: a rocket launch"),
    "skimage/hubble_deep_field": (True, "photograph through a telescope: galaxies on black"),
    "skimage/retina": (True, "photograph: fundus of an eye"),
    "skimage/immunohistochemistry": (False, "micrograph of stained tissue, not a scene photograph"),
    "skimage/motorcycle_left": (False, "photograph, but no licence is stated in skimage.data"),
    "skimage/camera": (False, "grayscale: would teach the RGB prior that colourless images are likely"),
    "skimage/coins": (False, "grayscale (see camera)"),
    "skimage/moon": (False, "grayscale (see camera); no licence stated"),
    "skimage/grass": (False, "grayscale texture (see camera)"),
    "skimage/gravel": (False, "grayscale texture (see camera)"),
    "skimage/brick": (False, "grayscale texture (see camera)"),
    "skimage/clock": (False, "grayscale and motion-blurred"),
    "skimage/page": (False, "scanned text"),
    "skimage/horse": (False, "clip-art silhouette"),
    "skimage/colorwheel": (False, "synthetic"),
    "skimage/cell": (False, "hologram phase image"),
}

#: Held-out photographs (the test split): never cropped for training. Chosen for variety (portrait, animal,
#: object, meadow, mountains, forest) and, for the ones shipped under examples/, a licence that allows it.
HELD_OUT = [
    "skimage/astronaut",
    "skimage/chelsea",
    "skimage/coffee",
    "lomiri-wallpapers-16.04/seeding_by_Clements_Engelhardt.jpg",
    "lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg",
    "plasma-workspace-wallpapers/Path",
]

#: Example crops shipped in examples/photos/clean (held-out photos with CC0 / public-domain / CC-BY licences):
#: name -> (photo, scale of the photo's long side before cropping, crop box left, top, size).
EXAMPLES_CROPS = {
    "astronaut": ("skimage/astronaut", 512, 160, 40, 128),
    "chelsea": ("skimage/chelsea", 451, 150, 60, 128),
    "coffee": ("skimage/coffee", 600, 130, 60, 128),
    "dandelion": ("lomiri-wallpapers-16.04/seeding_by_Clements_Engelhardt.jpg", 512, 150, 60, 128),
    "mountains": ("lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg", 512, 300, 60, 128),
}

#: scikit-image's bundled photos: author and licence as their skimage.data docstrings state them.
SKIMAGE = {
    "astronaut": ("NASA (Eileen Collins portrait, NASA Great Images)", "public domain"),
    "chelsea": ("Stefan van der Walt", "CC0"),
    "coffee": ("Rachel Michetti (Pikolo Espresso Bar)", "CC0"),
    "rocket": ("SpaceX", "public domain"),
    "hubble_deep_field": ("NASA / HubbleSite", "public domain"),
    "retina": ("Mikael Häggström (Wikimedia Commons)", "CC0-1.0"),
    "immunohistochemistry": ("Center for Microscopy And Molecular Imaging", "no known copyright restrictions"),
    "motorcycle_left": ("Middlebury 2014 stereo benchmark", "not stated"),
    "camera": ("Lav Varshney", "CC0"),
    "coins": ("Brooklyn Museum", "no known copyright restrictions"),
    "moon": ("unknown", "not stated"),
    "grass": ("linolafett (DeviantArt)", "CC0"),
    "gravel": ("CC0Textures", "CC0"),
    "brick": ("CC0Textures", "CC0"),
    "clock": ("Stefan van der Walt", "public domain"),
    "page": ("unknown", "not stated"),
    "horse": ("Andreas Preuss (openclipart)", "CC0"),
    "colorwheel": ("unknown", "not stated"),
    "cell": ("Paul Müller et al.", "CC0"),
}
_SKIMAGE_LOADER = {"motorcycle_left": ("stereo_motorcycle", 0)}


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


def fetch_packages(cache: Path) -> Path:
    debs = cache / "debs"
    root = cache / "pkgs"
    debs.mkdir(parents=True, exist_ok=True)
    for pkg in PACKAGES:
        if not glob.glob(str(debs / f"{pkg}_*.deb")):
            print(f"apt-get download {pkg}", file=sys.stderr)
            run(["apt-get", "download", pkg], cwd=debs)
        (deb,) = glob.glob(str(debs / f"{pkg}_*.deb"))
        dest = root / pkg
        if not dest.exists():
            tmp = root / f".{pkg}.partial"
            run(["rm", "-rf", str(tmp)])
            tmp.mkdir(parents=True)
            run(["dpkg-deb", "-x", deb, str(tmp)])
            tmp.rename(dest)
    return root


def _lomiri_copyright(text: str) -> dict:
    """Files: 16.04/NAME / Copyright: ... / License: ... stanzas of a DEP-5 copyright file."""
    out = {}
    for stanza in text.split("\n\n"):
        f = re.search(r"^Files: (.+)$", stanza, re.M)
        c = re.search(r"^Copyright: (.+)$", stanza, re.M)
        lic = re.search(r"^License: (.+)$", stanza, re.M)
        if f and c and lic:
            for name in f.group(1).split():
                out[name.split("/")[-1]] = (c.group(1).strip(), lic.group(1).strip())
    return out


def _plasma_meta(folder: Path) -> tuple[str, str]:
    j = folder / "metadata.json"
    if j.exists():
        meta = json.loads(j.read_text())["KPlugin"]
        authors = ", ".join(a.get("Name", "") for a in meta.get("Authors", []))
        return authors, meta.get("License", "not stated")
    d = (folder / "metadata.desktop").read_text()
    author = re.search(r"^X-KDE-PluginInfo-Author=(.*)$", d, re.M)
    lic = re.search(r"^X-KDE-PluginInfo-License=(.*)$", d, re.M)
    return (author.group(1) if author else "not stated"), (lic.group(1) if lic else "not stated")


def candidates(root: Path) -> list[dict]:
    """Every candidate file with package, path, author, licence (from the packages themselves)."""
    items = []
    for pkg in ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04"):
        cr = _lomiri_copyright((root / pkg / f"usr/share/doc/{pkg}/copyright").read_text())
        for f in sorted((root / pkg / "usr/share/backgrounds").iterdir()):
            author, lic = cr[f.name]
            items.append(dict(key=f"{pkg}/{f.name}", package=pkg, path=str(f), author=author, license=lic))
    ukui = (root / "ukui-wallpapers/usr/share/doc/ukui-wallpapers/copyright").read_text()
    m = re.search(r"Files: \*\nCopyright: (.+)\nLicense: (.+)", ukui)
    for f in sorted((root / "ukui-wallpapers/usr/share/backgrounds").iterdir()):
        items.append(dict(key=f"ukui-wallpapers/{f.name}", package="ukui-wallpapers", path=str(f),
                          author=m.group(1), license=m.group(2)))
    base = root / "plasma-workspace-wallpapers/usr/share/wallpapers"
    for w in sorted(base.iterdir()):
        imgs = sorted((w / "contents/images").iterdir(), key=lambda p: p.stat().st_size)
        author, lic = _plasma_meta(w)
        items.append(dict(key=f"plasma-workspace-wallpapers/{w.name}", package="plasma-workspace-wallpapers",
                          path=str(imgs[-1]), author=author,
                          license=f"{lic} (wallpaper metadata; the package's copyright file says GPL-2+)"))
    for name, (author, lic) in SKIMAGE.items():
        items.append(dict(key=f"skimage/{name}", package="scikit-image (skimage.data)", path=name, author=author,
                          license=lic))
    return items


def load_rgb(item: dict):
    import numpy as np
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    if item["key"].startswith("skimage/"):
        import skimage.data

        fn, idx = _SKIMAGE_LOADER.get(item["path"], (item["path"], None))
        a = getattr(skimage.data, fn)()
        a = a[idx] if idx is not None else a
        a = np.asarray(a)
        if a.ndim == 2:
            a = np.stack([a] * 3, -1)
        return Image.fromarray(a.astype(np.uint8)[..., :3])
    return Image.open(item["path"]).convert("RGB")


def resize_long(im, long_side):
    from PIL import Image

    w, h = im.size
    s = long_side / max(w, h)
    if s >= 1:
        return im
    return im.resize((round(w * s), round(h * s)), Image.LANCZOS)


def data_md(items: list[dict]) -> str:
    kept = [i for i in items if DECISIONS[i["key"]][0]]
    n_train = sum(1 for i in kept if i["key"] not in HELD_OUT)
    lines = [
        "# Training data of the photo priors (photo-ddpm, photo-flow)",
        "",
        "Written by `python3 tools/photo_data.py`, which rebuilds this list, the split and the resized photos",
        "from the Debian packages " + ", ".join(f"`{p}`" for p in PACKAGES) + " (Debian bookworm) and",
        "scikit-image's bundled photos (`skimage.data`). Authors and licences are read from each package",
        "(`/usr/share/doc/<package>/copyright`; plasma: each wallpaper's metadata) and from the `skimage.data`",
        "docstrings. Every file was looked at; only real photographs are kept. The split is by photograph:",
        "a held-out photo never contributes a training crop. The photos themselves are not in the repository.",
        "",
        f"{len(items)} candidate files, {len(kept)} photographs kept: {n_train} train, {len(kept) - n_train} held out.",
        "",
        "| file | package | author | licence | kept | split | why |",
        "|---|---|---|---|---|---|---|",
    ]
    for i in items:
        keep, why = DECISIONS[i["key"]]
        split = ("held-out" if i["key"] in HELD_OUT else "train") if keep else "-"
        name = i["key"].split("/", 1)[1]
        lines.append(f"| {name} | {i['package']} | {i['author']} | {i['license']} | {'yes' if keep else 'no'} "
                     f"| {split} | {why} |")
    lines += ["", "Example crops in `examples/photos/clean/` (all from held-out photos):", ""]
    for name, (key, long_side, x, y, s) in EXAMPLES_CROPS.items():
        it = next(i for i in items if i["key"] == key)
        lines.append(f"* `{name}.png`: {s}×{s} crop at ({x}, {y}) of `{key.split('/', 1)[1]}` resized to a long "
                     f"side of {long_side} px; {it['author']}, {it['license']}")
    return "\n".join(lines) + "\n"


def write_scratch_masks() -> None:
    """Per-image masks of the scratch-inpainting example (examples/photos/inpaint-scratch-masks/<name>.png,
    white = known): four thin random scratches per photo, like the creases and scratches of an old print,
    drawn with a generator seeded by the photo's name so the masks are the same on every machine."""
    import zlib

    import numpy as np
    from PIL import Image, ImageDraw

    out = EXAMPLES.parent / "inpaint-scratch-masks"
    out.mkdir(parents=True, exist_ok=True)
    for name, (_, _, _, _, s) in EXAMPLES_CROPS.items():
        rng = np.random.default_rng(zlib.crc32(name.encode()))
        mask = Image.new("L", (s, s), 255)
        draw = ImageDraw.Draw(mask)
        for _ in range(4):
            x, y = rng.uniform(0, s, 2)
            angle = rng.uniform(0, np.pi)
            pts = []
            for _ in range(6):  # a gently bending stroke of about s/2 px
                pts.append((float(x), float(y)))
                angle += rng.normal(0, 0.25)
                x, y = x + np.cos(angle) * s / 12, y + np.sin(angle) * s / 12
            draw.line(pts, fill=0, width=int(rng.integers(1, 4)))
        mask.save(out / f"{name}.png", optimize=True)


def write_study(items: list[dict]) -> None:
    """The photo study's images (examples/photos/study/test and tune); see the module doc."""
    import numpy as np

    kept = [i for i in items if DECISIONS[i["key"]][0]]
    for sub in ("test", "tune"):
        (STUDY / sub).mkdir(parents=True, exist_ok=True)
        for old in (STUDY / sub).glob("*.png"):
            old.unlink()
    for it in kept:
        if it["key"] not in HELD_OUT:
            continue
        from PIL import Image

        im = load_rgb(it)
        k = STUDY_TEST_SHORT / min(im.size)
        im = im.resize((round(im.size[0] * k), round(im.size[1] * k)), Image.LANCZOS)
        w, h = im.size
        x, y = (w - STUDY_TEST) // 2, (h - STUDY_TEST) // 2
        name = it["key"].split("/", 1)[1].rsplit(".", 1)[0]
        im.crop((x, y, x + STUDY_TEST, y + STUDY_TEST)).save(STUDY / "test" / f"{name}.png", optimize=True)
    train = sorted((i for i in kept if i["key"] not in HELD_OUT), key=lambda i: i["key"])
    rng = np.random.default_rng(0)
    picks = rng.choice(len(train), size=STUDY_TUNE_COUNT, replace=False)
    for n, k in enumerate(sorted(picks)):
        it = train[k]
        assert it["key"] not in HELD_OUT
        im = resize_long(load_rgb(it), STUDY_TUNE_LONG)
        w, h = im.size
        for _ in range(20):  # skip near-flat crops (sky, gradients): they say little about a restoration
            x, y = int(rng.integers(0, w - STUDY_TUNE + 1)), int(rng.integers(0, h - STUDY_TUNE + 1))
            if np.asarray(im.crop((x, y, x + STUDY_TUNE, y + STUDY_TUNE)), dtype=float).std() / 255 >= 0.08:
                break
        name = it["key"].split("/", 1)[1].rsplit(".", 1)[0]
        im.crop((x, y, x + STUDY_TUNE, y + STUDY_TUNE)).save(STUDY / "tune" / f"{n:02d}-{name}.png", optimize=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "conjure-photos")
    ap.add_argument("--examples", action="store_true", help="also (re)write examples/photos/clean/")
    ap.add_argument("--check", action="store_true", help="only check that DATA.md is up to date")
    args = ap.parse_args(argv)

    root = fetch_packages(args.cache)
    items = candidates(root)
    keys = {i["key"] for i in items}
    missing = sorted(keys - set(DECISIONS))
    stale = sorted(set(DECISIONS) - keys)
    if missing or stale:
        print(f"error: files without a decision {missing}; decisions for absent files {stale}", file=sys.stderr)
        return 1
    assert set(HELD_OUT) <= {k for k, (keep, _) in DECISIONS.items() if keep}
    text = data_md(items)
    if args.check:
        ok = DATA_MD.exists() and DATA_MD.read_text() == text
        print("DATA.md up to date" if ok else f"{DATA_MD} differs from what the packages give", file=sys.stderr)
        return 0 if ok else 1
    DATA_MD.parent.mkdir(parents=True, exist_ok=True)
    DATA_MD.write_text(text)
    for split in ("train", "heldout"):
        (args.cache / split).mkdir(parents=True, exist_ok=True)
    for i in items:
        if not DECISIONS[i["key"]][0]:
            continue
        split = "heldout" if i["key"] in HELD_OUT else "train"
        out = args.cache / split / (i["key"].replace("/", "__").rsplit(".", 1)[0] + ".png")
        if not out.exists():
            resize_long(load_rgb(i), LONG_SIDE).save(out)
        print(f"{split:8s} {out.name}")
    if args.examples:
        EXAMPLES.mkdir(parents=True, exist_ok=True)
        for name, (key, long_side, x, y, s) in EXAMPLES_CROPS.items():
            assert key in HELD_OUT, f"example {name} must come from a held-out photo"
            it = next(i for i in items if i["key"] == key)
            im = resize_long(load_rgb(it), long_side) if max(load_rgb(it).size) > long_side else load_rgb(it)
            im.crop((x, y, x + s, y + s)).save(EXAMPLES / f"{name}.png", optimize=True)
        write_scratch_masks()
        write_study(items)
    print(f"wrote {DATA_MD.relative_to(ROOT)}; photos in {args.cache}/train and {args.cache}/heldout",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
