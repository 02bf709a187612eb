"""Synthetic digits: a procedural renderer of MNIST-shaped digit images (SYNTHETIC, NOT MNIST) and
the dataset built from it."""
from __future__ import annotations

import math

import numpy as np
import torch

from .dataset import Dataset
from .mnist import DIGIT_CLASSES

# Each digit class has one or more hand-designed skeletons: strokes (polylines and elliptic arcs)
# in a unit box, x to the right, y downwards, the digit spanning about [-0.3, 0.3] x [-0.45, 0.45].
# An image is one skeleton put through, in order: a smooth random warp (a sum of two random
# sinusoids per axis: the control points move coherently, strokes stay smooth), a small random
# shift per stroke (strokes no longer meet exactly), an affine map (rotation, anisotropic scale,
# shear, translation) to pixels, then rasterised as the distance from each pixel centre to the
# nearest segment, turned into ink with a random stroke radius and an anti-aliased edge of random
# softness, a random ink intensity, sometimes a short stray stroke, and Gaussian pixel noise.


def _arc(cx, cy, rx, ry, t0, t1, n=None):
    """Points of an elliptic arc from angle t0 to t1 (degrees; 0 = right, 90 = down)."""
    if n is None:
        n = max(3, int(math.ceil(abs(t1 - t0) / 24.0)))
    t = np.radians(np.linspace(t0, t1, n + 1))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], 1)


def _line(*points):
    return np.array(points, dtype=np.float64)


def _skeletons():
    """{digit: [variant, ...]}, a variant being a list of strokes (k x 2 point arrays)."""
    L, A = _line, _arc
    return {
        0: [[A(0, 0, 0.27, 0.45, -90, 270, 16)],
            [A(0, 0, 0.25, 0.45, -120, 265, 16)]],
        1: [[L((0.0, -0.45), (0.0, 0.45))],
            [L((-0.15, -0.28), (0.03, -0.45), (0.03, 0.45))],
            [L((-0.15, -0.28), (0.03, -0.45), (0.03, 0.45)), L((-0.12, 0.45), (0.18, 0.45))]],
        2: [[np.concatenate([A(0, -0.2, 0.25, 0.25, 195, 375, 8),
                             L((0.2, 0.0), (-0.27, 0.45), (0.28, 0.45))])],
            [np.concatenate([A(0, -0.2, 0.25, 0.25, 195, 390, 8), L((-0.26, 0.45), (0.28, 0.45))])]],
        3: [[A(0, -0.22, 0.23, 0.23, 200, 450, 10), A(0, 0.22, 0.26, 0.23, 270, 520, 10)],
            [L((-0.25, -0.45), (0.25, -0.45), (-0.02, -0.05)), A(0, 0.2, 0.26, 0.25, 270, 510, 10)]],
        4: [[L((0.12, -0.45), (-0.28, 0.17), (0.3, 0.17)), L((0.12, -0.45), (0.12, 0.45))],
            [L((-0.22, -0.45), (-0.24, 0.12), (0.3, 0.12)), L((0.14, -0.3), (0.14, 0.45))]],
        5: [[L((0.25, -0.45), (-0.18, -0.45), (-0.22, -0.05)),
             A(0, 0.18, 0.26, 0.27, 230, 510, 10)],
            [L((-0.18, -0.45), (-0.22, -0.05)), L((-0.18, -0.45), (0.25, -0.45)),
             A(0, 0.18, 0.26, 0.27, 230, 500, 10)]],
        6: [[np.concatenate([A(0.22, 0.15, 0.45, 0.6, 260, 180, 6), A(0, 0.2, 0.23, 0.24, 180, 540, 12)])],
            [L((0.18, -0.45), (-0.2, 0.1)), A(0, 0.2, 0.23, 0.24, 0, 360, 12)]],
        7: [[L((-0.27, -0.45), (0.28, -0.45), (-0.05, 0.45))],
            [L((-0.27, -0.45), (0.28, -0.45), (-0.05, 0.45)), L((-0.08, 0.0), (0.22, 0.0))],
            [L((-0.27, -0.35), (-0.27, -0.45), (0.28, -0.45), (0.02, 0.45))]],
        8: [[A(0, -0.23, 0.2, 0.21, 0, 360, 12), A(0, 0.22, 0.25, 0.24, 0, 360, 12)],
            [np.concatenate([A(0, -0.23, 0.2, 0.21, 90, 450, 12)[:-1],
                             A(0, 0.22, 0.25, 0.24, 270, -90, 12)])]],
        9: [[A(0, -0.2, 0.24, 0.24, 0, 360, 12), L((0.24, -0.2), (0.12, 0.45))],
            [np.concatenate([A(0, -0.2, 0.24, 0.24, 0, 360, 12), A(-0.25, -0.2, 0.49, 0.65, 0, 80, 5)])]],
    }


