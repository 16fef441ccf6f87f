"""Modules built from the engine's ops: Linear, activations, Dropout, Sequential, MLP.

Weights are stored as (in_features, out_features), so a layer computes
``x @ weight + bias``. Each random layer (Dropout and its variants:
ChannelDropout, Dropout1d/2d/3d, VariationalDropout, AlphaDropout,
FeatureAlphaDropout, GaussianDropout, DropConnectLinear) draws its masks from
its own `fastdrop.Generator`; ``Module.reseed(seed)`` derives all of them from
one seed, so training with a given seed is reproducible.

`fastdrop.nn.predict_mc` keys the masks differently: it sets each random
layer's ``mask_keys`` (a `RowKeys`) so that the mask of X's row i in Monte
Carlo sample k depends on (layer, k, i) only, not on how the rows were cut
into forward passes.
"""
import dataclasses
import math

import numpy as np

import fastdrop
from fastdrop._internal import channel_noise_shape, check_gaussian_p, check_noise_shape, check_p

from .engine import (
    Tensor,
    _free_to_overwrite,
    _matmul,
    _result,
    alpha_dropout,
    as_tensor,
    dropconnect_linear,
    dropout,
    gaussian_dropout,
    is_grad_enabled,
)

MC_STREAM_BASE = 2**63  # Monte Carlo sample k uses stream 2**63 + k; training counts up from 0


@dataclasses.dataclass(frozen=True)
class RowKeys:
    """Masks keyed by (sample, row) for one forward pass of `fastdrop.nn.predict_mc`.

    The pass's input stacks ``blocks`` in order: block ``(sample, first_row,
    rows)`` holds the rows ``first_row ... first_row + rows - 1`` of the data
    (global row indices) for Monte Carlo sample ``sample``. A random layer with
    these keys draws that block's mask with ``seed``, stream
    ``MC_STREAM_BASE + sample`` and offset ``first_row * w``, w being the
    layer's mask elements per row, so each row's mask is the one it would get
    in any other cut of the work. With ``consistent`` every row of a sample
    shares one row's mask (offset 0), as Baal's ConsistentDropout does.

    Attributes
    ----------
    seed : int
        The layer's 64-bit key.
    blocks : tuple of (int, int, int)
        ``(sample, first_row, rows)`` per block, in the order of the pass's rows.
    consistent : bool
    """

    seed: int
    blocks: tuple
    consistent: bool = False

    @property
    def rows(self):
        """Rows in the pass (the sum over the blocks)."""
        return sum(rows for _, _, rows in self.blocks)

    def row_blocks(self):
        """``(row slice in the pass, stream, first_row, rows)`` for each block."""
        start = 0
        for sample, first_row, rows in self.blocks:
            yield slice(start, start + rows), MC_STREAM_BASE + sample, first_row, rows
            start += rows

    def mask_blocks(self, mask_shape, shares_rows=False):
        """``(row slice, stream, offset, block mask shape)`` of each block, for a pass's mask.

        The mask has ``mask_shape`` over the pass. ``mask_shape[0]`` is the pass's
        rows, or 1 with ``shares_rows``: a layer that shares its mask along the rows
        already (``broadcast_dims`` with axis 0), whose rows then share it in every
        sample.
        """
        shared = self.consistent or shares_rows
        width = math.prod(mask_shape[1:])
        for rows_slice, stream, first_row, rows in self.row_blocks():
            block_shape = ((1 if shared else rows),) + tuple(mask_shape[1:])
            yield rows_slice, stream, (0 if shared else first_row * width), block_shape


def _keyed_input(layer, x, rows_axis):
    """The array a keyed layer writes its output into, after checking that rows are on axis 0.

    ``x.data`` itself when the engine's in-place rule allows it (and it is
    C-contiguous), else a C-ordered copy.
    """
    keys = layer.mask_keys
    if is_grad_enabled():
        raise RuntimeError(f"{type(layer).__name__}: keyed masks (mask_keys) are for inference; "
                           "predict_mc runs the model under no_grad()")
    if rows_axis != 0 or x.ndim == 0 or x.shape[0] != keys.rows:
        raise ValueError(f"{type(layer).__name__}: predict_mc needs the rows of X on axis 0 of "
                         f"every dropped tensor ({keys.rows} rows in this pass), got an input of "
                         f"shape {tuple(x.shape)}")
    overwrite = (getattr(layer, "inplace", True) and _free_to_overwrite(x)
                 and x.data.flags.c_contiguous)
    return (x.data if overwrite else np.array(x.data, order="C")), overwrite


def _keyed_output(x, data, overwrite, op):
    out = _result(data, (x,), op)
    x._overwritten = overwrite
    return out


