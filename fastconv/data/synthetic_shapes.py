"""Synthetic shapes: a procedural renderer of CIFAR-shaped colour images of ten kinds of drawn
objects (SYNTHETIC, NOT CIFAR-10) and the dataset built from it."""
from __future__ import annotations

import numpy as np
import torch

from .dataset import Dataset
from .synthetic import _BLOCK, check_sizes, seeded_blocks

SHAPE_CLASSES = ["disc", "ring", "square", "frame", "triangle", "cross", "stripes", "checker", "star",
                 "crescent"]
"""The ten object kinds of the synthetic shapes, in label order."""

# An image is, in order of drawing:
#   background  a linear gradient between two random colours in a random direction, plus a smooth
#               random texture (6 x 6 random values, grey or coloured by a random amount, bilinearly
#               upsampled) and up to two grey sinusoidal gratings of random frequency, orientation
#               and amplitude;
#   clutter     up to 4 small capsules (dots and strokes up to 9 pixels long) of random colours,
#               each behind or, less often, in front of the object;
#   the object  one of SHAPE_CLASSES, drawn from a signed distance function in a unit frame (about
#               [-1, 1]^2) put through a random rotation, anisotropic scale (5.5-10.5 pixels per
#               unit), and position (centre within the middle 14 x 14 pixels, so it may reach the
#               border), with an anti-aliased edge of random softness, a random hue and saturation,
#               a brightness a random amount above or below the background's at its centre, and a
#               linear shading across it;
#   noise       Gaussian per pixel and channel, of a random level per image.
# The colour of the object carries nothing about its class: the class is in the shape alone.

_CHUNK = 200    # images rendered at once (temporaries small enough for the caches: 1.3x faster than a block)
_SIZE = 32
_CLUTTER = 4    # clutter slots per image
_TEXTURE = 6    # side of the random texture grid
_STREAM = 1     # distinguishes these streams from the synthetic digits' for the same seed


def _hsv_to_rgb(h, s, v):
    """Arrays h, s, v in [0, 1] (same shape) -> RGB, stacked on a new last axis."""
    out = []
    for k in (5.0, 3.0, 1.0):
        t = (k + 6.0 * h) % 6.0
        out.append(v - v * s * np.clip(np.minimum(t, 4.0 - t), 0.0, 1.0))
    return np.stack(out, -1)


