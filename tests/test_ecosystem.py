"""fastconv in the PyTorch ecosystem: torch.compile, double backward, channels_last, determinism,
empty batches, and modules that pickle, deepcopy, save, load and move like torch's."""
import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradgradcheck

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from conftest import assert_bitwise_equal
from fastconv.models import MODELS, build

NETS = [pytest.param(name, id=name) for name in MODELS]


def _twins(name, device, seed=0):
    torch.manual_seed(seed)
    ref = build(name, torch.nn).to(device)
    ours = build(name, fnn).to(device)
    ours.load_state_dict(ref.state_dict())
    return ref, ours


# ---------------------------------------------------------------- torch.compile

@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", NETS)
def test_compile_fullgraph_matches_eager(backend, name):
    torch._dynamo.reset()
    _, net = _twins(name, backend.device)
    net.eval()  # dropout off: eager and compiled see the same function
    x = backend.randn(3, *MODELS[name][1])
    target = torch.tensor([1, 7, 3], device=backend.device)
    compiled = torch.compile(net, fullgraph=True)

    out_eager = net(x)
    FF.cross_entropy(out_eager, target).backward()
    grads_eager = [p.grad.clone() for p in net.parameters()]
    net.zero_grad(set_to_none=True)

    out_compiled = compiled(x)
    FF.cross_entropy(out_compiled, target).backward()
    torch.testing.assert_close(out_compiled, out_eager, rtol=0, atol=0)
    for (pname, p), g in zip(net.named_parameters(), grads_eager):
        torch.testing.assert_close(p.grad, g, rtol=0, atol=0, msg=lambda m: f"{pname}: {m}")


# ---------------------------------------------------------------- double backward

@pytest.mark.parametrize("kwargs", [{}, dict(stride=2, padding=1), dict(padding=2, dilation=2, groups=2),
                                    dict(padding="same")], ids=["plain", "stride-pad", "dil-groups", "same"])
