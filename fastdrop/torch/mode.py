"""Functional dropout routed through fastdrop while a model runs: `dropout_mode`.

A ``torch.overrides.TorchFunctionMode`` sees every call of a torch function that
checks for ``__torch_function__``: the dropout functions of ``torch.nn.functional``
(what ``torch.nn.Dropout`` and code such as Hugging Face's attention call), their
``torch.*`` aliases and ``F.scaled_dot_product_attention``. While the mode is active,
the calls fastdrop takes go to fastdrop's functions of the same names; everything else
runs as torch's own. `replace_dropout` enters the mode around a model's forward through
forward hooks (`ModeHook`), so that checkpointing's recomputation, which re-enters the
model's modules, routes the same way.
"""
import threading

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from . import attention, functional
from ._tensors import FLOAT_DTYPES

__all__ = ["dropout_mode"]

_active = threading.local()  # per thread: how many of fastdrop's modes are on the stack


def _depth():
    return getattr(_active, "depth", 0)


def _plain(types):
    """Whether the call's tensor types leave torch functions to torch (no override of their own)."""
    return all(kind is torch.Tensor or kind.__torch_function__ is _NO_OVERRIDE for kind in types)


_NO_OVERRIDE = torch._C._disabled_torch_function_impl  # nn.Parameter's, FakeTensor's


def _takes(input):
    """Whether fastdrop runs a dropout of ``input``: a dense CPU tensor of a float dtype."""
    return (isinstance(input, torch.Tensor) and input.is_cpu and input.dtype in FLOAT_DTYPES
            and input.layout is torch.strided)


def _takes_p(p):
    """A probability fastdrop has work to do for (others, p = 0 and bad values, go to torch)."""
    return type(p) in (float, int) and 0 < p <= 1


def _routed(fastdrop_function, training_default, inplace_default=False):
    """A dropout with torch's ``(input, p, training, inplace)`` routed to fastdrop's one."""
    def route(recompute, input, p=0.5, training=training_default, inplace=inplace_default):
        if training is not True or not _takes_p(p) or not _takes(input):
            return None
        return fastdrop_function(input, p, True, inplace, recompute=recompute)
    return route


