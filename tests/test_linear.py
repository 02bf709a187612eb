"""fastconv linear against torch.nn.functional.linear."""
import math

import pytest
import torch
import torch.nn.functional as F

import fastconv.functional as FF
from conftest import DTYPES, REDUCED_DTYPES, assert_bitwise_equal, num_threads, tol

ops = torch.ops.fastconv

pytestmark = pytest.mark.op

# (input shape, out_features); the GEMM blocks are 8 * MR rows x 4 * NR columns x 256 deep, so
# 300 -> 130 with 70 rows uses several blocks along every dimension (and a partial one in each)
SHAPES = [
    pytest.param((37,), 9, id="1d_37to9"),
    pytest.param((5, 37), 9, id="2d_37to9"),
    pytest.param((2, 3, 37), 9, id="3d_37to9"),
    pytest.param((6, 1), 5, id="2d_1to5"),
    pytest.param((1,), 5, id="1d_1to5"),
    pytest.param((1, 8), 1, id="batch1_8to1"),
    pytest.param((7, 300), 130, id="2d_300to130"),
    pytest.param((2, 35, 300), 130, id="3d_70rows_300to130"),
    pytest.param((3, 2, 4, 19), 23, id="4d_19to23"),
    # rows of 16-byte multiples: the tensor-core kernel's 16-byte loads (whole K steps, then a tail)
    pytest.param((9, 64), 20, id="2d_64to20_vector_rows"),
    pytest.param((3, 5, 40), 12, id="3d_40to12_vector_rows_tail"),
]


def _check(x, w, b, dtype):
    leaves = [t for t in (x, w, b) if t is not None]
    out = FF.linear(x, w, b)
    ref = F.linear(x, w, b)
    in_f, out_f = w.shape[1], w.shape[0]
    rows = math.prod(x.shape[:-1])
    torch.testing.assert_close(out, ref, **tol(dtype, in_f))
    g = torch.randn_like(ref)
    grads = torch.autograd.grad(out, leaves, g)
    ref_grads = torch.autograd.grad(ref, leaves, g)
    for name, a, r, terms in zip(["input", "weight", "bias"], grads, ref_grads, [out_f, rows, rows]):
        torch.testing.assert_close(a, r, **tol(dtype, terms), msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, out_f", SHAPES)
def test_linear_matches_torch(backend, x_shape, out_f, dtype, bias):
    x = backend.randn(*x_shape, dtype=dtype, requires_grad=True)
    w = backend.randn(out_f, x_shape[-1], dtype=dtype, requires_grad=True)
    b = backend.randn(out_f, dtype=dtype, requires_grad=True) if bias else None
    _check(x, w, b, dtype)


@pytest.mark.parametrize("dtype", REDUCED_DTYPES)
@pytest.mark.parametrize("x_shape, out_f", SHAPES)
def test_linear_reduced_precision_matches_torch(backend, x_shape, out_f, dtype):
    """float16 / bfloat16 (tensor cores on the CUDA kernels) against torch in float32 on the same
    16-bit values, rounded once."""
    x = backend.randn(*x_shape).to(dtype).requires_grad_()
    w = backend.randn(out_f, x_shape[-1]).to(dtype).requires_grad_()
    b = backend.randn(out_f).to(dtype).requires_grad_()
    refs = [t.detach().float().requires_grad_() for t in (x, w, b)]
    out, ref = FF.linear(x, w, b), F.linear(*refs)
    assert out.dtype == dtype
    torch.testing.assert_close(out, ref.to(dtype), **tol(dtype, x_shape[-1]))
    g = torch.randn_like(ref).to(dtype)
    grads = torch.autograd.grad(out, (x, w, b), g)
    ref_grads = torch.autograd.grad(ref, refs, g.float())
    rows = math.prod(x_shape[:-1])
    for name, a, r, terms in zip(["input", "weight", "bias"], grads, ref_grads, [out_f, rows, rows]):
        assert a.dtype == dtype
        torch.testing.assert_close(a, r.to(dtype), **tol(dtype, terms), msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, out_f", [pytest.param((5, 37), 9, id="37to9"),
                                            pytest.param((2, 35, 300), 130, id="300to130")])
def test_linear_non_contiguous(backend, x_shape, out_f, dtype):
    """Transposed weight (as in x @ W.T layers stored the other way), sliced input and bias."""
    in_f = x_shape[-1]
    x = backend.randn(*x_shape[:-1], 2 * in_f, dtype=dtype)[..., ::2].requires_grad_()
    w = backend.randn(in_f, out_f, dtype=dtype).t().requires_grad_()
    b = backend.randn(out_f, 3, dtype=dtype)[:, 1].requires_grad_()
    assert not (x.is_contiguous() or w.is_contiguous() or b.is_contiguous())
    _check(x, w, b, dtype)