class Module:
    """Base class of the layers: parameters, train/eval mode and dropout seeding.

    Attributes
    ----------
    training : bool
        True (the default) in training mode, where Dropout drops; False after `eval`.
    """

    training = True

    def __call__(self, x):
        """The layer's output for input ``x``: ``self.forward(x)``."""
        return self.forward(x)

    def forward(self, x):
        """The layer's output for input ``x`` (a Tensor or an array)."""
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def named_children(self):
        """(name, module) pairs of the modules directly inside this one."""
        return ()

    def children(self):
        """The modules directly inside this one."""
        return [child for _, child in self.named_children()]

    def modules(self):
        """The module itself and every module inside it, depth first."""
        yield self
        for child in self.children():
            yield from child.modules()

    def named_parameters(self):
        """(name, Tensor) pairs of the trainable tensors, names like ``"1.weight"``."""
        for child_name, child in self.named_children():
            for name, parameter in child.named_parameters():
                yield f"{child_name}.{name}", parameter

    def parameters(self):
        """The trainable tensors of this module and the modules inside it."""
        return [parameter for _, parameter in self.named_parameters()]

    def state_dict(self):
        """Copies of the parameter values, by name (see `named_parameters`).

        Returns
        -------
        dict of str to numpy.ndarray
        """
        return {name: parameter.data.copy() for name, parameter in self.named_parameters()}

    def load_state_dict(self, state):
        """Copy values into the parameters, checking names, shapes and dtype casts.

        Parameters
        ----------
        state : mapping of str to array_like
            As returned by `state_dict` (or read by `load`).

        Raises
        ------
        KeyError
            If a parameter is missing from ``state`` or ``state`` has extra names.
        ValueError
            If a shape differs.
        """
        parameters = dict(self.named_parameters())
        missing, extra = sorted(set(parameters) - set(state)), sorted(set(state) - set(parameters))
        if missing or extra:
            raise KeyError(f"state does not match the model: missing {missing}, unexpected {extra}")
        for name, parameter in parameters.items():
            value = np.asarray(state[name])
            if value.shape != parameter.shape:
                raise ValueError(f"{name}: state has shape {value.shape}, "
                                 f"the model has {parameter.shape}")
            np.copyto(parameter.data, value, casting="same_kind")

    def save(self, path):
        """Write the parameters to an ``.npz`` file (one array per `named_parameters` name).

        Parameters
        ----------
        path : str or os.PathLike
        """
        np.savez(path, **self.state_dict())

    def load(self, path):
        """Read parameters written by `save` into this model (same architecture).

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        Module
            self.
        """
        with np.load(path, allow_pickle=False) as archive:
            self.load_state_dict({name: archive[name] for name in archive.files})
        return self

    def zero_grad(self):
        """Forget the parameters' accumulated gradients (set ``grad`` to None)."""
        for parameter in self.parameters():
            parameter.grad = None

    def train(self, mode=True):
        """Set training mode (``mode=True``) or evaluation mode on every module; returns self."""
        for module in self.modules():
            module.training = bool(mode)
        return self

    def eval(self):
        """Evaluation mode: Dropout is the identity. Returns self."""
        return self.train(False)

    def reseed(self, seed):
        """Give every random layer inside a fresh generator derived from ``seed``.

        Parameters
        ----------
        seed : int
            Non-negative. Random layer k (a module whose ``generator`` is a
            `fastdrop.Generator`: Dropout and its variants, DropConnectLinear;
            in `modules` order) gets ``fastdrop.Generator(key)`` with the key
            drawn from ``numpy.random.SeedSequence([seed, k])``, so layers never
            share masks.

        Returns
        -------
        Module
            self.
        """
        layers = [module for module in self.modules()
                  if isinstance(getattr(module, "generator", None), fastdrop.Generator)]
        for index, layer in enumerate(layers):
            key = np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0]
            layer.generator = fastdrop.Generator(int(key))
        return self

    @property
    def dtype(self):
        """dtype of the first parameter (float32 for a module without parameters)."""
        parameters = self.parameters()
        return parameters[0].dtype if parameters else np.dtype(np.float32)


class Linear(Module):
    """Affine layer ``x @ weight + bias``.

    Parameters
    ----------
    in_features, out_features : int
        Input and output widths.
    bias : bool, default True
        Whether to add a bias (initialised to zero).
    init : {"he", "glorot"}, default "he"
        Initial weights, uniform in [-b, b]: He, ``b = sqrt(6 / in_features)``
        (keeps the scale of ReLU activations), or Glorot,
        ``b = sqrt(6 / (in_features + out_features))`` (for tanh).
    dtype : numpy dtype, default numpy.float32
        float32 or float64.
    rng : int or numpy.random.Generator, optional
        Source of the initial weights.

    Attributes
    ----------
    weight : Tensor, shape (in_features, out_features)
        Column j holds the incoming weights of output unit j.
    bias : Tensor, shape (out_features,), or None
    """

    def __init__(self, in_features, out_features, *, bias=True, init="he", dtype=np.float32,
                 rng=None):
        variance = {"he": 2.0 / in_features, "glorot": 2.0 / (in_features + out_features)}
        if init not in variance:
            raise ValueError(f"init must be 'he' or 'glorot', got {init!r}")
        bound = np.sqrt(3.0 * variance[init])  # U(-b, b) has variance b**2 / 3
        weight = np.random.default_rng(rng).uniform(-bound, bound, (in_features, out_features))
        self.weight = Tensor(weight, requires_grad=True, dtype=dtype)
        self.bias = None
        if bias:
            self.bias = Tensor(np.zeros(out_features), requires_grad=True, dtype=dtype)

    def forward(self, x):
        """``x @ weight``, plus ``bias`` if the layer has one (x in the weight's dtype)."""
        out = as_tensor(x, dtype=self.weight.dtype) @ self.weight
        return out if self.bias is None else out + self.bias

    def named_parameters(self):
        """``("weight", weight)``, then ``("bias", bias)`` if the layer has one."""
        yield "weight", self.weight
        if self.bias is not None:
            yield "bias", self.bias

    def __repr__(self):
        return f"Linear({self.weight.shape[0]}, {self.weight.shape[1]}, dtype={self.weight.dtype})"


