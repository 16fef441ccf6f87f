"""The types of the public API's parameters, for annotations (numpy.typing's style).

Checked by mypy (pyproject.toml's ``[tool.mypy]``); at run time they are plain aliases
that nothing enforces -- the checks of `fastdrop._checks` and `fastdrop._validate` do.
"""
from typing import TYPE_CHECKING, Any, Literal, Sequence, Union

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

if TYPE_CHECKING:
    from .streams import StreamSource

__all__ = ["ArrayLike", "Axes", "Backend", "Bool", "DtypeRequest", "Int", "NDArray",
           "Probability", "Seed", "Shape"]

Backend = Literal["auto", "cython", "numba", "numpy"]
Bool = Union[bool, np.bool_]  # numpy.bool_ too; 1 or "no" is a TypeError
Int = Union[int, np.integer[Any]]
Probability = Union[float, np.floating[Any], Int]
Seed = Union[Int, "StreamSource", None]
Shape = Sequence[Int]
Axes = Union[Int, Sequence[Int]]
DtypeRequest = Union[None, Literal["bfloat16"], DTypeLike]  # "bfloat16" or ml_dtypes.bfloat16
