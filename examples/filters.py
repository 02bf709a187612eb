"""The classic image-processing kernels, applied with fastconv.functional.conv2d.

    python examples/filters.py                        # a procedurally drawn test image
    python examples/filters.py --image photo.jpg      # any image PIL reads (converted to grayscale)
    python examples/filters.py --out filters.png

Convolves a grayscale image with identity, three edge-detection kernels, sharpen, box blur, Gaussian
blur (3x3 and 5x5) and unsharp masking, checks every result against torch.nn.functional.conv2d, and
writes a grid of the results, each shown with its kernel, as a PNG (with matplotlib; without it
the checks still run and the drawing is skipped with a message).

The image is first extended by repeating its border pixels (k // 2 of them for a k x k kernel), so
every result keeps the image's size and the image's frame does not show up as an edge.
Edge-detection responses are signed and mostly small: they are shown as their absolute value scaled
to the panel's maximum. The other results are shown as an image would be saved: clipped to [0, 1].

Strictly these are cross-correlations, as in every CNN library: the kernel is not flipped. All of
these kernels but the first edge detector are symmetric, so flipping would not change them anyway.
"""
import argparse
import importlib.util
import math
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import fastconv.functional as FF

PLOT_SKIPPED = ('plot skipped: matplotlib is not installed (pip install "fastconv[bench]" adds it; '
                'or pip install matplotlib)')

_G5 = np.outer([1, 4, 6, 4, 1], [1, 4, 6, 4, 1])

# (title, kernel, how to display the result: "clip" to [0, 1] or "abs" scaled to its maximum)
FILTERS = [
    ("Identity", [[0, 0, 0], [0, 1, 0], [0, 0, 0]], "clip"),
    ("Edge detection 1", [[1, 0, -1], [0, 0, 0], [-1, 0, 1]], "abs"),
    ("Edge detection 2", [[0, 1, 0], [1, -4, 1], [0, 1, 0]], "abs"),
    ("Edge detection 3", [[-1, -1, -1], [-1, 8, -1], [-1, -1, -1]], "abs"),
    ("Sharpen", [[0, -1, 0], [-1, 5, -1], [0, -1, 0]], "clip"),
    ("Box blur", np.ones((3, 3)) / 9, "clip"),
    ("Gaussian blur 3x3", np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16, "clip"),
    ("Gaussian blur 5x5", _G5 / 256, "clip"),
    ("Unsharp masking 5x5", -(_G5 - 512 * (np.arange(25).reshape(5, 5) == 12)) / 256, "clip"),
]

_KERNEL_LABELS = {  # for kernels too big to print in a title
    "Gaussian blur 5x5": "(1 4 6 4 1)ᵀ(1 4 6 4 1) / 256",
    "Unsharp masking 5x5": "2·identity − Gaussian 5x5",
}


def synthetic_image(size=256):
    """A deterministic grayscale test image in [0, 1] (size x size): a diagonal gradient, a disc, a
    rectangle, a triangle, a ring, a grating, a checkerboard, thin lines and a little texture."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size  # pixel coordinates in [0, 1)
    img = 0.15 + 0.35 * (xx + yy) / 2                                         # smooth gradient
    img[(xx - 0.28) ** 2 + (yy - 0.28) ** 2 < 0.17 ** 2] = 0.95               # disc
    img[(yy > 0.58) & (yy < 0.9) & (xx > 0.08) & (xx < 0.42)] = 0.05          # dark rectangle
    tri = (yy > 0.12) & (yy < 0.45) & (np.abs(xx - 0.75) < (yy - 0.12) * 0.6)
    img[tri] = 0.7                                                            # triangle
    ring = np.abs(np.hypot(xx - 0.75, yy - 0.74) - 0.15) < 0.025
    img[ring] = 1.0                                                           # ring
    grating = (xx > 0.55) & (xx < 0.95) & (yy > 0.5) & (yy < 0.56)
    img[grating] = 0.5 + 0.5 * np.sin(2 * np.pi * 24 * xx[grating])           # sinusoidal grating
    checks = (xx > 0.12) & (xx < 0.38) & (yy > 0.62) & (yy < 0.86)
    img[checks] = 0.25 + 0.5 * ((np.floor(xx * 32) + np.floor(yy * 32)) % 2)[checks]  # checkerboard
    for k in range(4):                                                        # thin lines
        img[int((0.04 + 0.02 * k) * size), int(0.5 * size):int(0.95 * size)] = 1.0
    rng = np.random.default_rng(0)                                            # texture (deterministic)
    img += 0.02 * rng.standard_normal((size, size))
    return np.clip(img, 0.0, 1.0).astype(np.float32)


def load_image(path, max_size):
    """A grayscale image file as a float32 array in [0, 1], shrunk to at most max_size pixels a side."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("L")
        if max(im.size) > max_size:
            scale = max_size / max(im.size)
            im = im.resize((max(1, round(im.width * scale)), max(1, round(im.height * scale))), Image.LANCZOS)
        return np.asarray(im, dtype=np.float32) / 255.0