class DropConnectLinear(Linear):
    """Linear layer with DropConnect (Wan et al. 2013): weights are dropped, not activations.

    In training mode each call takes the next stream of ``generator``, drops
    each weight with probability p (`fastdrop.dropconnect`, kept weights scaled
    by ``1 / (1 - p)``) and computes ``x @ weight_dropped + bias`` with
    `fastdrop.nn.dropconnect_linear`; the bias is not dropped. One weight mask
    serves the whole batch. Evaluation mode and p = 0 use the full weights,
    unscaled: the layer is then exactly `Linear`.

    Parameters
    ----------
    in_features, out_features : int
    p : float, default 0.5
        Probability of dropping each weight.
    bias, init, dtype, rng
        As in `Linear` (the same initial weights for the same rng).
    recompute : bool, default False
        Keep neither the dropped weights nor the mask between forward and
        backward (backward regenerates them); same gradients, bit for bit.
    seed, backend
        As in `Dropout`.

    Attributes
    ----------
    weight, bias
        As in `Linear`.
    generator : fastdrop.Generator
    last_mask : fastdrop.DropoutMask or None
        The weight mask of the last training-mode call (shape
        ``(in_features, out_features)``); None with ``recompute=True``.
    mask_keys : RowKeys or None
        As in `Dropout`: set by `fastdrop.nn.predict_mc`. Sample k's weight
        mask (stream ``2**63 + k``, offset 0) serves every row of sample k, in
        whatever passes they run: DropConnect's masks are consistent by nature.
    """

    mask_keys = None

    def __init__(self, in_features, out_features, p=0.5, *, bias=True, init="he",
                 dtype=np.float32, rng=None, recompute=False, seed=None, backend="auto"):
        super().__init__(in_features, out_features, bias=bias, init=init, dtype=dtype, rng=rng)
        self.p = check_p(p)
        self.recompute = bool(recompute)
        self.backend = backend
        self.generator = fastdrop.Generator(seed)
        self.last_mask = None

    def forward(self, x):
        """``x @ weight_dropped + bias`` in training mode with p > 0, else `Linear.forward`.

        Each such call takes the next stream of ``generator`` and keeps its weight mask in
        ``last_mask``; under `predict_mc`, ``mask_keys`` keys the masks instead.
        """
        if not self.training or self.p == 0.0:
            return super().forward(x)
        if self.mask_keys is not None:
            return self._keyed_forward(as_tensor(x, dtype=self.weight.dtype))
        seed, stream = self.generator.reserve_stream()
        out, self.last_mask = dropconnect_linear(
            as_tensor(x, dtype=self.weight.dtype), self.weight, self.bias, self.p, seed=seed,
            stream=stream, recompute=self.recompute, backend=self.backend)
        return out

    def _keyed_forward(self, x):
        """Inference with `mask_keys`: each block times its sample's dropped weights."""
        if is_grad_enabled():
            raise RuntimeError("DropConnectLinear: keyed masks (mask_keys) are for inference; "
                               "predict_mc runs the model under no_grad()")
        keys = self.mask_keys
        if x.ndim != 2 or x.shape[0] != keys.rows or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"DropConnectLinear: predict_mc needs inputs of shape "
                             f"({keys.rows}, {self.weight.shape[0]}) in this pass, got "
                             f"{tuple(x.shape)}")
        out = np.empty((x.shape[0], self.weight.shape[1]),
                       dtype=np.result_type(x.dtype, self.weight.dtype))
        dropped = {}  # stream -> this sample's weights (a sample's rows may come in several blocks)
        for rows, stream, first_row, count in keys.row_blocks():
            if stream not in dropped:
                dropped[stream] = fastdrop.dropconnect(self.weight.data, self.p, seed=keys.seed,
                                                       stream=stream, backend=self.backend)[0]
            out[rows] = _matmul(x.data[rows], dropped[stream],
                                labels=np.arange(first_row, first_row + count))
        if self.bias is not None:
            out += self.bias.data
        return _result(out, (x, self.weight), "dropconnect_linear")

    def __repr__(self):
        return (f"DropConnectLinear({self.weight.shape[0]}, {self.weight.shape[1]}, p={self.p}, "
                f"dtype={self.weight.dtype})")


class ReLU(Module):
    """Elementwise max(x, 0)."""

    def forward(self, x):
        """max(x, 0), elementwise."""
        return as_tensor(x).relu()

    def __repr__(self):
        return "ReLU()"


class Tanh(Module):
    """Elementwise hyperbolic tangent."""

    def forward(self, x):
        """tanh(x), elementwise."""
        return as_tensor(x).tanh()

    def __repr__(self):
        return "Tanh()"


