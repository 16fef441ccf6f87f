"""Dropout modules: twins of ``torch.nn``'s, and `replace_dropout` to swap them into a model.

Each module is an instance of its torch twin (`Dropout` is a ``torch.nn.Dropout``,
`Dropout2d` a ``torch.nn.Dropout2d``, ...), so tools that look for dropout layers by
type, such as MC-dropout ones, find them; it takes torch's constructor arguments and
fastdrop's ``recompute`` and ``generator``, is the identity in evaluation mode and holds
no parameters or buffers, so a model's ``state_dict`` is the same with either kind.
"""
import torch

from . import functional, mode

__all__ = ["AlphaDropout", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
           "FeatureAlphaDropout", "replace_dropout"]


class _FastdropDropout:
    """The body of every module: a mixin before the torch class it stands in for.

    ``_function`` is the functional form the forward calls.

    Parameters
    ----------
    p : float, default 0.5
        Probability of an element (or channel) to be zeroed.
    inplace : bool, default False
        Overwrite the input in place.
    recompute : bool, default False
        Keep only the (seed, stream) for backward and regenerate the mask there,
        instead of its packed bits.
    generator : torch.Generator, optional
        Where each call's (seed, stream) come from (eager calls); torch's default
        CPU generator if None.
    """

    _function = None

    def __init__(self, p=0.5, inplace=False, *, recompute=False, generator=None):
        super().__init__(p, inplace)
        self.recompute = bool(recompute)
        self.generator = generator

    def forward(self, input):
        """Dropout in training mode, the identity (``input`` itself) in evaluation mode."""
        # traced by torch.fx: one call_module node, as torch's own modules give (the default
        # tracer keeps only torch.nn's modules whole; traced through, training would be frozen)
        if isinstance(input, torch.fx.Proxy) and input.tracer.path_of_module(self):
            return input.tracer.create_proxy("call_module", input.tracer.path_of_module(self),
                                             (input,), {})
        return type(self)._function(input, self.p, self.training, self.inplace,
                                    generator=self.generator, recompute=self.recompute)

    def extra_repr(self):
        return super().extra_repr() + (", recompute=True" if self.recompute else "")

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile fastdrop.torch.{type(self).__name__}: its forward "
            "calls fastdrop's Python functions. Use torch.compile or torch.export (or "
            "torch.jit.trace), or keep torch's dropout modules in a model to be scripted.")


class Dropout(_FastdropDropout, torch.nn.Dropout):
    """fastdrop's ``torch.nn.Dropout``: zeroes elements with probability p, scales the rest.

    See `fastdrop.torch.functional.dropout`; the parameters are those of
    `_FastdropDropout` (torch's ``p`` and ``inplace``, fastdrop's ``recompute`` and
    ``generator``).

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> layer = fastdrop.torch.Dropout(0.2)
    >>> layer
    Dropout(p=0.2, inplace=False)
    >>> x = torch.ones(4)
    >>> layer.eval()(x) is x
    True
    """

    _function = staticmethod(functional.dropout)


class Dropout1d(_FastdropDropout, torch.nn.Dropout1d):
    """fastdrop's ``torch.nn.Dropout1d``: zeroes whole channels of (N, C, L) or (C, L) input."""

    _function = staticmethod(functional.dropout1d)


class Dropout2d(_FastdropDropout, torch.nn.Dropout2d):
    """fastdrop's ``torch.nn.Dropout2d``: zeroes whole channels of (N, C, H, W) input."""

    _function = staticmethod(functional.dropout2d)


class Dropout3d(_FastdropDropout, torch.nn.Dropout3d):
    """fastdrop's ``torch.nn.Dropout3d``: zeroes whole channels of (N, C, D, H, W) input."""

    _function = staticmethod(functional.dropout3d)