@pytest.mark.sim_unchecked
def test_conv2d_double_backward(backend, kwargs):
    d = torch.float64
    groups = kwargs.get("groups", 1)
    x = backend.randn(2, 4, 7, 6, dtype=d, requires_grad=True)
    w = backend.randn(6, 4 // groups, 3, 3, dtype=d, requires_grad=True)
    b = backend.randn(6, dtype=d, requires_grad=True)
    assert gradgradcheck(lambda x, w, b: FF.conv2d(x, w, b, **kwargs), (x, w, b))


def test_linear_relu_dropout_double_backward(backend):
    d = torch.float64
    x = backend.randn(3, 5, dtype=d, requires_grad=True)
    w = backend.randn(4, 5, dtype=d, requires_grad=True)
    b = backend.randn(4, dtype=d, requires_grad=True)
    assert gradgradcheck(FF.linear, (x, w, b))
    away_from_kink = (x.detach().abs() + 0.1) * x.detach().sign()
    assert gradgradcheck(FF.relu, (away_from_kink.requires_grad_(),))

    def dropout_fixed_mask(t):
        torch.manual_seed(5)
        return FF.dropout(t, 0.3)
    assert gradgradcheck(dropout_fixed_mask, (x,))


@pytest.mark.parametrize("op", ["max_pool2d", "cross_entropy"])
def test_unsupported_double_backward_raises(backend, op):
    x = backend.randn(3, 6, dtype=torch.float64, requires_grad=True)
    if op == "max_pool2d":
        y = FF.max_pool2d(x.view(1, 1, 3, 6), 2).pow(2).sum()
    else:
        y = FF.cross_entropy(x, torch.tensor([1, 0, 5], device=backend.device))
    (g,) = torch.autograd.grad(y, x, create_graph=True)
    with pytest.raises(NotImplementedError, match=f"fastconv.{op}: double backward"):
        g.pow(2).sum().backward()


# ---------------------------------------------------------------- memory formats

def test_channels_last_in_channels_last_out(backend):
    cl = torch.channels_last
    x = backend.randn(2, 3, 9, 8).to(memory_format=cl)
    w = backend.randn(4, 3, 3, 3)
    pairs = [(FF.conv2d(x, w, padding=1), F.conv2d(x, w, padding=1)),
             (FF.conv2d(x.contiguous(), w.to(memory_format=cl)), F.conv2d(x.contiguous(), w.to(memory_format=cl))),
             (FF.relu(x), F.relu(x)),
             (FF.max_pool2d(x, 2), F.max_pool2d(x, 2)),
             (FF.max_pool2d(x, 2, return_indices=True)[1], F.max_pool2d(x, 2, return_indices=True)[1])]
    for ours, theirs in pairs:
        assert theirs.is_contiguous(memory_format=cl)
        assert ours.is_contiguous(memory_format=cl)
        torch.testing.assert_close(ours, theirs)
    # and contiguous in, contiguous out
    assert FF.conv2d(x.contiguous(), w).is_contiguous()


# ---------------------------------------------------------------- determinism

@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", NETS)
def test_training_step_is_bitwise_reproducible(backend, name):
    def one_step():
        _, net = _twins(name, backend.device, seed=3)
        torch.manual_seed(11)  # dropout masks
        x = backend.randn(4, *MODELS[name][1])
        y = torch.tensor([0, 3, 9, 2], device=backend.device)
        loss = FF.cross_entropy(net(x), y)
        loss.backward()
        return [loss.detach()] + [p.grad for p in net.parameters()]

    first, second = one_step(), one_step()
    for a, b in zip(first, second):
        assert_bitwise_equal(a, b)


# ---------------------------------------------------------------- empty batches

def test_empty_batches_give_empty_results(backend):
    x = backend.randn(0, 3, 6, 6, requires_grad=True)
    w = backend.randn(4, 3, 3, 3, requires_grad=True)
    lw = backend.randn(5, 3 * 6 * 6, requires_grad=True)
    checks = [
        (lambda: FF.conv2d(x, w, padding=1), lambda: F.conv2d(x, w, padding=1)),
        (lambda: FF.max_pool2d(x, 2), lambda: F.max_pool2d(x, 2)),
        (lambda: FF.relu(x), lambda: F.relu(x)),
        (lambda: FF.dropout(x, 0.5), lambda: F.dropout(x, 0.5)),
        (lambda: FF.linear(x.flatten(1), lw), lambda: F.linear(x.flatten(1), lw)),
    ]
    for ours, theirs in checks:
        out, ref = ours(), theirs()
        assert out.shape == ref.shape and out.numel() == 0
        out.sum().backward()
        assert x.grad.shape == x.shape
        x.grad = None
    logits = backend.randn(0, 5, requires_grad=True)
    target = torch.zeros(0, dtype=torch.long, device=backend.device)
    assert FF.cross_entropy(logits, target, reduction="none").shape == (0,)
    assert FF.cross_entropy(logits, target, reduction="sum").item() == 0.0
    assert torch.isnan(FF.cross_entropy(logits, target)) and torch.isnan(F.cross_entropy(logits, target))


# ---------------------------------------------------------------- modules as objects

@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", NETS)
def test_modules_pickle_deepcopy_save_load_and_move(backend, name, tmp_path):
    ref, net = _twins(name, backend.device)
    net.eval()
    x = backend.randn(2, *MODELS[name][1])
    expected = net(x)

    clones = [pickle.loads(pickle.dumps(net)), copy.deepcopy(net)]
    torch.save(net, tmp_path / "whole.pt")
    clones.append(torch.load(tmp_path / "whole.pt", weights_only=False))
    buf = io.BytesIO()
    torch.save(net.state_dict(), buf)
    buf.seek(0)
    fresh = build(name, fnn).to(backend.device)
    fresh.load_state_dict(torch.load(buf))
    clones.append(fresh.eval())
    for clone in clones:
        assert all(type(a) is type(b) for a, b in zip(clone.modules(), net.modules()))
        assert_bitwise_equal(clone.eval()(x), expected)

    # float64 and back, and the device round trip
    as64 = copy.deepcopy(net).to(torch.float64)
    torch.testing.assert_close(as64(x.double()).float(), expected, rtol=1e-5, atol=1e-6)
    assert_bitwise_equal(copy.deepcopy(net).to("cpu").to(backend.device)(x), expected)

    # state_dicts go both ways between a fastconv net and its torch.nn twin
    twin = build(name, torch.nn).to(backend.device).eval()
    twin.load_state_dict(net.state_dict())
    torch.testing.assert_close(twin(x), expected)
    assert fastconv.convert(twin).eval()(x).shape == expected.shape


# ---------------------------------------------------------------- reduced precision and autocast

@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
def test_reduced_precision_inputs_match_torch(backend, dtype):
    """float16 / bfloat16 arguments are computed in float32 and rounded back, like torch's CPU kernels."""
    x = backend.randn(2, 3, 9, 8).to(dtype)
    w = (backend.randn(4, 3, 3, 3) / 5).to(dtype)
    b = backend.randn(4).to(dtype)
    lw = (backend.randn(5, 3 * 9 * 8) / 15).to(dtype)
    loose = dict(rtol=2e-2, atol=2e-2)
    pairs = [(FF.conv2d(x, w, b, padding=1), F.conv2d(x.float(), w.float(), b.float(), padding=1).to(dtype)),
             (FF.relu(x), F.relu(x)),
             (FF.max_pool2d(x, 2), F.max_pool2d(x, 2)),
             (FF.linear(x.flatten(1), lw), F.linear(x.flatten(1).float(), lw.float()).to(dtype))]
    for ours, theirs in pairs:
        assert ours.dtype == dtype
        torch.testing.assert_close(ours, theirs, **loose)
    logits = backend.randn(6, 5).to(dtype)
    target = torch.tensor([0, 4, 2, 1, 3, 3], device=backend.device)
    loss = FF.cross_entropy(logits, target)
    assert loss.dtype == dtype
    torch.testing.assert_close(loss.float(), F.cross_entropy(logits.float(), target), **loose)


@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", NETS)
def test_autocast_matches_torch(backend, name):
    low = torch.bfloat16 if backend.device.type == "cpu" else torch.float16  # torch's autocast defaults
    ref, net = _twins(name, backend.device)
    ref.eval(), net.eval()
    x = backend.randn(4, *MODELS[name][1])
    y = torch.tensor([1, 0, 7, 3], device=backend.device)
    with torch.autocast(backend.device.type, dtype=low):
        out, expected = net(x), ref(x)
        loss, ref_loss = FF.cross_entropy(out, y), F.cross_entropy(expected, y)
    # conv and linear ran in the low-precision type, cross-entropy in float32: torch's policy
    assert out.dtype == expected.dtype == low
    assert loss.dtype == ref_loss.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-2, atol=1e-2)
    loss.backward()
    ref_loss.backward()
    for (pname, p), (_, q) in zip(net.named_parameters(), ref.named_parameters()):
        assert p.grad.dtype == torch.float32  # the parameters stay float32
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=5e-2, atol=3e-2 * scale, msg=lambda m: f"{pname}: {m}")