class Dropout(Module):
    """Inverted dropout in training mode, the identity in evaluation mode.

    Each training-mode call takes the next stream of ``generator`` and runs
    `fastdrop.nn.dropout`: each element is dropped with probability ``p`` and
    the rest are scaled by ``1 / (1 - p)``.

    Parameters
    ----------
    p : float, default 0.5
        Drop probability in [0, 1].
    broadcast_dims : int or tuple of int, optional
        Axes that share one mask element (Flax's ``broadcast_dims``, Keras'
        ``noise_shape`` with 1 on these axes): ``broadcast_dims=(2, 3)`` on an
        ``(N, C, H, W)`` input keeps or drops whole channels.
    recompute : bool, default False
        Store no mask between forward and backward; backward regenerates the
        bits from (seed, stream). Same gradients, bit for bit.
    inplace : bool, default True
        Overwrite the input's array when nothing else needs it (the rule is in
        `fastdrop.nn.engine`); the input tensor then cannot be used again.
    seed : int, optional
        Seed of this layer's generator; None draws one from the OS (use
        `Module.reseed` to seed a whole model).
    backend : str, default "auto"
        fastdrop backend for the kernels.

    Attributes
    ----------
    generator : fastdrop.Generator
        Where the (seed, stream) of each call comes from.
    last_mask : fastdrop.DropoutMask or None
        The packed mask of the last training-mode call, which the backward pass
        uses; None with ``recompute=True``, where no mask is stored.
    mask_keys : RowKeys or None
        Set by `fastdrop.nn.predict_mc` for each forward pass (None otherwise):
        masks keyed by (sample, row) instead of the generator's next stream.
    """

    mask_keys = None

    def __init__(self, p=0.5, *, broadcast_dims=None, recompute=False, inplace=True, seed=None,
                 backend="auto"):
        self.p = check_p(p)
        self.broadcast_dims = broadcast_dims
        self.backend = backend
        self.recompute = bool(recompute)
        self.inplace = bool(inplace)
        self.generator = fastdrop.Generator(seed)
        self.last_mask = None

    def noise_shape(self, shape):
        """The mask's shape for an input of ``shape``; None for one bit per element.

        Subclasses share mask elements along axes by returning 1 there; a shape
        the layer cannot take raises ValueError, in evaluation mode too.
        """
        if self.broadcast_dims is None:
            return None
        return check_noise_shape(tuple(shape), None, self.broadcast_dims)

    def rows_axis(self, shape):
        """The axis of an input of ``shape`` that holds the batch's rows (None: no such axis)."""
        return 0

    def forward(self, x):
        """Dropout of ``x`` in training mode with p > 0; else ``x`` itself (a Tensor).

        Each such call takes the next stream of ``generator`` and keeps its mask in
        ``last_mask``; under `predict_mc`, ``mask_keys`` keys the masks instead.
        """
        x = as_tensor(x)
        noise_shape = self.noise_shape(x.shape)  # checked before a stream is taken
        if not self.training or self.p == 0.0:
            return x
        if self.mask_keys is not None:
            return self._keyed_forward(x, noise_shape, fastdrop.dropout)
        seed, stream = self.generator.reserve_stream()
        out, self.last_mask = dropout(x, self.p, seed=seed, stream=stream,
                                      noise_shape=noise_shape, recompute=self.recompute,
                                      inplace=self.inplace, backend=self.backend)
        return out

    def _keyed_forward(self, x, noise_shape, kernel):
        """Inference with `mask_keys`: ``kernel`` (a fastdrop function) on each block, in place."""
        data, overwrite = _keyed_input(self, x, self.rows_axis(x.shape))
        mask_shape = data.shape if noise_shape is None else tuple(noise_shape)
        # one row in the pass or a mask shared along the rows? ask for two rows
        shares_rows = (noise_shape is not None
                       and self.noise_shape((2,) + tuple(x.shape[1:]))[0] == 1)
        for rows, stream, offset, block_shape in self.mask_keys.mask_blocks(mask_shape,
                                                                            shares_rows):
            kernel(data[rows], self.p, seed=self.mask_keys.seed, stream=stream, offset=offset,
                   noise_shape=block_shape, inplace=True, backend=self.backend)
        return _keyed_output(x, data, overwrite, kernel.__name__)

    def _extra_repr(self):
        extra = "" if self.broadcast_dims is None else f", broadcast_dims={self.broadcast_dims!r}"
        return extra + (", recompute=True" if self.recompute else "")

    def __repr__(self):
        return f"{type(self).__name__}(p={self.p}{self._extra_repr()})"