class _Variant:
    def __init__(self, strokes):
        self.points = np.concatenate(strokes)  # P x 2
        self.stroke = np.concatenate([np.full(len(s), i) for i, s in enumerate(strokes)])
        starts = np.cumsum([0] + [len(s) for s in strokes])
        self.segments = np.array([(starts[i] + j, starts[i] + j + 1)
                                  for i, s in enumerate(strokes) for j in range(len(s) - 1)])


_BLOCK = 1000          # images per independently seeded block
_RENDER_CHUNK = 8      # images rasterised at once (keeps the B x S x 28 x 28 temporaries in cache)
_SIZE = 28


# [digit][variant] -> _Variant; segments of an image are padded to _MAX_SEGMENTS
_VARIANTS = [[_Variant(v) for v in variants] for _, variants in sorted(_skeletons().items())]
_MAX_SEGMENTS = max(len(v.segments) for vs in _VARIANTS for v in vs)
_MAX_STROKES = max(int(v.stroke.max()) + 1 for vs in _VARIANTS for v in vs)


def _block_segments(labels: np.ndarray, rng: np.random.Generator) -> tuple:
    """Random parameters of a block of images and their segments in pixel coordinates.

    Every parameter is drawn for the whole block in a fixed order whatever ``labels`` holds
    beyond its length, so image i depends only on the block's seed and its index.
    """
    variants = _VARIANTS
    n = _BLOCK
    k = 2  # sinusoids per axis of the warp
    # every draw has a fixed shape: the first len(labels) rows are used
    variant_u = rng.random(n)
    warp_freq = rng.normal(0.0, 2.5, (n, 2, k, 2))
    warp_phase = rng.uniform(0, 2 * np.pi, (n, 2, k))
    warp_amp = rng.uniform(0.0, 0.045, (n, 2, k))
    stroke_shift = rng.normal(0.0, 0.025, (n, _MAX_STROKES, 2))
    rotation = np.clip(rng.normal(0.0, 0.17, n), -0.35, 0.35)          # radians
    scale = rng.uniform(17.0, 23.0, n)                                  # pixels per unit
    aspect = np.exp(rng.normal(0.0, 0.12, n))
    shear = np.clip(rng.normal(0.0, 0.18, n), -0.45, 0.45)
    shift = rng.uniform(-2.5, 2.5, (n, 2))
    radius = rng.uniform(0.7, 2.0, n)                                    # stroke half-width, px
    softness = rng.uniform(0.6, 1.6, n)                                  # edge width, px
    ink = rng.uniform(0.65, 1.0, n)
    noise = rng.uniform(0.0, 0.12, n)
    stray = rng.random(n) < 0.12
    stray_seg = np.concatenate([rng.uniform(3, 25, (n, 2)), rng.normal(0, 3.5, (n, 2))], 1)
    pixel_noise = rng.standard_normal((n, _SIZE, _SIZE), dtype=np.float32)

    m = len(labels)
    segs = np.empty((m, _MAX_SEGMENTS + 1, 4))
    chosen = np.empty(m, dtype=np.int64)
    for d in range(10):
        chosen[labels == d] = np.floor(variant_u[:m][labels == d] * len(variants[d])).astype(np.int64)
    for d in range(10):
        for vi, var in enumerate(variants[d]):
            idx = np.nonzero((labels == d) & (chosen == vi))[0]
            if idx.size == 0:
                continue
            p = np.broadcast_to(var.points, (idx.size,) + var.points.shape).copy()  # G x P x 2
            # smooth warp: displacement_a(p) = sum_k amp * sin(freq . p + phase)
            arg = np.einsum("gakc,gpc->gakp", warp_freq[idx], p) + warp_phase[idx][..., None]
            p = p + np.einsum("gak,gakp->gpa", warp_amp[idx], np.sin(arg))
            p = p + stroke_shift[idx][:, var.stroke]
            # affine: shear x by y, anisotropic scale, rotation, then to pixel coordinates
            x = p[..., 0] + shear[idx, None] * p[..., 1]
            y = p[..., 1]
            sx = (scale[idx] * aspect[idx])[:, None]
            sy = (scale[idx] / aspect[idx])[:, None]
            c, s = np.cos(rotation[idx])[:, None], np.sin(rotation[idx])[:, None]
            px = c * sx * x - s * sy * y + (_SIZE - 1) / 2 + shift[idx, 0, None]
            py = s * sx * x + c * sy * y + (_SIZE - 1) / 2 + shift[idx, 1, None]
            q = np.stack([px, py], -1)
            seg = np.concatenate([q[:, var.segments[:, 0]], q[:, var.segments[:, 1]]], -1)  # G x S x 4
            pad = _MAX_SEGMENTS - seg.shape[1]
            if pad:  # repeat the last segment: the distance to the nearest one is unchanged
                seg = np.concatenate([seg, np.repeat(seg[:, -1:], pad, 1)], 1)
            segs[idx, :_MAX_SEGMENTS] = seg
    # the extra slot: a short stray stroke, or a copy of segment 0
    sx0, sy0 = stray_seg[:m, 0], stray_seg[:m, 1]
    stray_xy = np.stack([sx0, sy0, sx0 + stray_seg[:m, 2], sy0 + stray_seg[:m, 3]], 1)
    segs[:, -1] = np.where(stray[:m, None], stray_xy, segs[:, 0])
    params = np.stack([radius, softness, ink, noise], 1)[:m]
    return segs, params, pixel_noise[:m]


