"""fastdrop.nn: a small autodiff engine and MLP toolkit around fastdrop's dropout.

- `engine` -- the `Tensor` and its ops (each backward beside its forward),
  `no_grad`;
- `functional` -- graph ops built on it: `dropout`, `alpha_dropout`,
  `gaussian_dropout`, `dropconnect_linear`, `log_softmax`, `cross_entropy`;
- `gradient_check` -- `gradcheck`, the finite-difference check every op passes;
- `modules` -- `Module`, `Linear`, `ReLU`, `Tanh`, `Sequential`;
- `dropout_layers` -- `Dropout` and its variants (`ChannelDropout`,
  `Dropout1d`/`2d`/`3d`, `VariationalDropout`, `AlphaDropout`,
  `FeatureAlphaDropout`), `GaussianDropout`, `DropConnectLinear`;
- `mlp` -- `MLP` and the `suggest_dropout` rule;
- `mc` -- Monte Carlo keying: masks keyed by (sample, row) and fixed BLAS row
  places, so `predict_mc` gives each row the same bits however it cuts the work;
- `optim` -- `SGD` and `Adam`, both with the max-norm constraint;
- `training` -- `fit`, `evaluate`, `predict`, `accuracy`, Monte Carlo dropout
  (`predict_mc`) and the `check_descent` debugging aid;
- `uncertainty` -- the NumPy-only statistics of Monte Carlo samples
  (`MCPrediction`, `RunningSummary`, `summarize`, `entropy`, `softmax`);
- `acquisition` -- active-learning scores from them: `predictive_entropy`,
  `bald`, `variation_ratio`, and `select`.

Importing it needs NumPy only (docs/nn.md).
"""
from . import acquisition, uncertainty  # noqa: F401 (the modules, as fastdrop.nn.acquisition)
from .dropout_layers import (
    AlphaDropout,
    ChannelDropout,
    DropConnectLinear,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    GaussianDropout,
    VariationalDropout,
)
from .engine import Tensor, as_tensor, is_grad_enabled, no_grad
from .functional import (
    alpha_dropout,
    cross_entropy,
    dropconnect_linear,
    dropout,
    gaussian_dropout,
    log_softmax,
)
from .gradient_check import GradcheckError, gradcheck
from .mlp import MLP, suggest_dropout
from .modules import Linear, Module, ReLU, Sequential, Tanh
from .optim import SGD, Adam, Optimizer, apply_max_norm
from .training import DescentReport, accuracy, check_descent, evaluate, fit, predict, predict_mc
from .uncertainty import MCPrediction

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "AlphaDropout",
    "ChannelDropout",
    "DescentReport",
    "DropConnectLinear",
    "Dropout",
    "Dropout1d",
    "Dropout2d",
    "Dropout3d",
    "FeatureAlphaDropout",
    "GaussianDropout",
    "GradcheckError",
    "Linear",
    "MCPrediction",
    "Module",
    "Optimizer",
    "ReLU",
    "Sequential",
    "Tanh",
    "Tensor",
    "VariationalDropout",
    "accuracy",
    "alpha_dropout",
    "apply_max_norm",
    "as_tensor",
    "check_descent",
    "cross_entropy",
    "dropconnect_linear",
    "dropout",
    "evaluate",
    "fit",
    "gaussian_dropout",
    "gradcheck",
    "is_grad_enabled",
    "log_softmax",
    "no_grad",
    "predict",
    "predict_mc",
    "suggest_dropout",
]