class ChannelDropout(Dropout):
    """Channel (spatial) dropout: each channel of each sample is kept or dropped whole.

    `fastdrop.channel_dropout` as a layer, for convolutional feature maps whose
    neighbouring values are strongly correlated (Tompson et al. 2015), where
    dropping single elements barely regularises. Kept channels are scaled by
    ``1 / (1 - p)``; evaluation mode is the identity.

    Parameters
    ----------
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis : int, default 1
        The channel axis (-1 for channels-last input such as ``(N, H, W, C)``).
    batch_axis : int or None, default 0
        The batch axis (one mask per sample); None for unbatched input.
    recompute, inplace, seed, backend
        As in `Dropout`.

    Attributes
    ----------
    generator, last_mask
        As in `Dropout`; ``last_mask.shape`` is e.g. ``(N, C, 1, 1)``: one bit
        per (sample, channel).

    Raises
    ------
    ValueError
        On call, if the input has no axis besides the batch and channel axes
        (nothing to share a channel's bit over) or an axis is out of range.
    """

    def __init__(self, p=0.5, *, channel_axis=1, batch_axis=0, recompute=False, inplace=True,
                 seed=None, backend="auto"):
        super().__init__(p, recompute=recompute, inplace=inplace, seed=seed, backend=backend)
        self.channel_axis = channel_axis
        self.batch_axis = batch_axis

    def noise_shape(self, shape):
        """The mask's shape for an input of ``shape``: its batch and channel axes, 1 elsewhere."""
        return channel_noise_shape(tuple(shape), self.channel_axis, self.batch_axis)

    def rows_axis(self, shape):
        """The batch axis as an index in [0, ndim); None without one."""
        return None if self.batch_axis is None else self.batch_axis % len(shape)

    def _extra_repr(self):
        return (f", channel_axis={self.channel_axis}, batch_axis={self.batch_axis}"
                + super()._extra_repr())


class _ChannelsFirstDropout(ChannelDropout):
    """Channel dropout for channels-first input with ``spatial_dims`` spatial axes (PyTorch's)."""

    spatial_dims = 0
    layouts = ""

    def __init__(self, p=0.5, *, recompute=False, inplace=True, seed=None, backend="auto"):
        super().__init__(p, recompute=recompute, inplace=inplace, seed=seed, backend=backend)

    def noise_shape(self, shape):
        batched = self.spatial_dims + 2
        if len(shape) not in (batched, batched - 1):
            raise ValueError(f"{type(self).__name__} expects {self.layouts}, got an input of "
                             f"shape {tuple(shape)} ({len(shape)}-d)")
        if len(shape) == batched:
            return channel_noise_shape(tuple(shape), 1, 0)
        return channel_noise_shape(tuple(shape), 0, None)

    def rows_axis(self, shape):
        return 0 if len(shape) == self.spatial_dims + 2 else None

    def _extra_repr(self):
        return ", recompute=True" if self.recompute else ""


class Dropout1d(_ChannelsFirstDropout):
    """Channel dropout of ``(N, C, L)`` or unbatched ``(C, L)`` input (PyTorch's Dropout1d).

    Each channel of each sample is kept (scaled by ``1 / (1 - p)``) or zeroed
    whole. Other shapes raise ValueError naming the shape. Parameters as in
    `Dropout` (without ``broadcast_dims``); see `ChannelDropout`.
    """

    spatial_dims = 1
    layouts = "a 3-d input (N, C, L) or a 2-d unbatched input (C, L)"


class Dropout2d(_ChannelsFirstDropout):
    """Channel dropout of ``(N, C, H, W)`` or unbatched ``(C, H, W)`` input (PyTorch's Dropout2d).

    Each channel of each sample is kept (scaled by ``1 / (1 - p)``) or zeroed
    whole. Other shapes raise ValueError naming the shape; a 3-d input is read
    as unbatched ``(C, H, W)`` (PyTorch 2 still reads it as ``(N, C, L)`` with a
    deprecation warning: use `Dropout1d` for that). Parameters as in `Dropout`
    (without ``broadcast_dims``); see `ChannelDropout`.
    """

    spatial_dims = 2
    layouts = "a 4-d input (N, C, H, W) or a 3-d unbatched input (C, H, W)"


class Dropout3d(_ChannelsFirstDropout):
    """Channel dropout of ``(N, C, D, H, W)`` or unbatched ``(C, D, H, W)`` input (PyTorch's).

    Each channel of each sample is kept (scaled by ``1 / (1 - p)``) or zeroed
    whole. Other shapes raise ValueError naming the shape. Parameters as in
    `Dropout` (without ``broadcast_dims``); see `ChannelDropout`.
    """

    spatial_dims = 3
    layouts = "a 5-d input (N, C, D, H, W) or a 4-d unbatched input (C, D, H, W)"


