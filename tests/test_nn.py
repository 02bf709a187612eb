"""fastconv.nn layers are drop-in twins of their torch.nn namesakes, alone and in whole networks."""
import copy

import pytest
import torch

import fastconv
import fastconv.nn as fnn
from fastconv.models import MODELS, build

# whole networks: run by the sanitizer too
pytestmark = [pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths"),
              pytest.mark.sanitize]

# (layer name, constructor args, constructor kwargs, input shape or None for the loss)
LAYERS = [
    pytest.param("Conv2d", (3, 8, 3), {}, (2, 3, 9, 10), id="Conv2d_plain"),
    pytest.param("Conv2d", (4, 6, (3, 2)), dict(stride=2, padding=1, dilation=2, groups=2, bias=False),
                 (2, 4, 11, 9), id="Conv2d_all_args"),
    pytest.param("Conv2d", (3, 5, 4), dict(padding="same"), (1, 3, 7, 8), id="Conv2d_same_even"),
    pytest.param("Conv2d", (3, 5, 3), dict(padding="valid", stride=(1, 2)), (3, 7, 8), id="Conv2d_unbatched"),
    pytest.param("Conv1d", (3, 6, 5), dict(padding=2, stride=2), (2, 3, 17), id="Conv1d_plain"),
    pytest.param("Conv1d", (4, 4, 3), dict(padding="same", dilation=2, groups=4, bias=False), (2, 4, 12),
                 id="Conv1d_depthwise_same"),
    pytest.param("ReLU", (), {}, (3, 8), id="ReLU"),
    pytest.param("ReLU", (), dict(inplace=True), (3, 8), id="ReLU_inplace"),
    pytest.param("MaxPool2d", (2,), {}, (2, 3, 7, 9), id="MaxPool2d_k2"),
    pytest.param("MaxPool2d", (3,), dict(stride=2, padding=1, dilation=1, ceil_mode=True), (2, 3, 8, 9),
                 id="MaxPool2d_all_args"),
    pytest.param("MaxPool2d", ((2, 3),), dict(stride=(1, 2), return_indices=True), (1, 2, 6, 7),
                 id="MaxPool2d_indices"),
    pytest.param("Linear", (37, 9), {}, (4, 37), id="Linear"),
    pytest.param("Linear", (5, 3), dict(bias=False), (2, 4, 5), id="Linear_no_bias"),
    pytest.param("Dropout", (0.3,), {}, (4, 10), id="Dropout"),
    pytest.param("Dropout", (), dict(p=0.6, inplace=True), (4, 10), id="Dropout_inplace"),
    pytest.param("CrossEntropyLoss", (), {}, None, id="CrossEntropyLoss"),
    pytest.param("CrossEntropyLoss", (), dict(weight="rand", ignore_index=1, reduction="sum", label_smoothing=0.1),
                 None, id="CrossEntropyLoss_all_args"),
]


def _kwargs(kwargs):
    return {k: (torch.rand(5) + 0.5 if v == "rand" else v) for k, v in kwargs.items()}