def _rasterise(segs: np.ndarray, params: np.ndarray, pixel_noise: np.ndarray) -> np.ndarray:
    """uint8 m x 28 x 28 images of segments (m x S x 4: x0, y0, x1, y1 in pixels).

    numpy on one core, on purpose: as fast here as torch on one thread, and unlike torch's
    thread pool it does not slow down many times over when other processes busy the cores.
    """
    f32 = np.float32
    s = segs.astype(f32)
    x0, y0 = s[..., 0], s[..., 1]
    dx, dy = s[..., 2] - x0, s[..., 3] - y0
    length = np.sqrt(dx * dx + dy * dy)
    nz = length > 1e-6
    safe = np.maximum(length, f32(1e-6))
    ux = np.where(nz, dx / safe, f32(1))                  # unit direction (1, 0) for a dot
    uy = np.where(nz, dy / safe, f32(0))
    half = f32(0.5) * length
    # along: position along the segment measured from its midpoint; across: perpendicular
    along_c = x0 * ux + y0 * uy + half
    across_c = y0 * ux - x0 * uy
    gx = np.arange(_SIZE, dtype=f32).reshape(1, 1, 1, _SIZE)
    gy = gx.reshape(1, 1, _SIZE, 1)
    prm = params.astype(f32)
    out = np.empty((len(s), _SIZE, _SIZE), np.uint8)
    for i in range(0, len(s), _RENDER_CHUNK):
        c = slice(i, i + _RENDER_CHUNK)
        ux4, uy4 = ux[c, :, None, None], uy[c, :, None, None]
        along = gx * ux4 + (gy * uy4 - along_c[c, :, None, None])     # B x S x 28 x 28
        across = gy * ux4 - (gx * uy4 + across_c[c, :, None, None])
        np.abs(along, out=along)
        along -= half[c, :, None, None]
        np.maximum(along, 0, out=along)                   # distance past the nearer end
        along *= along
        across *= across
        along += across
        dist = np.sqrt(along.min(1))                      # B x 28 x 28, to the nearest segment
        radius, softness, ink, noise = (prm[c, j, None, None] for j in range(4))
        img = (radius - dist) / softness + f32(0.5)       # anti-aliased edge
        np.clip(img, 0, 1, out=img)
        img *= ink
        img += pixel_noise[c] * noise
        img *= 255
        np.rint(img, out=img)
        np.clip(img, 0, 255, out=img)
        out[c] = img
    return out