@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", ["resnet", "yolo", "alexnet"])
def test_compile_fullgraph_of_the_seed_nets(backend, name):
    """BatchNorm (training: batch statistics and the in-place running-stat update; eval), adaptive average
    pooling, LeakyReLU and local response normalization traced whole (fullgraph) by AOT autograd, which runs
    their fake kernels and autograd formulas: outputs, gradients and running statistics equal eager's."""
    from fastconv.models import build
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = build(name).to(backend.device)
    if name == "alexnet":  # (its dropout masks differ between eager and compiled runs)
        net.eval()
    eager = copy.deepcopy(net)
    compiled = torch.compile(net, fullgraph=True, backend="aot_eager")
    x = backend.randn(4, 3, 32, 32)
    target = torch.tensor([1, 7, 3, 0], device=backend.device)
    for mode in ("train", "eval") if name != "alexnet" else ("eval",):
        getattr(eager, mode)(), getattr(net, mode)()
        out_e, out_c = eager(x), compiled(x)
        torch.testing.assert_close(out_c, out_e, rtol=0, atol=0, msg=lambda m: f"{mode} output: {m}")
        FF.cross_entropy(out_e, target).backward()
        FF.cross_entropy(out_c, target).backward()
        for (pname, a), b in zip(net.named_parameters(), eager.parameters()):
            torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=lambda m: f"{mode} {pname}: {m}")
        for (bname, a), b in zip(net.named_buffers(), eager.buffers()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=lambda m: f"{mode} {bname}: {m}")
