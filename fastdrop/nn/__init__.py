"""fastdrop.nn: a small autodiff engine and MLP toolkit around fastdrop's dropout.

- `engine` -- the `Tensor`, its ops (each backward beside its forward),
  `dropout`, `alpha_dropout`, `gaussian_dropout` and `dropconnect_linear` as
  graph ops, `no_grad` and the finite-difference `gradcheck`;
- `nn` -- modules: `Linear`, `ReLU`, `Tanh`, `Dropout`, `Sequential`, `MLP`,
  the dropout variants (`ChannelDropout`, `Dropout1d`/`2d`/`3d`,
  `VariationalDropout`, `AlphaDropout`, `FeatureAlphaDropout`,
  `GaussianDropout`, `DropConnectLinear`) and the `suggest_dropout` rule;
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
from .engine import (
    GradcheckError,
    Tensor,
    alpha_dropout,
    as_tensor,
    cross_entropy,
    dropconnect_linear,
    dropout,
    gaussian_dropout,
    gradcheck,
    is_grad_enabled,
    log_softmax,
    no_grad,
)
from .nn import (
    MLP,
    AlphaDropout,
    ChannelDropout,
    DropConnectLinear,
    Dropout,
    Dropout1d,
    Dropout2d,
    Dropout3d,
    FeatureAlphaDropout,
    GaussianDropout,
    Linear,
    Module,
    ReLU,
    Sequential,
    Tanh,
    VariationalDropout,
    suggest_dropout,
)
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
