"""fastconv dropout: reproducibility, statistics, scaling, gradient and the identity cases."""
import math

import pytest
import torch

import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import DTYPES, assert_bitwise_equal

ops = torch.ops.fastconv

pytestmark = pytest.mark.op


def _positive(backend, *shape, dtype=torch.float32):
    """Data with no zeros, so a zero in the output can only mean "dropped"."""
    return torch.rand(*shape, dtype=dtype, device=backend.device) + 0.5


@pytest.mark.parametrize("dtype", DTYPES)
def test_manual_seed_reproduces(backend, dtype):
    x = _positive(backend, 64, 33, dtype=dtype)
    torch.manual_seed(7)
    a = FF.dropout(x, 0.4)
    torch.manual_seed(7)
    b = FF.dropout(x, 0.4)
    assert_bitwise_equal(a, b)
    torch.manual_seed(8)
    c = FF.dropout(x, 0.4)
    assert not torch.equal(a == 0, c == 0)


def test_successive_calls_differ(backend):
    x = _positive(backend, 1000)
    a, b = FF.dropout(x, 0.5), FF.dropout(x, 0.5)
    assert not torch.equal(a == 0, b == 0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_fraction(backend, p):
    n = 200_003  # not a multiple of 4: the last Philox block is partial
    x = _positive(backend, n)
    kept = (FF.dropout(x, p) != 0).sum().item()
    expected, sigma = n * (1 - p), math.sqrt(n * p * (1 - p))
    assert abs(kept - expected) < 5 * sigma, (kept, expected, sigma)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_has_no_position_bias(backend, p):
    """Each of the 4 lanes of a Philox block, and the two halves of the tensor, keep 1 - p."""
    n = 4 * 25_000
    kept = (FF.dropout(_positive(backend, n), p) != 0).double()
    for part, size in [(kept.view(-1, 4).sum(0), n // 4), (kept.view(2, -1).sum(1), n // 2)]:
        sigma = math.sqrt(size * p * (1 - p))
        assert ((part - size * (1 - p)).abs() < 5 * sigma).all(), part


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_kept_values_scaled_dropped_zero(backend, p, dtype):
    x = _positive(backend, 50, 41, dtype=dtype) * torch.where(torch.rand(50, 41) < 0.5, -1.0, 1.0).to(dtype)
    y = FF.dropout(x, p)
    kept = y != 0
    assert kept.any() and (~kept).any()
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    assert_bitwise_equal(y[~kept], torch.zeros_like(y[~kept]))  # exactly +0.0


def test_identity_cases(backend):
    x = backend.randn(5, 7)
    before = x.clone()
    for out in (FF.dropout(x, 0.0), FF.dropout(x, 0), FF.dropout(x, 0.5, training=False),
                FF.dropout(x, 1.0, training=False)):
        assert out is x  # the input itself, as torch returns it
    assert_bitwise_equal(x, before)


def test_identity_cases_keep_autograd(backend):
    x = backend.randn(5, 7, requires_grad=True)
    g = backend.randn(5, 7)
    (gx,) = torch.autograd.grad(FF.dropout(x * 1.0, 0.5, training=False), x, g)
    assert_bitwise_equal(gx, g)


@pytest.mark.parametrize("dtype", DTYPES)
def test_p_one_gives_zeros(backend, dtype):
    x = backend.randn(9, 11, dtype=dtype, requires_grad=True)
    y = FF.dropout(x, 1.0)
    assert_bitwise_equal(y.detach(), torch.zeros_like(y))
    (gx,) = torch.autograd.grad(y, x, torch.randn_like(y))
    assert_bitwise_equal(gx, torch.zeros_like(gx))


@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.2, 0.7])
def test_backward_uses_the_same_mask(backend, p, dtype, layout):
    if layout == "contiguous":
        x = _positive(backend, 6, 40, 7, dtype=dtype)
    else:
        x = _positive(backend, 7, 40, 6, dtype=dtype).transpose(0, 2)
    x.requires_grad_()
    y = FF.dropout(x, p)
    mask = (y != 0).to(dtype)
    assert 0 < mask.mean() < 1
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g * mask / (1 - p))
    torch.testing.assert_close(y, x * mask / (1 - p))


def test_inplace(backend):
    x = _positive(backend, 30, 30)
    before = x.clone()
    torch.manual_seed(3)
    expected = FF.dropout(before, 0.3)
    torch.manual_seed(3)
    out = FF.dropout(x, 0.3, inplace=True)
    assert out is x
    assert_bitwise_equal(x, expected)


