"""Convert a torch model to fastconv: every supported torch.nn layer becomes its fastconv.nn twin.

    import fastconv
    fast = fastconv.convert(model)                # a converted deep copy; `model` is untouched
    fastconv.convert(model, inplace=True)         # or convert the model itself

Converted classes (exact types only): torch.nn.Conv2d, Conv1d, ReLU, LeakyReLU, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d, LocalResponseNorm, BatchNorm2d, Linear, Dropout and CrossEntropyLoss. Each becomes the fastconv.nn class of the same name, built with the same constructor
arguments and then given the torch layer's whole state: its Parameter and buffer objects, training
flag, hooks and any attribute set on it. Device and dtype therefore stay what they were, the
``state_dict`` keys and values do not change, and outputs and gradients are torch's up to
floating-point rounding order (dropout draws its masks from another generator: same distribution,
different masks). Converting draws nothing from torch's random generator.

Everything else is left as it is:

- modules of other classes, including subclasses of the classes above (a subclass may override
  ``forward``; fastconv.nn's own layers are such subclasses, so converting twice changes nothing);
- layers in a configuration fastconv cannot run, each named in a :class:`ConversionWarning`:
  a convolution with ``padding_mode`` other than ``'zeros'``, parameters of a dtype other than
  float32 / float64, or parameters on a device for which fastconv has no kernels.

A module registered at several places (a ReLU reused in two blocks, say) is converted once and stays
shared; parameters tied between layers stay tied. Layers are found through registered submodules
(``Sequential``, ``ModuleList``, ``ModuleDict`` and attributes of custom modules); a layer kept
only in a plain Python list or dict is not a submodule and is not seen.
"""
import copy
import inspect
import warnings

import torch

from . import nn as fnn

__all__ = ["convert", "ConversionWarning", "CONVERTED"]


class ConversionWarning(UserWarning):
    """A supported torch.nn layer was left unconverted because fastconv cannot run its configuration."""


# torch class -> (fastconv.nn class, the op whose kernels it runs): each fastconv.nn layer that names
# its op (fastconv_op) replaces the torch.nn class it subclasses.
_CONVERSIONS = {cls.__bases__[0]: (cls, cls.fastconv_op)
                for cls in (getattr(fnn, name) for name in fnn.__all__) if hasattr(cls, "fastconv_op")}


def _ctor_args(layer):
    """The constructor arguments of a layer like `layer`: each parameter of its class's __init__ read
    back from the attribute of that name; ``bias`` as whether it has one, on the meta device (no
    memory, no draw from the random generator). Parameters and buffers (a loss's class weights) are
    not passed: they come over with the rest of the layer's state, as do arguments the class does not
    keep (deprecated ones such as size_average)."""
    args = {}
    for name in list(inspect.signature(type(layer).__init__).parameters)[1:]:
        if name == "bias":
            args[name] = layer.bias is not None
        elif name == "device":
            args[name] = "meta"
        elif name != "dtype" and name not in layer._parameters and name not in layer._buffers \
                and hasattr(layer, name):
            args[name] = getattr(layer, name)
    return args


#: the torch.nn classes that convert() replaces, mapped to their fastconv.nn twins
CONVERTED = {torch_cls: fast_cls for torch_cls, (fast_cls, _) in _CONVERSIONS.items()}

_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
_DISPATCH_KEYS = {"cpu": "CPU", "cuda": "CUDA", "meta": "Meta", "mps": "MPS", "xpu": "XPU"}


def _has_kernels(op, device):
    key = _DISPATCH_KEYS.get(device.type)
    if key is None:
        return False
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(f"fastconv::{op}", key)
    except Exception:  # a torch without this query: fastconv builds CPU kernels (and meta ones) always
        return device.type in ("cpu", "meta")


def _unsupported(layer, op):
    """Why fastconv cannot run `layer` (a supported class), or None if it can."""
    if getattr(layer, "padding_mode", "zeros") != "zeros":
        return f"padding_mode={layer.padding_mode!r} (fastconv pads with zeros only)"
    tensors = [t for t in list(layer.parameters(recurse=False)) + list(layer.buffers(recurse=False))
               if t is not None]
    for t in tensors:  # (integer buffers are counters, such as BatchNorm's num_batches_tracked)
        if (t.is_floating_point() or t.is_complex()) and t.dtype not in _DTYPES:
            return f"dtype {t.dtype} (fastconv computes in float16, bfloat16, float32 and float64)"
    for t in tensors:
        if not _has_kernels(op, t.device):
            return f"device {t.device} (fastconv has no {t.device.type} kernels)"
    return None


# torch.nn.Module's own registries (parameters, buffers, submodules, hooks, ...): dicts and sets
_REGISTRIES = frozenset(k for k, v in vars(torch.nn.Module()).items() if isinstance(v, (dict, set)))


def _state_of(layer):
    """A copy of `layer.__dict__` whose registries are new containers holding the same objects, so
    that the old and the new module do not share (and mutate) each other's registries."""
    return {k: copy.copy(v) if k in _REGISTRIES else v for k, v in vars(layer).items()}


def _convert_layer(layer):
    """(the fastconv twin of `layer`, None), or (`layer`, why fastconv cannot run it)."""
    fast_cls, op = _CONVERSIONS[type(layer)]
    reason = _unsupported(layer, op)
    if reason is None:
        try:
            # on the meta device: no memory and no draw from the random generator for the
            # initialisation that the torch layer's own parameters are about to replace
            new = fast_cls(**_ctor_args(layer))
        except (NotImplementedError, ValueError) as exc:
            reason = str(exc)
    if reason is not None:
        return layer, reason
    # everything the torch layer holds: parameters, buffers, training flag, hooks, user attributes.
    # The constructor arguments were the same, so the configuration attributes agree anyway.
    new.__dict__.update(_state_of(layer))
    return new, None


def convert(model: torch.nn.Module, inplace: bool = False) -> torch.nn.Module:
    """Returns `model` with every torch.nn Conv2d, Conv1d, ReLU, MaxPool2d, Linear, Dropout and
    CrossEntropyLoss replaced by the fastconv.nn layer of the same name (see the module docstring).

    inplace=False (default): converts a deep copy and returns it; `model` is not modified, and the
        copy's parameters are new tensors holding the same values.
    inplace=True: replaces the layers inside `model` itself and returns `model`. The new layers hold
        the very Parameter objects of the old ones, so an optimizer built over `model.parameters()`
        before the conversion keeps training the converted model. If `model` is itself a supported
        layer, the returned module is a new object: use the return value.

    Layers fastconv cannot run stay torch layers, each named in a ConversionWarning.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"fastconv.convert: expected a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    done = {}  # id(module) -> what it became: a module registered twice stays one module
    left = []  # (name, layer, reason) of the layers fastconv cannot run

    def visit(module, name):
        key = id(module)
        if key in done:
            return done[key]
        if type(module) in _CONVERSIONS:
            new, reason = _convert_layer(module)
            if reason is not None:
                left.append((name, module, reason))
            done[key] = new
            return new
        done[key] = module  # any other module: look inside
        for child_name, child in module._modules.items():
            if child is not None:
                module._modules[child_name] = visit(child, f"{name}.{child_name}" if name else child_name)
        return module

    model = visit(model, "")
    for name, layer, reason in left:
        where = f"{name!r}" if name else "the model itself"
        warnings.warn(f"fastconv.convert: left {where} as torch.nn.{type(layer).__name__}: {reason}",
                      ConversionWarning, stacklevel=2)
    return model