def test_linear_transposed_input(backend):
    x = backend.randn(6, 37).t().requires_grad_()  # (37, 6) with strides (1, 37)
    w = backend.randn(9, 6, requires_grad=True)
    _check(x, w, None, torch.float32)


@pytest.mark.parametrize("x_shape, out_f", [pytest.param((4,), 3, id="1d"), pytest.param((3, 5), 4, id="2d"),
                                            pytest.param((2, 2, 3), 2, id="3d")])
def test_linear_gradcheck(backend, x_shape, out_f):
    x = backend.randn(*x_shape, dtype=torch.float64, requires_grad=True)
    w = backend.randn(out_f, x_shape[-1], dtype=torch.float64, requires_grad=True)
    b = backend.randn(out_f, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(FF.linear, (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: FF.linear(x, w), (x, w))


def test_opcheck_linear(backend):
    x = backend.randn(2, 3, 5, requires_grad=True)
    w = backend.randn(4, 5, requires_grad=True)
    b = backend.randn(4, requires_grad=True)
    torch.library.opcheck(ops.linear, (x, w, b))
    torch.library.opcheck(ops.linear, (x[0, 0], w, None))
    dy = backend.randn(2, 3, 4)
    torch.library.opcheck(ops.linear_grad_input, (dy, w.detach()))
    torch.library.opcheck(ops.linear_grad_weight, (dy, x.detach()))


@pytest.mark.parametrize("rows, fin, fout", [
    (16, 4500, 20),    # small output, long K: split along K into chunks added in order (csrc/cpu/linear.cpp)
    (8, 3000, 64),     # grad input / weight of few rows into many columns: B packed block by block
    (13, 4099, 37),    # both, with partial tiles and a K that is no multiple of a k-block
    (12, 24, 3000),    # grad input over a long K (out): split along K on the CUDA kernels too
])
def test_linear_long_and_wide_shapes(backend, rows, fin, fout):
    """The shapes that take the K-split forward and the block-wise packing of B, against torch in float64
    terms, and bitwise the same for 1, 2 and 3 threads."""
    x, w, b = backend.randn(rows, fin), backend.randn(fout, fin), backend.randn(fout)
    dy = backend.randn(rows, fout)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            results.append([ops.linear(x, w, b), ops.linear_grad_input(dy, w), ops.linear_grad_weight(dy, x)])
    ref = [F.linear(x.double(), w.double(), b.double()), dy.double() @ w.double(), dy.double().t() @ x.double()]
    for got, want, terms in zip(results[0], ref, (fin, fout, rows)):
        torch.testing.assert_close(got, want.float(), **tol(torch.float32, terms))
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


def test_linear_thread_count_invariance(backend):
    x, w, b = backend.randn(70, 300), backend.randn(130, 300), backend.randn(130)
    dy = backend.randn(70, 130)
    results = []
    for n in (1, 2, 3):
        with num_threads(n):
            results.append([ops.linear(x, w, b), ops.linear_grad_input(dy, w), ops.linear_grad_weight(dy, x),
                            ops.bias_grad(dy, -1)])
    for other in results[1:]:
        for a, r in zip(results[0], other):
            assert_bitwise_equal(a, r)


@pytest.mark.backends("cpu")
@pytest.mark.parametrize("rows, fin, fout", [(128, 2304, 512), (7, 33, 40), (16, 8192, 64), (3, 1, 5), (100, 300, 101)])
def test_linear_more_outputs_than_rows_same_bits(rows, fin, fout):
    """With more outputs than rows the CPU forward computes Y^T = W X^T and transposes it (csrc/cpu/linear.cpp):
    bitwise what the direct formulation gives, here on the same rows topped up past out_features (extra rows
    change no other row's sums), and torch's values."""
    g = torch.Generator().manual_seed(rows * fout + fin)
    x, w, b = torch.randn(rows, fin, generator=g), torch.randn(fout, fin, generator=g), torch.randn(fout, generator=g)
    y = ops.linear(x, w, b)
    direct = ops.linear(torch.cat([x, torch.randn(fout, fin, generator=g)]), w, b)[:rows]
    assert_bitwise_equal(y, direct)
    torch.testing.assert_close(y, F.linear(x.double(), w.double(), b.double()).float(), **tol(torch.float32, fin))
