"""fastconv.convert: torch models turned into fastconv ones, layer by layer."""
import copy
import warnings

import pytest
import torch

import fastconv
import fastconv.models
import fastconv.nn as fnn
from fastconv.convert import CONVERTED, ConversionWarning

SUPPORTED = tuple(CONVERTED)  # the torch.nn classes convert() replaces


class Block(torch.nn.Module):
    """A custom module: layers as attributes, a ModuleDict, and one ReLU used twice."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.extra = torch.nn.ModuleDict({"pool": torch.nn.MaxPool2d(2, ceil_mode=True),
                                          "proj": torch.nn.Conv2d(c_out, c_out, 1, bias=False)})

    def forward(self, x):
        x = self.act(self.conv(x))
        return self.act(self.extra["proj"](self.extra["pool"](x)))


class Net(torch.nn.Module):
    """Nested: Sequential in a custom module, ModuleList of custom blocks, a Conv1d branch, a
    reflect-padded conv (not supported), a torch layer fastconv does not replace (BatchNorm2d),
    a layer that already is fastconv's, a Dropout, and a CrossEntropyLoss submodule."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 6, 3, padding=1, padding_mode="reflect"),
                                        torch.nn.BatchNorm2d(6), torch.nn.ReLU(inplace=True))
        self.blocks = torch.nn.ModuleList([Block(6, 8), Block(8, 8)])
        self.already = fnn.Conv2d(8, 8, 3, padding="same", groups=2)
        self.signal = torch.nn.Sequential(torch.nn.Conv1d(8, 4, 3, stride=2, dilation=1), torch.nn.ReLU())
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.3), torch.nn.Linear(4 * 3, 5))
        self.loss = torch.nn.CrossEntropyLoss(weight=torch.tensor([1.0, 2.0, 0.5, 1.0, 1.5]), label_smoothing=0.1)

    def forward(self, x, target):
        x = self.already(self.blocks[1](self.blocks[0](self.stem(x))))   # N x 8 x 2 x 4
        x = self.signal(x.flatten(2))                                    # N x 4 x 3
        logits = self.head(x)
        return logits, self.loss(logits, target)


def make_net(dtype=torch.float32):
    torch.manual_seed(0)
    return Net().to(dtype)


def inputs(dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 7, 14, generator=g, dtype=dtype), torch.randint(0, 5, (4,), generator=g)


def convert_quietly(model, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConversionWarning)
        return fastconv.convert(model, **kwargs)


def is_fastconv(module):
    return type(module).__module__ == "fastconv.nn"


def test_every_supported_layer_becomes_fastconv():
    net = make_net()
    fast = convert_quietly(net)
    names = dict(fast.named_modules())
    for name, original in net.named_modules():
        new = names[name]
        if name == "stem.0":  # padding_mode="reflect": left as is
            assert type(new) is torch.nn.Conv2d
        elif type(original) in SUPPORTED or is_fastconv(original):
            assert is_fastconv(new), f"{name}: {type(new)}"
            assert type(new).__name__ == type(original).__name__
            assert isinstance(new, type(original))  # fastconv.nn layers subclass their torch twins
        else:
            assert type(new) is type(original), name
    counts = {}
    for m in fast.modules():
        if is_fastconv(m):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    # the ReLU of each Block is one module used twice: converted once
    assert counts == {"Conv2d": 5, "Conv1d": 1, "ReLU": 4, "MaxPool2d": 2, "Dropout": 1, "Linear": 1, "BatchNorm2d": 1,
                      "CrossEntropyLoss": 1}