class AlphaDropout(_FastdropDropout, torch.nn.AlphaDropout):
    """fastdrop's ``torch.nn.AlphaDropout``: dropout that keeps SELU's mean 0 and variance 1."""

    _function = staticmethod(functional.alpha_dropout)


class FeatureAlphaDropout(_FastdropDropout, torch.nn.FeatureAlphaDropout):
    """fastdrop's ``torch.nn.FeatureAlphaDropout``: alpha dropout of whole channels."""

    _function = staticmethod(functional.feature_alpha_dropout)


TWINS = {
    torch.nn.Dropout: Dropout,
    torch.nn.Dropout1d: Dropout1d,
    torch.nn.Dropout2d: Dropout2d,
    torch.nn.Dropout3d: Dropout3d,
    torch.nn.AlphaDropout: AlphaDropout,
    torch.nn.FeatureAlphaDropout: FeatureAlphaDropout,
}


def replace_dropout(model, *, recompute=False, functional=True):
    """Swap every torch dropout module of ``model`` for its fastdrop twin, in place.

    Modules of exactly ``torch.nn.Dropout``, ``Dropout1d/2d/3d``, ``AlphaDropout`` and
    ``FeatureAlphaDropout`` (not subclasses, whose forward may differ) are replaced,
    at any depth (Sequential, ModuleList, ModuleDict, attributes). A twin keeps the
    module's attributes (``p``, ``inplace``, training mode, hooks); a module used in
    several places is replaced by one twin. Nothing else changes: no parameter,
    buffer or ``state_dict`` key.

    With ``functional=True``, the model's forward also runs inside
    `fastdrop.torch.dropout_mode`: the dropout its code calls through
    ``torch.nn.functional`` (and ``F.scaled_dot_product_attention`` with dropout) is
    fastdrop's too. Forward hooks on every module enter the mode (the first module a
    call enters, so that ``torch.utils.checkpoint``'s recomputation routes as the
    forward did); calling ``replace_dropout`` again updates them, never doubles them.

    Parameters
    ----------
    model : torch.nn.Module
        The model; changed in place.
    recompute : bool, default False
        The twins' ``recompute`` setting (and the functional dropout's).
    functional : bool, default True
        Route the model's functional dropout and attention dropout too; False
        replaces the modules only (and removes the hooks an earlier call installed).

    Returns
    -------
    int
        How many modules were replaced.

    Raises
    ------
    TypeError
        ``model`` is not a ``torch.nn.Module``.
    ValueError
        ``model`` is itself a torch dropout module (it cannot be replaced in place:
        construct its twin instead).

    Examples
    --------
    >>> import torch, fastdrop.torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.1))
    >>> fastdrop.torch.replace_dropout(model)
    1
    >>> type(model[1]).__module__
    'fastdrop.torch.modules'
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if type(model) in TWINS:
        raise ValueError(f"model is itself a {type(model).__name__}: use "
                         f"fastdrop.torch.{TWINS[type(model)].__name__}(p={model.p}) instead")

    def twin_of(child):
        twin = TWINS[type(child)].__new__(TWINS[type(child)])
        twin.__dict__.update(child.__dict__)  # p, inplace, training, hooks
        twin.recompute, twin.generator = bool(recompute), None
        return twin
    replaced = replace_torch_dropouts(model, twin_of)
    for module in model.modules():
        mode.install_hooks(module, recompute if functional else None)
    return replaced


def replace_torch_dropouts(model, replacement):
    """Each module of exactly a torch dropout type in ``model``, at any depth, swapped in place.

    ``replacement(module)`` makes the new module; a module used in several places is
    replaced once, by one new module. Returns how many modules were replaced.
    """
    replaced = {}  # id of a replaced module -> its replacement
    for module in list(model.modules()):
        for name, child in list(module._modules.items()):
            if child is None or type(child) not in TWINS:
                continue
            if id(child) not in replaced:
                replaced[id(child)] = replacement(child)
            module._modules[name] = replaced[id(child)]
    return len(replaced)
