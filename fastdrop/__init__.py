"""fastdrop: memory-speed CPU dropout with exact, bit-packed, counter-based masks.

Layers, each using only the ones before it:

1. ``fastdrop.rng`` -- the Philox4x32-10 block function;
2. ``fastdrop.maskstream`` -- the spec: counters, thresholds, the normal map (docs/mask-stream.md);
3. ``fastdrop.kernels`` -- compiled kernels, one folder per backend (cython/, numba/);
4. the public API -- ``_validate`` (argument values), ``streams`` (where (seed, stream)
   comes from), ``_calls`` (one checked record per call), ``_layout`` (arrays to and from
   kernels), ``_api`` (the functions, dispatching to a backend) and ``reference`` (the
   same functions in plain NumPy: the oracle); ``generator`` (`Generator`) on top;
5. ``fastdrop.nn``, ``fastdrop.cli`` and ``fastdrop.bench``, which use the API.

``import fastdrop`` imports NumPy only; a compiled backend loads on first use.
"""
from . import reference
from ._api import (
    alpha_dropout,
    alpha_dropout_backward,
    apply_mask,
    bernoulli_mask,
    channel_dropout,
    dropconnect,
    dropout,
    dropout_backward,
    dropout_backward_recompute,
    feature_alpha_dropout,
    gaussian_dropout,
    gaussian_dropout_backward,
    gaussian_noise,
)
from ._backends import available_backends
from ._config import get_num_threads, num_threads, set_num_threads
from ._fused_api import (
    bias_dropout_add,
    bias_dropout_add_backward,
    dropout_add,
    softmax_dropout,
    softmax_dropout_backward,
)
from ._mask import DropoutMask, GaussianNoise, pack_mask, unpack_mask
from .generator import Generator, default_generator
from .rng import philox4x32_10
from .streams import StreamSource

__version__ = "0.1.0"

__all__ = [
    "DropoutMask",
    "GaussianNoise",
    "Generator",
    "StreamSource",
    "alpha_dropout",
    "alpha_dropout_backward",
    "apply_mask",
    "available_backends",
    "bernoulli_mask",
    "bias_dropout_add",
    "bias_dropout_add_backward",
    "channel_dropout",
    "default_generator",
    "dropconnect",
    "dropout",
    "dropout_add",
    "dropout_backward",
    "dropout_backward_recompute",
    "feature_alpha_dropout",
    "gaussian_dropout",
    "gaussian_dropout_backward",
    "gaussian_noise",
    "get_include",
    "get_num_threads",
    "num_threads",
    "pack_mask",
    "philox4x32_10",
    "reference",
    "set_num_threads",
    "softmax_dropout",
    "softmax_dropout_backward",
    "unpack_mask",
]


def get_include() -> str:
    """Folder holding fastdrop's C headers (``fastdrop/dropout.h`` and friends).

    Add it to ``include_dirs`` to use fastdrop from C or Cython, like
    ``numpy.get_include()``.

    Returns
    -------
    str
        Absolute path of the folder that contains ``fastdrop/*.h``.
    """
    import os

    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "include")