def test_constructor_arguments_are_kept():
    net = make_net()
    fast = convert_quietly(net)
    attrs = ["in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
             "padding_mode", "inplace", "ceil_mode", "return_indices", "p", "in_features", "out_features",
             "ignore_index", "reduction", "label_smoothing"]
    for (name, a), (_, b) in zip(net.named_modules(), fast.named_modules()):
        for attr in attrs:
            if hasattr(a, attr):
                assert getattr(b, attr) == getattr(a, attr), f"{name}.{attr}"
    assert fast.loss.weight is not None and torch.equal(fast.loss.weight, net.loss.weight)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_outputs_and_gradients_equal_the_originals(dtype):
    net = make_net(dtype).eval()  # eval: dropout is the identity in both, so the two nets compute the same
    fast = convert_quietly(net)
    x, target = inputs(dtype)
    results = []
    for model in (net, fast):
        xi = x.clone().requires_grad_()
        logits, loss = model(xi, target)
        (loss + logits.square().mean()).backward()
        results.append((logits, loss, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (l0, s0, gx0, g0), (l1, s1, gx1, g1) = results
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(l1, l0, **tol)
    torch.testing.assert_close(s1, s0, **tol)
    torch.testing.assert_close(gx1, gx0, **tol)
    assert g1.keys() == g0.keys()
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], **tol, msg=lambda m: f"grad of {name}: {m}")


def test_dropout_in_training_mode_runs_fastconvs_kernel():
    net = torch.nn.Sequential(torch.nn.Dropout(0.5))
    fast = fastconv.convert(net)
    x = torch.ones(1000)
    y = fast(x)
    assert set(y.unique().tolist()) == {0.0, 2.0}  # inverted dropout: kept values scaled by 1 / (1 - p)
    assert 0.4 < (y == 0).float().mean().item() < 0.6


def test_original_is_untouched_when_not_inplace():
    net = make_net()
    types = {n: type(m) for n, m in net.named_modules()}
    state = copy.deepcopy(net.state_dict())
    fast = convert_quietly(net)
    assert fast is not net
    assert {n: type(m) for n, m in net.named_modules()} == types
    fast_params = {id(p) for p in fast.parameters()}
    assert not fast_params & {id(p) for p in net.parameters()}, "the copy shares parameters with the original"
    # training the copy leaves the original as it was
    x, target = inputs()
    opt = torch.optim.SGD(fast.parameters(), lr=0.1)
    _, loss = fast(x, target)
    loss.backward()
    opt.step()
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert any(not torch.equal(v, state[k]) for k, v in fast.state_dict().items())


def test_inplace_converts_the_model_itself_and_keeps_its_parameters():
    net = make_net()
    params = dict(net.named_parameters())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)  # built before the conversion
    before = net.blocks[0].conv.weight.detach().clone()
    already = net.already
    out = convert_quietly(net, inplace=True)
    assert out is net
    assert is_fastconv(net.blocks[0].conv) and is_fastconv(net.head[2])
    assert net.already is already  # a fastconv layer is left alone, not rebuilt
    for name, p in net.named_parameters():
        assert p is params[name], name  # the very same Parameter objects
    x, target = inputs()
    _, loss = net(x, target)
    loss.backward()
    opt.step()
    assert not torch.equal(net.blocks[0].conv.weight, before)  # the old optimizer trains the new layers


def test_state_dict_keys_and_values_are_identical():
    net = make_net()
    fast = convert_quietly(net)
    a, b = net.state_dict(), fast.state_dict()
    assert list(a) == list(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    net.load_state_dict(b)  # and back: the state dicts are interchangeable
    fast.load_state_dict(a)


def test_training_and_eval_modes_are_kept_per_module():
    net = make_net()
    net.blocks[0].eval()          # a mix: block 0 (and everything in it) in eval, the rest training
    net.head[1].eval()            # the Dropout too
    modes = {n: m.training for n, m in net.named_modules()}
    fast = convert_quietly(net)
    assert {n: m.training for n, m in fast.named_modules()} == modes
    assert not fast.head[1].training and is_fastconv(fast.head[1])
    assert convert_quietly(net.eval()).training is False
    assert not any(m.training for m in convert_quietly(net.eval()).modules())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_device_and_dtype_are_kept(dtype):
    net = make_net(dtype)
    fast = convert_quietly(net)
    for (name, a), b in zip(net.named_parameters(), fast.parameters()):
        assert (b.dtype, b.device, b.shape, b.requires_grad) == (a.dtype, a.device, a.shape, a.requires_grad), name
    for (name, a), b in zip(net.named_buffers(), fast.buffers()):
        assert (b.dtype, b.device) == (a.dtype, a.device), name


def test_unsupported_layers_are_left_with_a_warning_naming_them():
    net = make_net()
    with pytest.warns(ConversionWarning) as record:
        fast = fastconv.convert(net)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1, messages
    assert "'stem.0'" in messages[0] and "padding_mode='reflect'" in messages[0]
    assert record[0].filename == __file__  # the warning points at the caller of convert
    assert type(fast.stem[0]) is torch.nn.Conv2d

    mixed = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 2).to(torch.complex64), torch.nn.ReLU())
    with pytest.warns(ConversionWarning, match=r"'1'.*complex64"):
        fast = fastconv.convert(mixed)
    assert is_fastconv(fast[0]) and type(fast[1]) is torch.nn.Linear and is_fastconv(fast[2])