def _upsample_matrix(n_in, n_out):
    """n_out x n_in bilinear interpolation matrix (pixel centres aligned, edges clamped)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(np.int64), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.clip(pos - lo, 0.0, 1.0)
    m = np.zeros((n_out, n_in))
    m[np.arange(n_out), lo] += 1 - w
    m[np.arange(n_out), hi] += w
    return m.astype(np.float32)


_UP = _upsample_matrix(_TEXTURE, _SIZE)


def _draw_parameters(rng: np.random.Generator) -> dict:
    """Every random parameter of a block of _BLOCK images, drawn in a fixed order with fixed shapes,
    so that image i depends only on the block's seed and i."""
    n = _BLOCK
    p = {}
    # background
    p["bg_h"] = rng.random((n, 2))
    p["bg_s"] = rng.uniform(0.0, 0.7, (n, 2))
    p["bg_v"] = rng.uniform(0.1, 0.95, (n, 2))
    p["bg_dir"] = rng.uniform(0, 2 * np.pi, n)
    p["bg_slope"] = rng.uniform(0.0, 1.3, n) / _SIZE       # gradient, per pixel
    p["cloud_amp"] = rng.uniform(0.0, 0.16, n)
    p["cloud_tint"] = rng.uniform(0.0, 1.0, n)                # 0: grey texture, 1: independent channels
    p["cloud"] = rng.standard_normal((n, 4, _TEXTURE, _TEXTURE))
    p["grating_amp"] = rng.uniform(0.0, 0.08, (n, 2)) * (rng.random((n, 2)) < 0.6)
    p["grating_freq"] = rng.uniform(0.3, 1.6, (n, 2))       # radians per pixel
    p["grating_dir"] = rng.uniform(0, np.pi, (n, 2))
    p["grating_phase"] = rng.uniform(0, 2 * np.pi, (n, 2))
    # clutter: capsules from (x0, y0) to (x1, y1) of a radius
    p["clutter_on"] = rng.random((n, _CLUTTER)) < 0.45
    p["clutter_front"] = rng.random((n, _CLUTTER)) < 0.3
    p["clutter_xy"] = rng.uniform(-1.0, _SIZE + 1.0, (n, _CLUTTER, 2))
    p["clutter_len"] = rng.uniform(0.0, 9.0, (n, _CLUTTER)) * (rng.random((n, _CLUTTER)) < 0.6)
    p["clutter_dir"] = rng.uniform(0, 2 * np.pi, (n, _CLUTTER))
    p["clutter_radius"] = rng.uniform(0.6, 2.0, (n, _CLUTTER))
    p["clutter_hsv"] = rng.random((n, _CLUTTER, 3))
    # the object
    p["centre"] = rng.uniform(_SIZE / 2 - 7.5, _SIZE / 2 + 6.5, (n, 2))
    p["scale"] = rng.uniform(5.5, 10.5, n)                     # pixels per unit
    p["aspect"] = np.exp(rng.normal(0.0, 0.12, n))
    p["angle"] = rng.uniform(0, 2 * np.pi, n)
    p["softness"] = rng.uniform(0.5, 1.4, n)                   # edge width, pixels
    p["shape"] = rng.random((n, 2))                            # per-class shape parameters
    p["obj_h"] = rng.random(n)
    p["obj_s"] = rng.uniform(0.25, 1.0, n)
    p["contrast"] = rng.uniform(0.18, 0.65, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    p["shade"] = rng.uniform(0.0, 0.3, n)
    p["shade_dir"] = rng.uniform(0, 2 * np.pi, n)
    # noise
    p["noise"] = rng.uniform(0.0, 0.09, n)
    p["pixel_noise"] = rng.standard_normal((n, 3, _SIZE, _SIZE), dtype=np.float32)
    return p


def _coverage(d, k):
    """Anti-aliased coverage of a signed distance d (units) with k pixels per unit over the edge width."""
    c = 0.5 - d * k
    np.clip(c, 0.0, 1.0, out=c)
    return c


def _bars(t, period, phase, k):
    """Coverage of bars along coordinate t: half of each period covered, anti-aliased."""
    q = t / period + phase
    q -= np.floor(q)
    q -= 0.5
    np.abs(q, out=q)
    q -= 0.25
    q *= period
    return _coverage(q, k)


def _object_alpha(label, u, v, r, k, a, b):
    """Coverage (g x 32 x 32) of object kind ``label`` at unit-frame coordinates u, v (r = their
    norm); k: pixels per unit over the edge width (g x 1 x 1); a, b: shape parameters in [0, 1)."""
    f32 = np.float32
    box = np.maximum(np.abs(u), np.abs(v))
    if label == 0:    # disc
        d = r - f32(0.9)
    elif label == 1:  # ring
        d = np.abs(r - f32(0.75)) - (f32(0.11) + f32(0.09) * a)
    elif label == 2:  # square
        d = box - f32(0.8)
    elif label == 3:  # frame: a square outline
        d = np.abs(box - f32(0.72)) - (f32(0.11) + f32(0.09) * a)
    elif label == 4:  # triangle, circumradius 1.1
        h = f32(0.55)
        c30 = f32(np.cos(np.pi / 6))
        d = np.maximum(-v, np.maximum(c30 * u + f32(0.5) * v, -c30 * u + f32(0.5) * v)) - h
    elif label == 5:  # cross: two bars
        w = f32(0.2) + f32(0.12) * a
        au, av = np.abs(u), np.abs(v)
        d = np.minimum(np.maximum(au - f32(0.95), av - w), np.maximum(au - w, av - f32(0.95)))
    elif label == 6:  # stripes: a disc filled with 3 or 4 bars
        period = np.where(a < 0.5, f32(1.9 / 3), f32(1.9 / 3.6)).astype(f32)
        return _coverage(r - f32(0.95), k) * _bars(v, period, b, k)
    elif label == 7:  # checker: a square of 3 x 3 or 4 x 4 cells
        period = np.where(a < 0.5, f32(2 * 1.8 / 3), f32(2 * 1.8 / 4)).astype(f32)
        cu = _bars(u, period, f32(0.0), k)
        cv = _bars(v, period, f32(0.0), k)
        return _coverage(box - f32(0.9), k) * (cu * cv + (1 - cu) * (1 - cv))
    elif label == 8:  # star, five points
        c = u / np.maximum(r, f32(1e-6))
        c2 = c * c
        cos5 = ((f32(16) * c2 - f32(20)) * c2 + f32(5)) * c      # cos 5 theta
        d = (r - (f32(0.6) + f32(0.38) * cos5)) * f32(0.6)     # about the distance near the edges
    else:             # crescent: a disc with an offset disc cut out
        off = f32(0.35) + f32(0.2) * a
        d = np.maximum(r - f32(0.95), f32(0.78) - np.sqrt((u - off) ** 2 + v * v))
    return _coverage(d, k)


def _capsule_alpha(x, y, x0, y0, x1, y1, radius):
    """Coverage of capsules (segment x0,y0 - x1,y1 thickened by radius; g x 1 x 1 each) at pixel
    centres x (1 x 1 x 32), y (1 x 32 x 1), with a one-pixel anti-aliased edge."""
    dx, dy = x1 - x0, y1 - y0
    ll = np.maximum(dx * dx + dy * dy, np.float32(1e-6))
    px, py = x - x0, y - y0
    t = (px * dx + py * dy) / ll
    np.clip(t, 0.0, 1.0, out=t)
    ex, ey = px - t * dx, py - t * dy
    return _coverage(np.sqrt(ex * ex + ey * ey) - radius, np.float32(1.0))


def _render(p: dict, labels: np.ndarray, sl: slice) -> np.ndarray:
    """uint8 images (g x 3 x 32 x 32) of the parameters ``p[...][sl]`` and ``labels`` (g)."""
    f32 = np.float32
    g = len(labels)
    q = {key: val[sl] for key, val in p.items()}
    col = lambda a: np.asarray(a, f32).reshape(g, 1, 1)  # noqa: E731  (per image, broadcast over pixels)
    x = np.arange(_SIZE, dtype=f32).reshape(1, 1, _SIZE) - f32((_SIZE - 1) / 2)
    y = x.reshape(1, _SIZE, 1)

    # background: gradient between two colours, a smooth colour texture, gratings
    c0 = _hsv_to_rgb(q["bg_h"][:, 0], q["bg_s"][:, 0], q["bg_v"][:, 0]).astype(f32)   # g x 3
    c1 = _hsv_to_rgb(q["bg_h"][:, 1], q["bg_s"][:, 1], q["bg_v"][:, 1]).astype(f32)
    t = col(np.cos(q["bg_dir"]) * q["bg_slope"]) * x + col(np.sin(q["bg_dir"]) * q["bg_slope"]) * y + f32(0.5)
    np.clip(t, 0.0, 1.0, out=t)
    img = c0[:, :, None, None] + (c1 - c0)[:, :, None, None] * t[:, None]            # g x 3 x 32 x 32
    tint = q["cloud_tint"][:, None, None, None]
    cloud = (q["cloud"][:, :1] * (1 - tint) + q["cloud"][:, 1:] * tint) * q["cloud_amp"][:, None, None, None]
    img += _UP @ cloud.astype(f32) @ _UP.T                                             # g x 3 x 32 x 32
    grating = np.zeros((g, _SIZE, _SIZE), f32)
    for j in range(2):
        fx = col(q["grating_freq"][:, j] * np.cos(q["grating_dir"][:, j]))
        fy = col(q["grating_freq"][:, j] * np.sin(q["grating_dir"][:, j]))
        a = fx * x + col(q["grating_phase"][:, j])                                   # g x 1 x 32
        b = fy * y                                                                    # g x 32 x 1
        amp = col(q["grating_amp"][:, j])
        grating += (np.sin(a) * amp) * np.cos(b) + (np.cos(a) * amp) * np.sin(b)    # sin(a + b)
    img += grating[:, None]

    # clutter, each slot either behind or in front of the object
    cl_rgb = _hsv_to_rgb(q["clutter_hsv"][..., 0], q["clutter_hsv"][..., 1],
                         0.15 + 0.85 * q["clutter_hsv"][..., 2]).astype(f32)         # g x K x 3
    cl_x0 = q["clutter_xy"][..., 0] - (_SIZE - 1) / 2
    cl_y0 = q["clutter_xy"][..., 1] - (_SIZE - 1) / 2
    cl_x1 = cl_x0 + q["clutter_len"] * np.cos(q["clutter_dir"])
    cl_y1 = cl_y0 + q["clutter_len"] * np.sin(q["clutter_dir"])

    def clutter(front):
        for j in range(_CLUTTER):
            on = q["clutter_on"][:, j] & (q["clutter_front"][:, j] == front)
            idx = np.nonzero(on)[0]
            if idx.size == 0:
                continue
            c = lambda a: np.asarray(a[idx, j], f32).reshape(-1, 1, 1)  # noqa: E731
            alpha = _capsule_alpha(x, y, c(cl_x0), c(cl_y0), c(cl_x1), c(cl_y1), c(q["clutter_radius"]))
            sub = img[idx]
            sub += alpha[:, None] * (cl_rgb[idx, j][:, :, None, None] - sub)
            img[idx] = sub

    clutter(False)

    # the object
    cx = col(q["centre"][:, 0] - (_SIZE - 1) / 2)
    cy = col(q["centre"][:, 1] - (_SIZE - 1) / 2)
    cos, sin = col(np.cos(q["angle"])), col(np.sin(q["angle"]))
    su = col(q["scale"] * q["aspect"])
    sv = col(q["scale"] / q["aspect"])
    dx, dy = x - cx, y - cy
    u = (cos * dx + sin * dy) / su
    v = (cos * dy - sin * dx) / sv
    r = np.sqrt(u * u + v * v)
    k = col(q["scale"] / q["softness"])
    alpha = np.empty((g, _SIZE, _SIZE), f32)
    a, b = q["shape"][:, 0].astype(f32), q["shape"][:, 1].astype(f32)
    for label in range(10):
        idx = np.nonzero(labels == label)[0]
        if idx.size:
            alpha[idx] = _object_alpha(label, u[idx], v[idx], r[idx], k[idx], a[idx, None, None],
                                       b[idx, None, None])
    # brightness: a set amount above or below the background's at the object's centre (value of HSV)
    ix = np.clip(np.rint(q["centre"][:, 0]), 0, _SIZE - 1).astype(np.int64)
    iy = np.clip(np.rint(q["centre"][:, 1]), 0, _SIZE - 1).astype(np.int64)
    under = np.clip(img[np.arange(g), :, iy, ix], 0, 1).max(1)                     # g
    value = under + q["contrast"]
    flip = (value < 0.08) | (value > 1.0)
    value = np.where(flip, under - q["contrast"], value)
    value = np.clip(value, 0.08, 1.0)
    rgb = _hsv_to_rgb(q["obj_h"], q["obj_s"], value).astype(f32)                     # g x 3
    shade = (col(np.cos(q["shade_dir"]) * q["shade"]) * dx + col(np.sin(q["shade_dir"]) * q["shade"]) * dy) \
        / col(q["scale"]) + f32(1)
    obj = rgb[:, :, None, None] * shade[:, None]
    img += alpha[:, None] * (obj - img)

    clutter(True)

    # noise, quantisation
    img += q["pixel_noise"] * q["noise"].astype(f32)[:, None, None, None]
    img *= f32(255)
    np.rint(img, out=img)
    np.clip(img, 0, 255, out=img)
    return img.astype(np.uint8)


def generate_shapes(n: int, seed: int = 0, split: str = "train") -> tuple:
    """``n`` synthetic shape images (uint8 n x 3 x 32 x 32) and labels (int64 indices into
    :data:`SHAPE_CLASSES`), SYNTHETIC, not CIFAR-10.

    Deterministic by (seed, split) on a given numpy/torch installation. Images come in independently
    seeded blocks of 1000, so the first k images of a larger set are the set of size k. Every 10
    consecutive labels are the 10 classes in a random order: the classes are balanced exactly
    whenever n is a multiple of 10.
    """
    blocks = seeded_blocks(n, seed, split, (_STREAM,))  # validates n and split first
    images = np.empty((n, 3, _SIZE, _SIZE), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for start, m, rng, block_labels in blocks:
        params = _draw_parameters(rng)
        for i in range(0, m, _CHUNK):
            sl = slice(i, min(i + _CHUNK, m))
            images[start + sl.start:start + sl.stop] = _render(params, block_labels[sl], sl)
        labels[start:start + m] = block_labels[:m]
    return torch.from_numpy(images), torch.from_numpy(labels)


def synthetic_cifar(train_size: int = 50000, test_size: int = 10000, seed: int = 0) -> Dataset:
    """The SYNTHETIC shapes dataset (NOT CIFAR-10): a CIFAR-shaped stand-in generated from ``seed``,
    32 x 32 RGB images of the ten object kinds of :data:`SHAPE_CLASSES`.

    Train and test images come from independent streams of the same generator. Generation runs on
    one core: about 6 s for the default 50,000 + 10,000 images.
    """
    check_sizes(train_size, test_size)
    train_x, train_y = generate_shapes(train_size, seed, "train")
    test_x, test_y = generate_shapes(test_size, seed, "test")
    return Dataset(
        name="synthetic-cifar (NOT CIFAR-10)", train_images=train_x, train_labels=train_y,
        test_images=test_x, test_labels=test_y, classes=list(SHAPE_CLASSES), synthetic=True,
        source=f"generated by fastconv.data.synthetic_cifar(seed={seed}): procedurally drawn coloured "
               "shapes on textured backgrounds, not photographs")