class VariationalDropout(Dropout):
    """Variational ("locked") dropout: one mask per sequence, the same at every time step.

    Gal and Ghahramani (2016, "A theoretically grounded application of dropout
    in recurrent neural networks") drop the same units of a sequence at every
    step; Merity et al. (2018, AWD-LSTM) call it locked dropout. Two uses:

    - **whole sequences** -- ``layer(x)`` on ``(N, T, F)`` input (``(T, N, F)``
      with ``batch_first=False``) draws one ``(N, 1, F)`` mask and stretches it
      over the time axis (a noise shape, no broadcast temporary): for an RNN's
      inputs and for the outputs between stacked RNN layers;
    - **step by step** -- for the recurrent state, computed one step at a time:
      call `start_sequence` once per sequence (batch), then ``layer.step(h)`` at
      every step. Each step uses the sequence's (seed, stream), so every step
      gets the same mask, and it equals the whole-sequence mask with the time
      axis removed.

    Parameters
    ----------
    p : float, default 0.5
        Drop probability in [0, 1].
    batch_first : bool, default True
        Input ``(N, T, ...)`` (True) or ``(T, N, ...)`` (False, PyTorch's RNN default).
    time_axis : int, optional
        The axis the mask is shared along; overrides ``batch_first`` (default 1
        with ``batch_first=True``, 0 otherwise).
    recompute, inplace, seed, backend
        As in `Dropout`.

    Attributes
    ----------
    generator, last_mask
        As in `Dropout`; ``last_mask.shape`` is the input's shape with 1 on the
        time axis.

    Examples
    --------
    >>> import numpy as np
    >>> from fastdrop.nn import VariationalDropout
    >>> drop = VariationalDropout(0.5, seed=0)
    >>> y = drop(np.ones((2, 5, 8), np.float32)).data
    >>> all(np.array_equal(y[:, 0], y[:, t]) for t in range(5))
    True
    """

    def __init__(self, p=0.5, *, batch_first=True, time_axis=None, recompute=False,
                 inplace=True, seed=None, backend="auto"):
        super().__init__(p, recompute=recompute, inplace=inplace, seed=seed, backend=backend)
        self.batch_first = bool(batch_first)
        self.time_axis = (1 if self.batch_first else 0) if time_axis is None else time_axis
        self.sequence = None  # (seed, stream) of the sequence `step` is in

    def noise_shape(self, shape):
        """The mask's shape for an input of ``shape``: 1 on the time axis, so every step shares it.

        Raises ValueError for an input with fewer than two axes.
        """
        if len(shape) < 2:
            raise ValueError(f"VariationalDropout needs an input with a time axis and at least "
                             f"one more axis, got shape {tuple(shape)}")
        return check_noise_shape(tuple(shape), None, (self.time_axis,))

    def rows_axis(self, shape):
        """Axis 0, unless it is the time axis (then None)."""
        return None if self.time_axis % len(shape) == 0 else 0

    def start_sequence(self):
        """Take the next stream for a new sequence: every `step` until the next call uses it.

        In evaluation mode or with p = 0 no stream is taken (`step` is then the
        identity) and the result is None; nor under `predict_mc`, whose keys
        give every step the whole-sequence mask of each row.

        Returns
        -------
        tuple of int or None
            The sequence's (seed, stream); the whole-sequence call ``layer(x)``
            with this stream draws the same mask.
        """
        drops = self.training and self.p > 0.0 and self.mask_keys is None
        self.sequence = self.generator.reserve_stream() if drops else None
        return self.sequence

    def step(self, x):
        """Dropout of one time step's values (``(N, F)``) with the current sequence's mask.

        Parameters
        ----------
        x : Tensor or array_like
            One step: the sequence input without its time axis.

        Returns
        -------
        Tensor
            x with the sequence's mask applied; x itself in evaluation mode or
            with p = 0.

        Raises
        ------
        RuntimeError
            In training mode before `start_sequence` was called.
        """
        x = as_tensor(x)
        if not self.training or self.p == 0.0:
            return x
        if self.mask_keys is not None:  # row i's mask of width F: as in the whole-sequence call
            return self._keyed_forward(x, None, fastdrop.dropout)
        if self.sequence is None:
            raise RuntimeError("VariationalDropout.step() needs start_sequence() first: call it "
                               "once at the start of every sequence (batch)")
        seed, stream = self.sequence
        out, self.last_mask = dropout(x, self.p, seed=seed, stream=stream,
                                      recompute=self.recompute, inplace=self.inplace,
                                      backend=self.backend)
        return out

    def _extra_repr(self):
        return f", time_axis={self.time_axis}" + (", recompute=True" if self.recompute else "")


class AlphaDropout(Dropout):
    """Alpha dropout for self-normalising (SELU) networks (PyTorch's AlphaDropout).

    In training mode each call takes the next stream of ``generator`` and runs
    `fastdrop.nn.alpha_dropout`: dropped elements are set to SELU's negative
    saturation value and everything goes through the affine map that keeps
    inputs with mean 0 and variance 1 at mean 0 and variance 1 (Klambauer et
    al. 2017). Evaluation mode and p = 0 are the identity.

    Parameters
    ----------
    p : float, default 0.5
        Drop probability in [0, 1].
    recompute, inplace, seed, backend
        As in `Dropout`.

    Attributes
    ----------
    generator, last_mask
        As in `Dropout`.
    """

    def __init__(self, p=0.5, *, recompute=False, inplace=True, seed=None, backend="auto"):
        super().__init__(p, recompute=recompute, inplace=inplace, seed=seed, backend=backend)

    def forward(self, x):
        """Alpha dropout of ``x`` in training mode with p > 0; else ``x`` itself (a Tensor).

        Each such call takes the next stream of ``generator`` and keeps its mask in
        ``last_mask``; under `predict_mc`, ``mask_keys`` keys the masks instead.
        """
        x = as_tensor(x)
        noise_shape = self.noise_shape(x.shape)
        if not self.training or self.p == 0.0:
            return x
        if self.mask_keys is not None:
            return self._keyed_forward(x, noise_shape, fastdrop.alpha_dropout)
        seed, stream = self.generator.reserve_stream()
        out, self.last_mask = alpha_dropout(x, self.p, seed=seed, stream=stream,
                                            noise_shape=noise_shape, recompute=self.recompute,
                                            inplace=self.inplace, backend=self.backend)
        return out

    def _extra_repr(self):
        return ", recompute=True" if self.recompute else ""