@pytest.mark.parametrize("p", [-0.1, 1.5, float("nan"), float("inf")])
def test_p_out_of_range(backend, p):
    x = backend.randn(3)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        FF.dropout(x, p)
    with pytest.raises(ValueError, match="dropout probability has to be between 0 and 1"):
        FF.dropout(x, p, training=False)  # checked even when it would not be used, as torch does


def test_nn_dropout_eval_is_identity(backend):
    layer = fnn.Dropout(0.5)
    x = backend.randn(4, 10)
    layer.eval()
    assert torch.equal(layer(x), x)
    layer.train()
    y = layer(x)
    assert (y == 0).any() and not torch.equal(y, x)


def test_opcheck_dropout(backend):
    seed = torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64)
    x = backend.randn(3, 5, requires_grad=True)
    torch.library.opcheck(ops.dropout, (x, 0.5, seed))
    torch.library.opcheck(ops.dropout, (backend.randn(4, 3, dtype=torch.float64).t(), 0.25, seed))


def test_op_is_a_pure_function_of_seed(backend):
    """The raw op: same seed, same mask (forward of different data too); another seed, another mask."""
    seed = torch.randint(-2**63, 2**63 - 1, (1,), dtype=torch.int64)
    x = _positive(backend, 1001)
    a = ops.dropout(x, 0.5, seed)
    assert_bitwise_equal(a, ops.dropout(x, 0.5, seed))
    assert torch.equal(a != 0, ops.dropout(x * 3, 0.5, seed) != 0)
    assert not torch.equal(a != 0, ops.dropout(x, 0.5, seed + 1) != 0)


def _philox4x32_10(counters, key):
    """Philox-4x32-10 of the given 64-bit counters (words c0, c1; c2 = c3 = 0) in numpy: the
    specification the kernels implement, written independently of them."""
    import numpy as np
    m = np.uint64(0xFFFFFFFF)
    c0, c1 = counters & m, counters >> np.uint64(32)
    c2, c3 = np.zeros_like(c0), np.zeros_like(c0)
    k0, k1 = np.uint64(key & 0xFFFFFFFF), np.uint64((key >> 32) & 0xFFFFFFFF)
    for _ in range(10):
        p0, p1 = np.uint64(0xD2511F53) * c0, np.uint64(0xCD9E8D57) * c2
        c0, c1, c2, c3 = (p1 >> np.uint64(32)) ^ c1 ^ k0, p1 & m, (p0 >> np.uint64(32)) ^ c3 ^ k1, p0 & m
        k0, k1 = (k0 + np.uint64(0x9E3779B9)) & m, (k1 + np.uint64(0xBB67AE85)) & m
    return np.stack([c0, c1, c2, c3], axis=1)


def test_philox_reference_matches_published_vector():
    """The known-answer vector of Philox-4x32-10 (counter 0, key 0) from its authors' Random123 suite."""
    import numpy as np
    out = _philox4x32_10(np.array([0], dtype=np.uint64), 0)
    assert [hex(int(v)) for v in out[0]] == ["0x6627e8d5", "0xe169c58d", "0xbc57ac4c", "0x9b00dbd8"]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 3, 63, 64, 65, 131, 4 * 4096 + 37, 2 * 4 * 4096 * 3 + 5])
def test_mask_is_the_philox_definition(backend, dtype, n):
    """keep(i) = uniform24(philox(i // 4, seed)[i % 4]) >= p, element by element: the same mask on every
    backend and machine, whatever vector width the kernel uses, across partial blocks and thread chunks."""
    import numpy as np
    key = 0x1234_5678_9ABC_DEF1
    p = 0.3
    seed = torch.tensor([key - 2**64 if key >= 2**63 else key], dtype=torch.int64)
    x = _positive(backend, n, dtype=dtype)
    y = ops.dropout(x, p, seed)
    bits = _philox4x32_10(np.arange((n + 3) // 4, dtype=np.uint64), key).reshape(-1)[:n]
    keep = torch.from_numpy((bits >> np.uint64(8)).astype(np.float64) / 2.0**24 >= np.float32(p))
    assert torch.equal(y.cpu() != 0, keep)
    torch.testing.assert_close(y.cpu()[keep], (x.cpu() / (1 - p))[keep])
