#!/usr/bin/env python3
"""Make the Fashion-MNIST example images in examples/fmnist/ (standard library only).

Reads the Fashion-MNIST TEST split (t10k, MIT licence; Debian/Ubuntu package `dataset-fashion-mnist`,
installed at /usr/share/datasets/fashion-mnist/) and writes

  examples/fmnist/clean/<label>-<index>.png   the first 8 test images, 28x28 zero-padded to 32x32
                                               (2 black pixels on each side, as the priors were trained),
                                               8-bit gray; <index> is the image's index in the test split
  examples/fmnist/train/<label>-<index>.png   the first 4 images of the TRAINING split, padded the same way
                                               (the tuning images of pipelines/experiments/smoke.yaml)
  examples/fmnist/catalogue/page-01.png       a 128x96 (W x H) "catalogue page": the first 12 test images,
                                               each padded to 32x32, in 3 rows of 4, row-major

The output is byte-for-byte deterministic (zlib level 9, no timestamps).

Usage: python3 tools/make_examples.py [--data DIR] [--out DIR]
"""

import argparse
import gzip
import os
import struct
import sys
import zlib

LABELS = [
    "tshirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
]
SIZE = 32  # model size
N_CLEAN = 8
N_TRAIN = 4
PAGE_COLS, PAGE_ROWS = 4, 3


def read_images(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    if magic != 2051:
        sys.exit(f"{path}: not an IDX image file (magic {magic}, expected 2051)")
    size = rows * cols
    return [
        [list(data[16 + k * size + r * cols : 16 + k * size + (r + 1) * cols]) for r in range(rows)]
        for k in range(n)
    ]


def read_labels(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    if magic != 2049:
        sys.exit(f"{path}: not an IDX label file (magic {magic}, expected 2049)")
    return list(data[8 : 8 + n])


def pad(img, size=SIZE):
    """Zero-pad (black) an h x w image to size x size, centred."""
    h, w = len(img), len(img[0])
    top, left = (size - h) // 2, (size - w) // 2
    out = [[0] * size for _ in range(size)]
    for r in range(h):
        out[top + r][left : left + w] = img[r]
    return out


def write_png_gray8(path, rows):
    """Write an 8-bit grayscale PNG (filter type 0 on every row)."""
    h, w = len(rows), len(rows[0])

    def chunk(kind, payload):
        body = kind + payload
        return struct.pack(">I", len(payload)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes(r) for r in rows)
    png = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(png)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "examples", "fmnist"))
    a = ap.parse_args()

    images = read_images(os.path.join(a.data, "t10k-images-idx3-ubyte.gz"))
    labels = read_labels(os.path.join(a.data, "t10k-labels-idx1-ubyte.gz"))
    if len(images) != len(labels):
        sys.exit(f"{len(images)} images but {len(labels)} labels")

    for k in range(N_CLEAN):
        name = f"{LABELS[labels[k]]}-{k}.png"
        write_png_gray8(os.path.join(a.out, "clean", name), pad(images[k]))
        print("clean/" + name)

    train = read_images(os.path.join(a.data, "train-images-idx3-ubyte.gz"))
    train_labels = read_labels(os.path.join(a.data, "train-labels-idx1-ubyte.gz"))
    for k in range(N_TRAIN):
        name = f"{LABELS[train_labels[k]]}-{k}.png"
        write_png_gray8(os.path.join(a.out, "train", name), pad(train[k]))
        print("train/" + name)

    page = [[0] * (PAGE_COLS * SIZE) for _ in range(PAGE_ROWS * SIZE)]
    for k in range(PAGE_ROWS * PAGE_COLS):
        r0, c0 = (k // PAGE_COLS) * SIZE, (k % PAGE_COLS) * SIZE
        for r, row in enumerate(pad(images[k])):
            page[r0 + r][c0 : c0 + SIZE] = row
    write_png_gray8(os.path.join(a.out, "catalogue", "page-01.png"), page)
    print("catalogue/page-01.png")


if __name__ == "__main__":
    main()