class FeatureAlphaDropout(ChannelDropout):
    """Alpha dropout of whole channels (PyTorch's FeatureAlphaDropout).

    `fastdrop.feature_alpha_dropout` as a layer: each channel of each sample
    is kept (``a * x + b``) or set to the dropped value whole.

    Parameters
    ----------
    p : float, default 0.5
        Probability of dropping a channel.
    channel_axis : int, default 1
    batch_axis : int or None, default 0
        As in `ChannelDropout`.
    recompute, inplace, seed, backend
        As in `Dropout`.
    """

    forward = AlphaDropout.forward  # ChannelDropout's mask shape, alpha dropout's arithmetic


class GaussianDropout(Module):
    """Gaussian dropout: multiply by noise from N(1, p / (1 - p)) (Keras' GaussianDropout).

    In training mode each call takes the next stream of ``generator`` and runs
    `fastdrop.nn.gaussian_dropout`; the backward regenerates the noise, so
    nothing of the input's size is stored. Evaluation mode and p = 0 are the
    identity.

    Parameters
    ----------
    p : float, default 0.5
        Rate in [0, 1): the noise variance p / (1 - p) matches Bernoulli dropout
        with drop rate p.
    inplace, seed, backend
        As in `Dropout`.

    Attributes
    ----------
    generator : fastdrop.Generator
    last_noise : fastdrop.GaussianNoise or None
        The (seed, stream, offset, p) of the last training-mode call.
    mask_keys : RowKeys or None
        As in `Dropout`: set by `fastdrop.nn.predict_mc`, which keys the
        noise by (sample, row).
    """

    mask_keys = None

    def __init__(self, p=0.5, *, inplace=True, seed=None, backend="auto"):
        self.p = check_gaussian_p(p)
        self.backend = backend
        self.inplace = bool(inplace)
        self.generator = fastdrop.Generator(seed)
        self.last_noise = None

    def forward(self, x):
        """``x`` times Gaussian noise in training mode with p > 0; else ``x`` itself (a Tensor).

        Each such call takes the next stream of ``generator`` and keeps its noise record in
        ``last_noise``; under `predict_mc`, ``mask_keys`` keys the noise instead.
        """
        x = as_tensor(x)
        if not self.training or self.p == 0.0:
            return x
        if self.mask_keys is not None:
            return self._keyed_forward(x)
        seed, stream = self.generator.reserve_stream()
        out, self.last_noise = gaussian_dropout(x, self.p, seed=seed, stream=stream,
                                                inplace=self.inplace, backend=self.backend)
        return out

    def _keyed_forward(self, x):
        """Inference with `mask_keys`: noise of each block from its (stream, offset), in place."""
        data, overwrite = _keyed_input(self, x, 0)
        for rows, stream, offset, block_shape in self.mask_keys.mask_blocks(data.shape):
            if block_shape == data[rows].shape:
                fastdrop.gaussian_dropout(data[rows], self.p, seed=self.mask_keys.seed,
                                          stream=stream, offset=offset, inplace=True,
                                          backend=self.backend)
            else:  # consistent: one row of multipliers (the noise of ones) for every row
                multipliers = fastdrop.gaussian_dropout(
                    np.ones(block_shape, data.dtype), self.p, seed=self.mask_keys.seed,
                    stream=stream, offset=offset, backend=self.backend)[0]
                np.multiply(data[rows], multipliers, out=data[rows])
        return _keyed_output(x, data, overwrite, "gaussian_dropout")

    def __repr__(self):
        return f"GaussianDropout(p={self.p})"