def seeded_blocks(n: int, seed: int, split: str, stream: tuple = ()):
    """Validates a request for ``n`` synthetic images of ``split`` and yields, per independently seeded
    block of _BLOCK images, (start, m, rng, labels): the block's first image, its image count, its
    generator (seeded by (seed, split, block) + ``stream``) and its labels, every 10 consecutive ones the
    10 classes in a random order. Shared by the synthetic digits and the synthetic shapes. The request is
    checked at the call, before any block is drawn."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"n must be a non-negative int, got {n!r}")
    split_id = ("train", "test").index(split)

    def blocks():
        for b, start in enumerate(range(0, n, _BLOCK)):
            rng = np.random.default_rng(np.random.SeedSequence([int(seed), split_id, b, *stream]))
            labels = rng.permuted(np.tile(np.arange(10), (_BLOCK // 10, 1)), axis=1).reshape(-1)
            yield start, min(_BLOCK, n - start), rng, labels
    return blocks()


def check_sizes(train_size, test_size):
    """A clear error unless both sizes are positive ints."""
    for what, v in (("train_size", train_size), ("test_size", test_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{what} must be a positive int, got {v!r}")


def generate_digits(n: int, seed: int = 0, split: str = "train") -> tuple:
    """``n`` synthetic digit images (uint8 n x 1 x 28 x 28) and labels (int64), SYNTHETIC, not MNIST.

    Deterministic by (seed, split) on a given numpy/torch installation. Images come in independently
    seeded blocks of 1000, so the first k images of a larger set are the set of size k. Every 10
    consecutive labels are the 10 classes in a random order: the classes are balanced exactly
    whenever n is a multiple of 10.
    """
    blocks = seeded_blocks(n, seed, split)  # validates n and split first
    images = np.empty((n, 1, _SIZE, _SIZE), dtype=np.uint8)
    labels = np.empty(n, dtype=np.int64)
    for start, m, rng, block_labels in blocks:
        segs, params, pixel_noise = _block_segments(block_labels[:m], rng)
        images[start:start + m, 0] = _rasterise(segs, params, pixel_noise)
        labels[start:start + m] = block_labels[:m]
    return torch.from_numpy(images), torch.from_numpy(labels)


def synthetic_digits(train_size: int = 60000, test_size: int = 10000, seed: int = 0) -> Dataset:
    """The SYNTHETIC digits dataset (NOT MNIST): MNIST-shaped stand-in generated from ``seed``.

    Train and test images come from independent streams of the same generator. Generation runs on
    one core: about 5 s for the default 60,000 + 10,000 images.
    """
    check_sizes(train_size, test_size)
    train_x, train_y = generate_digits(train_size, seed, "train")
    test_x, test_y = generate_digits(test_size, seed, "test")
    return Dataset(
        name="synthetic-digits (NOT MNIST)", train_images=train_x, train_labels=train_y,
        test_images=test_x, test_labels=test_y, classes=list(DIGIT_CLASSES), synthetic=True,
        source=f"generated by fastconv.data.synthetic_digits(seed={seed}): procedurally drawn digits, "
               "not real handwriting")