def _randomize(module):
    """Non-default parameter values, so that loading a state_dict is visible."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))


@pytest.mark.parametrize("name, args, kwargs, in_shape", LAYERS)
def test_layer_is_a_twin(backend, name, args, kwargs, in_shape):
    kwargs = _kwargs(kwargs)
    ref = getattr(torch.nn, name)(*args, **kwargs).to(backend.device)
    ours = getattr(fnn, name)(*args, **kwargs).to(backend.device)
    assert isinstance(ours, getattr(torch.nn, name))
    assert repr(ours) == repr(ref)
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert {k: v.shape for k, v in our_sd.items()} == {k: v.shape for k, v in ref_sd.items()}
    assert [(n, p.shape) for n, p in ours.named_parameters()] == [(n, p.shape) for n, p in ref.named_parameters()]

    _randomize(ref)
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    if name == "CrossEntropyLoss":
        x = backend.randn(6, 5, requires_grad=True)
        target = torch.tensor([0, 1, 4, 1, 2, 3], device=backend.device)
        out, expected = ours(x, target), ref(x, target)
    else:
        x = backend.randn(*in_shape, requires_grad=True)
        # in-place layers get their own copy of the input
        out, expected = ours(x * 1.0), ref(x * 1.0)
    if isinstance(out, tuple):  # MaxPool2d(return_indices=True)
        assert torch.equal(out[1], expected[1])
        out, expected = out[0], expected[0]
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    g = torch.randn_like(expected)
    torch.testing.assert_close(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(expected, x, g)[0],
                               rtol=1e-4, atol=1e-4)
    if name not in ("ReLU", "MaxPool2d", "Dropout", "CrossEntropyLoss"):
        assert not torch.equal(out, torch.zeros_like(out))


def test_padding_mode_other_than_zeros_is_refused():
    with pytest.raises(NotImplementedError, match="padding_mode='zeros' only"):
        fnn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    with pytest.raises(NotImplementedError, match="padding_mode='zeros' only"):
        fnn.Conv1d(3, 4, 3, padding=1, padding_mode="circular")


# ------------------------------------------------------------------ reference networks

# The two nets of fastconv.models (the classic Keras MNIST and CIFAR-10 convnets), built from either
# fastconv.nn or torch.nn.
NETS = [pytest.param(builder, in_shape, id=name) for name, (builder, in_shape) in MODELS.items()]


def _net_pair(make, device):
    ref = make(torch.nn).to(device)
    ours = make(fnn).to(device)
    assert [type(m).__name__ for m in ours] == [type(m).__name__ for m in ref]
    assert [type(m).__module__ for m in ours if not isinstance(m, torch.nn.Flatten)] == \
        ["fastconv.nn"] * (len(ours) - 1)
    assert list(ours.state_dict()) == list(ref.state_dict())
    ours.load_state_dict(ref.state_dict())
    return ref, ours


@pytest.mark.sim_unchecked
@pytest.mark.parametrize("make, in_shape", NETS)
def test_network_matches_torch(backend, make, in_shape):
    ref, ours = _net_pair(make, backend.device)
    ref.eval(), ours.eval()
    x = backend.randn(4, *in_shape)
    target = torch.tensor([3, 0, 9, 5], device=backend.device)
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    loss = fnn.CrossEntropyLoss()(out, target)
    ref_loss = torch.nn.CrossEntropyLoss()(expected, target)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    for (name, p), (_, rp) in zip(ours.named_parameters(), ref.named_parameters()):
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        # gradients of the first layers sum over many pixels and pass through every layer above:
        # compare relative to the gradient's own scale
        scale = rp.grad.abs().max().item()
        torch.testing.assert_close(p.grad, rp.grad, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{name}: {m}")


@pytest.mark.sim_unchecked
@pytest.mark.parametrize("make, in_shape", NETS)
def test_sgd_steps_decrease_loss(backend, make, in_shape):
    _, net = _net_pair(make, backend.device)
    x = backend.randn(8, *in_shape)
    target = torch.randint(0, 10, (8,), device=backend.device)
    loss_fn = fnn.CrossEntropyLoss()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def eval_loss():
        net.eval()
        with torch.no_grad():
            return loss_fn(net(x), target).item()

    before = eval_loss()
    net.train()  # dropout on
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = loss_fn(net(x), target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    after = eval_loss()
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert after < before - 0.1, (before, losses, after)


# ------------------------------------------------------------------ Conv2d + ReLU fusion

def test_fuse_conv_relu_marks_pairs_and_keeps_state_dict_keys():
    net = torch.nn.Sequential(fnn.Conv2d(3, 4, 3), fnn.ReLU(), fnn.MaxPool2d(2), fnn.Conv2d(4, 4, 3),
                              torch.nn.ReLU(), fnn.ReLU(), torch.nn.Sequential(fnn.Conv2d(4, 2, 1), fnn.ReLU()),
                              fnn.Conv2d(2, 2, 1), torch.nn.Flatten(), fnn.ReLU())
    keys = list(net.state_dict())
    assert fnn.fuse_conv_relu(net) is net
    assert list(net.state_dict()) == keys
    assert [type(m).__name__ for m in net] == ["Conv2d", "Identity", "Identity", "Conv2d", "Identity", "ReLU",
                                               "Sequential", "Conv2d", "Flatten", "ReLU"]
    assert [net[0].fused_relu, net[3].fused_relu, net[6][0].fused_relu, net[7].fused_relu] == [True, True, True, False]
    assert [net[0].fused_pool, net[3].fused_pool, net[6][0].fused_pool] == [(2, 2), None, None]
    assert "relu=fused" in repr(net[0]) and "relu=fused" not in repr(net[7])
    assert "max_pool=(2, 2) fused" in repr(net[0]) and "max_pool" not in repr(net[3])
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        fnn.fuse_conv_relu("net")


def test_fuse_conv_relu_takes_leaky_relu_and_skips_identities(backend):
    """A LeakyReLU with a slope >= 0 fuses like a ReLU (its slope kept), an nn.Identity between the
    layers does not stop the fusion, a negative slope is left unfused; results and gradients unchanged."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(fnn.Conv2d(3, 4, 3), torch.nn.LeakyReLU(0.1), torch.nn.Identity(), fnn.MaxPool2d(2),
                              fnn.Conv2d(4, 4, 3, padding=1), fnn.LeakyReLU(-0.2), fnn.Conv2d(4, 2, 1),
                              torch.nn.Identity(), fnn.LeakyReLU(0.0), fnn.Conv2d(2, 2, 1), fnn.LeakyReLU(3.0))
    net = net.to(backend.device)
    ref = copy.deepcopy(net)
    fnn.fuse_conv_relu(net)
    assert [type(m).__name__ for m in net] == ["Conv2d", "Identity", "Identity", "Identity", "Conv2d", "LeakyReLU",
                                               "Conv2d", "Identity", "Identity", "Conv2d", "Identity"]
    assert [(m.fused_relu, m.fused_negative_slope) for m in net if isinstance(m, fnn.Conv2d)] == [
        (True, 0.1), (False, 0.0), (True, 0.0), (True, 3.0)]
    assert net[0].fused_pool == (2, 2)
    assert "leaky_relu(0.1)=fused" in repr(net[0]) and "relu=fused" in repr(net[6])
    x = backend.randn(2, 3, 12, 11).requires_grad_()
    out, want = net(x), ref(x)
    assert (want < 0).any()
    torch.testing.assert_close(out, want)
    dy = torch.randn_like(out)
    torch.testing.assert_close(torch.autograd.grad(out, x, dy)[0], torch.autograd.grad(want, x, dy)[0])