class Sequential(Module):
    """Modules applied one after the other.

    Parameters
    ----------
    *layers : Module
    """

    def __init__(self, *layers):
        self.layers = list(layers)

    def forward(self, x):
        """``x`` through every layer, in order."""
        for layer in self.layers:
            x = layer(x)
        return x

    def named_children(self):
        """``(str(index), layer)`` for each layer, in order."""
        return [(str(index), layer) for index, layer in enumerate(self.layers)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        inner = "".join(f"\n  {layer!r}," for layer in self.layers)
        return f"{type(self).__name__}({inner}\n)"


# activation -> (module, weight initialisation suited to it)
ACTIVATIONS = {"relu": (ReLU, "he"), "tanh": (Tanh, "glorot")}


class MLP(Sequential):
    """Multi-layer perceptron: [Dropout] Linear, activation, [Dropout] Linear, ..., Linear.

    Parameters
    ----------
    sizes : sequence of int
        Widths from input to output, e.g. ``[784, 1024, 1024, 10]``.
    dropout : float, sequence of float or "auto", default 0.0
        A float is the drop rate of every hidden layer (none on the input). A
        sequence gives one rate per Linear layer, for that layer's input (so
        entry 0 is the input dropout). "auto" uses ``suggest_dropout(sizes)``.
        Rate 0 adds no Dropout layer. The output is never dropped.
    activation : {"relu", "tanh"}, default "relu"
        With He initialisation for ReLU and Glorot for tanh.
    recompute : bool, default False
        Passed to every Dropout layer.
    dtype : numpy dtype, default numpy.float32
    seed : int, optional
        Seeds the initial weights and (via `Module.reseed`) the dropout masks.

    Attributes
    ----------
    sizes : list of int
    dropout_rates : list of float
        One per Linear layer: the rate applied to its input.

    Examples
    --------
    >>> from fastdrop.nn import MLP
    >>> model = MLP([64, 32, 10], dropout=[0.1, 0.5], seed=0)
    >>> [type(layer).__name__ for layer in model]
    ['Dropout', 'Linear', 'ReLU', 'Dropout', 'Linear']
    """

    def __init__(self, sizes, *, dropout=0.0, activation="relu", recompute=False,
                 dtype=np.float32, seed=None):
        self.sizes = _check_sizes(sizes)
        linear_count = len(self.sizes) - 1
        if isinstance(dropout, str):
            if dropout != "auto":
                raise ValueError(f"dropout must be a rate, a list of rates or 'auto', "
                                 f"got {dropout!r}")
            rates = suggest_dropout(self.sizes)
        elif np.ndim(dropout) == 0:
            rates = [0.0] + [dropout] * (linear_count - 1)
        else:
            rates = list(dropout)
            if len(rates) != linear_count:
                raise ValueError(f"{linear_count} Linear layers need {linear_count} dropout rates "
                                 f"(one per layer input), got {len(rates)}")
        self.dropout_rates = [check_p(rate) for rate in rates]
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
        activation_class, init = ACTIVATIONS[activation]
        rng = np.random.default_rng(seed)
        layers = []
        for index, rate in enumerate(self.dropout_rates):
            if rate > 0:
                layers.append(Dropout(rate, recompute=recompute))
            layers.append(Linear(self.sizes[index], self.sizes[index + 1], init=init, dtype=dtype,
                                 rng=rng))
            if index < linear_count - 1:
                layers.append(activation_class())
        super().__init__(*layers)
        if seed is not None:
            self.reseed(seed)


def _check_sizes(sizes):
    sizes = [int(size) for size in sizes]
    if len(sizes) < 2 or min(sizes) < 1:
        raise ValueError(f"sizes must list at least an input and an output width, all >= 1, "
                         f"got {sizes}")
    return sizes


def _nearest_twentieth(rate):
    return round(float(rate) * 20) / 20


def suggest_dropout(sizes):
    """Starting drop rates for an MLP, one per Linear layer's input (docs/nn.md).

    The rule, each rate rounded to the nearest 0.05:

    - input, ``n`` features: rises with log10(n) from 0 at 10 features to 0.2
      at 1000 or more (none for a handful of features, light for pixels);
    - a hidden layer fed by ``w`` weights (``w = width_before * width``): rises
      with log10(w) from 0.3 at 1e4 weights or fewer to 0.5 at 1e6 or more;
    - the last hidden layer continues to rise above 1e6 weights, up to 0.7 at
      1e7 or more;
    - the output layer is never dropped.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths from input to output.

    Returns
    -------
    list of float
        ``len(sizes) - 1`` rates, suitable for ``MLP(sizes, dropout=rates)``.

    Notes
    -----
    Guidelines, not results: validate on your data. Sources: Hinton et al.
    (2012, arXiv:1207.0580) drop 20% of inputs and 50% of hidden units;
    Srivastava et al. (2014, JMLR 15, appendix A) recommend retaining 0.8 of
    real-valued inputs and 0.5-0.8 of hidden units, more units when dropping
    more; Krizhevsky et al. (2012) drop 0.5 on AlexNet's 4096-unit layers.
    Ours: scaling with log10 of the incoming weight count (smaller layers
    overfit less and keep more units) and the 0.7 ceiling for a very large last
    hidden layer. Limits: fully connected layers only; tabular inputs with a
    few informative features may need no input dropout; small data sets may
    want more, very large ones less. docs/nn.md has the details.

    Examples
    --------
    >>> from fastdrop.nn import suggest_dropout
    >>> suggest_dropout([784, 1024, 1024, 10])
    [0.2, 0.5, 0.5]
    >>> suggest_dropout([64, 512, 512, 10])
    [0.1, 0.35, 0.45]
    """
    sizes = _check_sizes(sizes)
    rates = [np.interp(np.log10(sizes[0]), [1, 3], [0.0, 0.2])]
    for layer in range(1, len(sizes) - 1):
        weights_in = np.log10(sizes[layer - 1] * sizes[layer])
        if layer == len(sizes) - 2:
            rates.append(np.interp(weights_in, [4, 6, 7], [0.3, 0.5, 0.7]))
        else:
            rates.append(np.interp(weights_in, [4, 6], [0.3, 0.5]))
    return [_nearest_twentieth(rate) for rate in rates]
