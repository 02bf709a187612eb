"""The nets of the seed built from the new layers (fastconv.models resnet, yolo, airbench, alexnet): twins
with torch.nn, a torch ResNet converted, and BatchNorm folding for inference."""
import pytest
import torch

import fastconv
import fastconv.functional as FF
import fastconv.nn as fnn
from fastconv.models import ALL_MODELS, build

NEW = ["resnet", "yolo", "airbench", "alexnet"]


@pytest.mark.sim_unchecked
@pytest.mark.parametrize("name", NEW)
def test_twins_have_the_same_keys_outputs_and_gradients(backend, name):
    torch.manual_seed(0)
    ref = build(name, torch.nn).to(backend.device, torch.float64)
    ours = build(name, fnn).to(backend.device, torch.float64)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    for m in list(ref.modules()) + list(ours.modules()):
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0  # masks come from different generators
    x = backend.randn(4, *ALL_MODELS[name][1], dtype=torch.float64)
    y = torch.randint(0, 10, (4,), device=backend.device)
    loss_ref = torch.nn.functional.cross_entropy(ref(x), y)
    loss = FF.cross_entropy(ours(x), y)
    torch.testing.assert_close(loss, loss_ref)
    loss_ref.backward(), loss.backward()
    for (pname, p), (_, q) in zip(ref.named_parameters(), ours.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=lambda m: f"{name} {pname}: {m}")
    for (bname, a), (_, b) in zip(ref.named_buffers(), ours.named_buffers()):
        torch.testing.assert_close(b, a, msg=lambda m: f"{name} {bname}: {m}")


@pytest.mark.sim_unchecked
def test_converted_torch_resnet_matches_in_train_and_eval(backend):
    """A ResNet built with torch.nn (BatchNorm, residual adds), converted: every layer with a fastconv twin
    replaced; outputs, gradients and running statistics equal to torch's in float64, training and eval."""
    torch.manual_seed(1)
    net = build("resnet", torch.nn).to(backend.device, torch.float64)
    fast = fastconv.convert(net)
    kinds = {type(m) for m in fast.modules()}
    assert not kinds & {torch.nn.Conv2d, torch.nn.BatchNorm2d, torch.nn.ReLU, torch.nn.AdaptiveAvgPool2d,
                        torch.nn.Linear}, kinds
    for mode in ("train", "eval"):
        net.train(mode == "train"), fast.train(mode == "train")
        for step in range(2):
            x = backend.randn(6, 3, 16, 16, dtype=torch.float64)
            out_ref, out = net(x), fast(x)
            torch.testing.assert_close(out, out_ref, msg=lambda m: f"{mode} output: {m}")
            g = torch.randn_like(out_ref)
            grads_ref = torch.autograd.grad(out_ref, list(net.parameters()), g)
            grads = torch.autograd.grad(out, list(fast.parameters()), g)
            for a, b in zip(grads, grads_ref):
                torch.testing.assert_close(a, b, msg=lambda m: f"{mode} gradient: {m}")
            for (bname, a), (_, b) in zip(net.named_buffers(), fast.named_buffers()):
                torch.testing.assert_close(b, a, msg=lambda m: f"{mode} {bname}: {m}")


@pytest.mark.parametrize("layers", [torch.nn, fnn], ids=["torch.nn", "fastconv.nn"])
def test_fold_batch_norm_matches_eval(layers):
    torch.manual_seed(2)
    net = build("yolo", layers)
    net.train()
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(8, 3, 32, 32))  # running statistics away from 0 / 1
    net.eval()
    x = torch.randn(4, 3, 32, 32)
    want = net(x)
    with pytest.raises(RuntimeError, match="training mode"):
        fnn.fold_batch_norm(build("yolo", layers))
    folded = fnn.fold_batch_norm(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(x), want, rtol=1e-4, atol=1e-4)
    if layers is fnn:  # once folded, each Conv2d -> LeakyReLU(0.1) (and the max-pool after three) fuses
        fused = fnn.fuse_conv_relu(folded)
        convs = [m for m in fused.modules() if isinstance(m, fnn.Conv2d)]
        assert [m.fused_negative_slope for m in convs if m.fused_relu] == [0.1] * 8
        assert sum(m.fused_pool is not None for m in convs) == 3
        assert not any(isinstance(m, (torch.nn.LeakyReLU, torch.nn.MaxPool2d)) for m in fused.modules())
        torch.testing.assert_close(fused(x), want, rtol=1e-4, atol=1e-4)