def apply_filters(image):
    """[(title, kernel, result)] for every filter of FILTERS; image is a 2-D float32 tensor. Each result
    is computed by fastconv and checked against torch.nn.functional.conv2d."""
    x = image[None, None]  # (N=1, C=1, H, W)
    results = []
    for title, kernel, _ in FILTERS:
        w = torch.as_tensor(np.asarray(kernel, dtype=np.float32))[None, None]  # (C_out=1, C_in=1, k, k)
        # Extend the image by repeating its border pixels, so that the output keeps the image's size
        # and the borders do not read as edges (zero padding would frame the image with a dark edge).
        p = w.shape[-1] // 2
        xp = F.pad(x, (p, p, p, p), mode="replicate")
        out = FF.conv2d(xp, w)
        torch.testing.assert_close(out, F.conv2d(xp, w), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"{title}: fastconv differs from torch\n{m}")
        results.append((title, w[0, 0], out[0, 0]))
    return results


def _kernel_text(title, kernel):
    if title in _KERNEL_LABELS:
        return _KERNEL_LABELS[title]
    k = kernel.numpy()
    if np.allclose(k, k.flat[0]):  # constant kernel (box blur)
        return f"ones({k.shape[0]}x{k.shape[1]}) / {round(1 / k.flat[0])}"
    scale = 1.0
    if not np.allclose(k, np.round(k)):
        scale = float(round(1 / np.abs(k[k != 0]).min()))
    rows = ["[" + " ".join(f"{int(round(v * scale)):>2}" for v in row) + "]" for row in k]
    return "\n".join(rows + ([f"/ {int(scale)}"] if scale != 1 else []))


def plot(results, path, source):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = math.ceil(len(results) / cols)
    h, w = results[0][2].shape
    fig, axes = plt.subplots(rows, cols, figsize=(4.0 * cols, (4.0 * min(h / w, 2.0) + 0.9) * rows))
    fig.subplots_adjust(left=0.02, right=0.98, top=0.93, bottom=0.08, wspace=0.08, hspace=0.42)
    for ax, (title, kernel, out), (_, _, mode) in zip(axes.flat, results, FILTERS):
        out = out.numpy()
        if mode == "abs":
            shown, note = np.abs(out) / max(np.abs(out).max(), 1e-12), "|response|, scaled"
        else:
            shown, note = np.clip(out, 0.0, 1.0), "clipped to [0, 1]"
        ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_title(f"{title}  ({note})", fontsize=10, fontweight="bold", loc="center", pad=4)
        ax.text(0.5, -0.02, _kernel_text(title, kernel), transform=ax.transAxes, ha="center", va="top",
                fontsize=9, family="monospace")
        ax.axis("off")
    for ax in axes.flat[len(results):]:
        ax.axis("off")
    fig.suptitle(f"Classic kernels with fastconv.functional.conv2d — {source}", fontsize=12)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--image", default=None, metavar="PATH",
                    help="image file to filter (any format PIL reads; converted to grayscale). "
                         "Default: a procedurally drawn test image")
    ap.add_argument("--size", type=int, default=256,
                    help="side of the synthetic image, or the largest side an --image is shrunk to "
                         "(default 256)")
    ap.add_argument("--out", default=os.path.join("examples", "out", "filters.png"), metavar="PATH",
                    help="PNG file to write (default examples/out/filters.png, relative to the current folder)")
    args = ap.parse_args(argv)

    if args.image:
        image, source = load_image(args.image, args.size), Path(args.image).name
    else:
        image, source = synthetic_image(args.size), "synthetic test image"
    results = apply_filters(torch.from_numpy(np.ascontiguousarray(image)))
    print(f"{len(results)} filters on a {image.shape[1]}x{image.shape[0]} image ({source}): "
          "each matches torch.nn.functional.conv2d")

    if importlib.util.find_spec("matplotlib") is None:
        print(PLOT_SKIPPED)
        return 0
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    plot(results, args.out, source)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
