"""fastdrop.nn: a small autodiff engine and MLP toolkit around fastdrop's dropout.

- `engine` -- the `Tensor`, its ops (each backward beside its forward),
  `dropout` as a graph op, `no_grad` and the finite-difference `gradcheck`;
- `nn` -- modules: `Linear`, `ReLU`, `Tanh`, `Dropout`, `Sequential`, `MLP`,
  and the `suggest_dropout` rule;
- `optim` -- `SGD` and `Adam`, both with the max-norm constraint;
- `training` -- `fit`, `evaluate`, `predict`, `accuracy`, Monte Carlo dropout
  (`predict_mc`) and the `check_descent` debugging aid.

Importing it needs NumPy only (docs/nn.md).
"""
from .engine import (GradcheckError, Tensor, as_tensor, cross_entropy, dropout, gradcheck,
                     is_grad_enabled, log_softmax, no_grad)
from .nn import MLP, Dropout, Linear, Module, ReLU, Sequential, Tanh, suggest_dropout
from .optim import SGD, Adam, Optimizer, apply_max_norm
from .training import (DescentReport, MCPrediction, accuracy, check_descent, evaluate, fit,
                       predict, predict_mc)

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "DescentReport",
    "MCPrediction",
    "Dropout",
    "GradcheckError",
    "Linear",
    "Module",
    "Optimizer",
    "ReLU",
    "Sequential",
    "Tanh",
    "Tensor",
    "accuracy",
    "apply_max_norm",
    "as_tensor",
    "check_descent",
    "cross_entropy",
    "dropout",
    "evaluate",
    "fit",
    "gradcheck",
    "is_grad_enabled",
    "log_softmax",
    "no_grad",
    "predict",
    "predict_mc",
    "suggest_dropout",
]
