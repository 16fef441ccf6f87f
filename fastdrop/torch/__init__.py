"""fastdrop for PyTorch: a drop-in for ``torch.nn.Dropout`` and its variants on the CPU.

- Functions with ``torch.nn.functional``'s names and arguments: `dropout`,
  `dropout1d`, `dropout2d`, `dropout3d`, `alpha_dropout`, `feature_alpha_dropout`
  (plus fastdrop's ``generator=`` and ``recompute=``), and `next_key`.
- Modules that are instances of torch's own (``torch.nn.Dropout``, ...): `Dropout`,
  `Dropout1d`, `Dropout2d`, `Dropout3d`, `AlphaDropout`, `FeatureAlphaDropout`;
  `replace_dropout` swaps a model's torch dropout modules for them in one line.
- Operators ``torch.ops.fastdrop.*`` registered with ``torch.library`` (with fake
  implementations and gradients), which ``torch.compile`` and ``torch.export`` trace.

Masks are fastdrop's (docs/mask-stream.md) for a (seed, stream) drawn from torch's
generator; autograd keeps 1 bit per element (or, with ``recompute=True``, the key
alone). Eager calls run in C++ (``csrc/ops.cpp``), compiled against the installed torch
on first use or by ``fastdrop build-torch-ops``, and otherwise in Python, with the same
results (`fastdrop.torch._build`). Needs PyTorch (``pip install "fastdrop-cpu[torch]"``);
``import fastdrop`` never imports it. docs/torch.md has the details.
"""
try:
    import torch  # noqa: F401
except ImportError as error:  # pragma: no cover - the message is the point
    raise ImportError("fastdrop.torch needs PyTorch: pip install \"fastdrop-cpu[torch]\" "
                      "(or pip install torch)") from error

from .attention import scaled_dot_product_attention
from .functional import (
    alpha_dropout,
    dropout,
    dropout1d,
    dropout2d,
    dropout3d,
    feature_alpha_dropout,
    next_key,
)
from .fused import bias_dropout_add, dropout_add, softmax_dropout
from .mode import dropout_mode
from .modules import (
    AlphaDropout,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    replace_dropout,
)

__all__ = ["AlphaDropout", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
           "FeatureAlphaDropout", "alpha_dropout", "dropout", "dropout1d", "dropout2d",
           "dropout3d", "feature_alpha_dropout", "next_key", "replace_dropout",
           "bias_dropout_add", "dropout_add", "dropout_mode", "scaled_dot_product_attention",
           "softmax_dropout"]