@pytest.mark.sim_unchecked
def test_built_nets_are_fused_and_match_their_torch_twins(backend):
    """fastconv.models.build fuses each Conv2d + ReLU, and the MaxPool2d after two of them; results and
    gradients stay torch's, and the ReLU and max-pool kernels of the fused layers are gone (the
    pre-activations and the pre-pool activations are never written)."""
    torch.manual_seed(0)
    ours = build("cifar10").to(backend.device)
    torch.manual_seed(0)
    ref = build("cifar10", torch.nn).to(backend.device)
    assert sum(isinstance(m, fnn.Conv2d) and m.fused_relu for m in ours.modules()) == 4
    assert sum(isinstance(m, fnn.Conv2d) and m.fused_pool == (2, 2) for m in ours.modules()) == 2
    assert sum(isinstance(m, torch.nn.Identity) for m in ours.modules()) == 6
    ours.load_state_dict(ref.state_dict())
    ours.eval(), ref.eval()
    x = backend.randn(3, 3, 32, 32)
    out, expected = ours(x), ref(x)
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        scale = q.grad.abs().max().item()
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=2e-5 * scale, msg=lambda m: f"{name}: {m}")
    if backend.name == "sim":
        unfused = MODELS["cifar10"][0](fnn).eval()
        unfused.load_state_dict(ref.state_dict())
        before = fastconv.simulator.stats()["launches"]
        ours(x)
        fused_launches = fastconv.simulator.stats()["launches"] - before
        unfused(x)
        assert fastconv.simulator.stats()["launches"] - before - fused_launches == fused_launches + 4
