"""The dropout layers: Dropout and its variants, GaussianDropout, DropConnectLinear.

Each random layer (Dropout, ChannelDropout, Dropout1d/2d/3d,
VariationalDropout, AlphaDropout, FeatureAlphaDropout, GaussianDropout,
DropConnectLinear) draws its masks from its own `fastdrop.Generator`, one stream
per training-mode call, through the graph ops of `functional`;
``Module.reseed(seed)`` derives all the generators from one seed, so training
with a given seed is reproducible.

`fastdrop.nn.predict_mc` keys the masks differently: it sets each random
layer's ``mask_keys`` (an `mc.RowKeys`), and the layer has the keys draw the
pass's masks, so that the mask of X's row i in Monte Carlo sample k depends on
(layer, k, i) only, not on how the rows were cut into forward passes.
"""
import numpy as np

import fastdrop

from .._internal import channel_noise_shape, check_gaussian_p, check_noise_shape, check_p
from .engine import _result, as_tensor, is_grad_enabled
from .functional import (
    _free_to_overwrite,
    alpha_dropout,
    dropconnect_linear,
    dropout,
    gaussian_dropout,
)
from .modules import Linear, Module


def _check_inference(layer):
    if is_grad_enabled():
        raise RuntimeError(f"{type(layer).__name__}: keyed masks (mask_keys) are for inference; "
                           "predict_mc runs the model under no_grad()")


def _keyed_input(layer, x, rows_axis):
    """The array a keyed layer writes its output into, after checking that rows are on axis 0.

    ``x.data`` itself when `functional`'s in-place rule allows it (and it is
    C-contiguous), else a C-ordered copy.
    """
    keys = layer.mask_keys
    _check_inference(layer)
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
        `fastdrop.nn.functional`); the input tensor then cannot be used again.
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
        self.mask_keys.dropout(kernel, data, self.p, mask_shape, shares_rows, self.backend)
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
        self.mask_keys.gaussian_dropout(data, self.p, self.backend)
        return _keyed_output(x, data, overwrite, "gaussian_dropout")

    def __repr__(self):
        return f"GaussianDropout(p={self.p})"


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
        _check_inference(self)
        keys = self.mask_keys
        if x.ndim != 2 or x.shape[0] != keys.rows or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"DropConnectLinear: predict_mc needs inputs of shape "
                             f"({keys.rows}, {self.weight.shape[0]}) in this pass, got "
                             f"{tuple(x.shape)}")
        out = keys.dropconnect_matmul(x.data, self.weight.data, self.p, self.backend)
        if self.bias is not None:
            out += self.bias.data
        return _result(out, (x, self.weight), "dropconnect_linear")

    def __repr__(self):
        return (f"DropConnectLinear({self.weight.shape[0]}, {self.weight.shape[1]}, p={self.p}, "
                f"dtype={self.weight.dtype})")