def test_fully_supported_model_converts_without_warnings():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = fastconv.convert(net)
    assert all(is_fastconv(m) for m in fast if not isinstance(m, torch.nn.Flatten))


def test_subclasses_and_other_modules_are_left_alone():
    class MyConv(torch.nn.Conv2d):  # may override forward: not converted
        pass

    net = torch.nn.Sequential(MyConv(1, 2, 3), torch.nn.Tanh(), torch.nn.Dropout2d(0.1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = fastconv.convert(net)
    assert [type(m) for m in fast] == [MyConv, torch.nn.Tanh, torch.nn.Dropout2d]


def test_a_single_layer_converts():
    conv = torch.nn.Conv2d(2, 3, 3, stride=2)
    fast = fastconv.convert(conv)
    assert is_fastconv(fast) and type(conv) is torch.nn.Conv2d
    x = torch.randn(1, 2, 9, 9)
    torch.testing.assert_close(fast(x), conv(x), rtol=1e-4, atol=1e-5)
    converted_in_place = fastconv.convert(conv, inplace=True)
    assert is_fastconv(converted_in_place) and converted_in_place.weight is conv.weight


def test_converting_twice_changes_nothing():
    fast = convert_quietly(make_net())
    types = [type(m) for m in fast.modules()]
    again = convert_quietly(fast, inplace=True)
    assert again is fast and [type(m) for m in again.modules()] == types


def test_shared_modules_and_tied_weights_stay_shared():
    shared = torch.nn.Linear(4, 4)
    tied = torch.nn.Linear(4, 4)
    tied.weight = shared.weight
    net = torch.nn.Sequential(shared, torch.nn.ReLU(), shared, tied)
    fast = fastconv.convert(net)
    assert fast[0] is fast[2] and is_fastconv(fast[0])
    assert fast[3].weight is fast[0].weight and fast[3].bias is not fast[0].bias
    assert len(list(fast.parameters())) == len(list(net.parameters())) == 3


def test_hooks_and_attributes_are_carried_over():
    conv = torch.nn.Conv2d(1, 1, 3)
    conv.note = "mine"
    calls = []
    conv.register_forward_hook(lambda m, i, o: calls.append(type(m).__module__))
    fast = fastconv.convert(torch.nn.Sequential(conv))
    fast(torch.randn(1, 1, 5, 5))
    assert calls == ["fastconv.nn"] and fast[0].note == "mine"


def test_convert_draws_nothing_from_the_random_generator():
    net = make_net()
    state = torch.get_rng_state()
    convert_quietly(net)
    convert_quietly(net, inplace=True)
    assert torch.equal(torch.get_rng_state(), state)


def test_convert_refuses_what_is_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fastconv.convert([torch.nn.ReLU()])


def test_reference_models_convert_to_their_fastconv_twins():
    for builder in (fastconv.models.mnist_net, fastconv.models.cifar10_net):
        torch.manual_seed(0)
        torch_net = builder(torch.nn)
        torch.manual_seed(0)
        twin = builder(fastconv.nn)
        fast = fastconv.convert(torch_net)
        assert [type(m) for m in fast.modules()] == [type(m) for m in twin.modules()]
        for (k, a), (_, b) in zip(fast.state_dict().items(), twin.state_dict().items()):
            assert torch.equal(a, b), k
