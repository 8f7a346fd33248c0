"""Parameter checks shared by the methods: errors name the parameter, value and range."""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple, Union

import numpy as np


def no_to_layer(to_layer: Optional[str], method: str) -> None:
    """Raise for a ``to_layer``: maps of ``method`` are not a gradient at a layer's input."""
    if to_layer is not None:
        raise ValueError(f"`to_layer` must be None for {method} (its map is not a gradient at"
                         f" a layer's input), got {to_layer!r}")


def check_number(name: str, value: Any, low: float, high: Optional[float] = None,
                 open_low: bool = True, integer: bool = False) -> Union[int, float]:
    """``value`` as a finite int or float in the range, else ValueError naming ``name``,
    the value and the range (``open_low``: ``low`` itself is excluded)."""
    kinds = (int, np.integer) if integer else (int, float, np.integer, np.floating)
    if (not isinstance(value, kinds) or isinstance(value, (bool, np.bool_))
            or not (value > low if open_low else value >= low)
            or (high is not None and value > high)
            or (isinstance(value, (float, np.floating)) and not math.isfinite(value))):
        span = f"{'(' if open_low else '['}{low}, {'inf)' if high is None else f'{high}]'}"
        raise ValueError(f"`{name}` must be {'an int' if integer else 'a number'} in {span}, "
                         f"got {value!r}")
    return int(value) if integer else float(value)


def check_noise(n_samples: Any, sigma_multiplier: Any,
                n_name: str = "n_iter") -> Tuple[int, float]:
    """SmoothGrad's sample count and noise level, checked: ``n_name`` (what the caller
    calls the count: ``n_samples`` for :class:`SmoothGrad`, ``n_iter`` for
    ``backprop_smooth``) a positive int, ``sigma_multiplier`` a finite number >= 0."""
    if not isinstance(n_samples, (int, np.integer)) or isinstance(n_samples, (bool, np.bool_)) \
            or n_samples < 1:
        raise ValueError(f"`{n_name}` must be a positive int, got {n_samples!r}")
    sigma = check_number("sigma_multiplier", sigma_multiplier, 0, open_low=False)
    return int(n_samples), sigma