def _routed_attention(recompute, query, key, value, attn_mask=None, dropout_p=0.0,
                      is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` with dropout routed to fastdrop's attention."""
    if not (_takes_p(dropout_p) and _takes(query) and _takes(key) and _takes(value)):
        return None
    return attention.scaled_dot_product_attention(query, key, value, attn_mask, dropout_p,
                                                  is_causal, scale, enable_gqa)


def _torch_alias(fastdrop_function, inplace):
    """``torch.dropout(input, p, train)`` and its kin: no defaults, inplace in the name."""
    route = _routed(fastdrop_function, True, inplace)

    def route_alias(recompute, input, p, train):
        return route(recompute, input, p, train, inplace)
    return route_alias


_DROPOUT_ROUTES = {
    F.dropout: _routed(functional.dropout, True),
    F.dropout1d: _routed(functional.dropout1d, True),
    F.dropout2d: _routed(functional.dropout2d, True),
    F.dropout3d: _routed(functional.dropout3d, True),
    F.alpha_dropout: _routed(functional.alpha_dropout, False),
    F.feature_alpha_dropout: _routed(functional.feature_alpha_dropout, False),
    torch.dropout: _torch_alias(functional.dropout, False),
    torch.dropout_: _torch_alias(functional.dropout, True),
    torch.alpha_dropout: _torch_alias(functional.alpha_dropout, False),
    torch.alpha_dropout_: _torch_alias(functional.alpha_dropout, True),
}
_ATTENTION_ROUTES = {**_DROPOUT_ROUTES, F.scaled_dot_product_attention: _routed_attention}


class dropout_mode(TorchFunctionMode):  # noqa: N801 - a context manager, named as a function
    """Run the dropout that code calls through ``torch.nn.functional`` on fastdrop, in a with-block.

    While active, in this thread, calls of ``torch.nn.functional.dropout``,
    ``dropout1d/2d/3d``, ``alpha_dropout``, ``feature_alpha_dropout`` (and
    ``torch.dropout``, ``torch.alpha_dropout`` and their in-place forms) go to
    fastdrop.torch's functions of the same names, and
    ``F.scaled_dot_product_attention(..., dropout_p > 0)`` to
    `fastdrop.torch.scaled_dot_product_attention`. A call fastdrop does not take runs
    as torch's own, untouched: tensors not on the CPU, dtypes other than float16/32/64
    and bfloat16, sparse tensors, ``training=False``, ``p == 0``, tensor subclasses
    with their own ``__torch_function__``, and every other function.

    Parameters
    ----------
    recompute : bool, default False
        The routed dropout functions' ``recompute`` setting: keep only the (seed,
        stream) for backward and regenerate the mask there.
    attention : bool, default True
        Route ``F.scaled_dot_product_attention`` with dropout too.

    Examples
    --------
    >>> import torch, torch.nn.functional as F, fastdrop, fastdrop.torch
    >>> x = torch.ones(64)
    >>> seed, stream = fastdrop.torch.next_key()
    >>> with fastdrop.torch.dropout_mode():
    ...     y = F.dropout(x, 0.25)
    >>> expected, _ = fastdrop.dropout(x.numpy(), 0.25, seed=seed, stream=stream)
    >>> bool((y.numpy() == expected).all())
    True
    """

    def __init__(self, *, recompute=False, attention=True):
        super().__init__()
        self.recompute = bool(recompute)
        self.routes = _ATTENTION_ROUTES if attention else _DROPOUT_ROUTES

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        route = self.routes.get(func)
        # tensor subclasses that handle torch functions themselves go their own way
        if route is not None and _plain(types):
            result = route(self.recompute, *args, **kwargs)
            if result is not None:
                return result
        return func(*args, **kwargs)

    def __enter__(self):
        _active.depth = _depth() + 1
        return super().__enter__()

    def __exit__(self, exc_type, exc_value, traceback):
        _active.depth = _depth() - 1
        return super().__exit__(exc_type, exc_value, traceback)


class EnterMode:
    """Forward pre-hook: a module's forward, if no fastdrop mode is active, enters `dropout_mode`.

    `replace_dropout` installs it (with `LeaveMode`) on every module of a model: the
    first module a call enters (the model, or the submodule that
    ``torch.utils.checkpoint`` recomputes in backward) enters the mode and leaves it
    when its forward returns or raises; the modules it calls find the mode active and
    only count. A module-level class, so that models with these hooks pickle and copy.
    """

    def __init__(self, recompute=False):
        self.recompute = bool(recompute)

    def __call__(self, module, args):
        entered = _entered()
        if entered and entered[-1][0] is module:  # the module that entered, called again inside
            entered[-1][2] += 1
        elif _depth() == 0:
            mode = dropout_mode(recompute=self.recompute)
            mode.__enter__()
            entered.append([module, mode, 1])


class LeaveMode:
    """Forward hook (run also when forward raises): leaves the mode its `EnterMode` entered."""

    def __call__(self, module, args, output):
        entered = _entered()
        if entered and entered[-1][0] is module:
            entered[-1][2] -= 1
            if entered[-1][2] == 0:
                entered.pop()[1].__exit__(None, None, None)


def _entered():
    """[module, mode, calls] of each mode `EnterMode` entered in this thread."""
    entered = getattr(_active, "entered", None)
    if entered is None:
        entered = _active.entered = []
    return entered


def install_hooks(module, recompute):
    """`EnterMode` (with ``recompute``) and `LeaveMode` on ``module``, once; None removes them."""
    for hooks in (module._forward_pre_hooks, module._forward_hooks):
        for handle_id, hook in list(hooks.items()):
            if isinstance(hook, (EnterMode, LeaveMode)):
                del hooks[handle_id]
                module._forward_hooks_always_called.pop(handle_id, None)
    if recompute is not None:
        module.register_forward_pre_hook(EnterMode(recompute), prepend=True)
        module.register_forward_hook(LeaveMode(), always_call=True)
