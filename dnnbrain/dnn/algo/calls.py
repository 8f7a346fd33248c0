"""Which call of a module a target means, when the module runs more than once.

A module can run several times in one forward pass (torchvision's ResNet blocks call
their ``relu`` twice; a user's model may apply one layer at several places). The target
of a saliency method is then one of those calls:

* ``'last'``: the last call, as captum explains it (its hooks keep the last output); for a
  module that runs once it is the first, so nothing changes there;
* ``'first'``: the first call (what dnnbrain did before the choice existed);
* an int ``k``: the ``k``-th call, counted from 1 like units; ``-1`` is the last, ``-2``
  the one before it;
* None (the default): the last call, with a ``UserWarning`` (once per method object and
  layer) when the layer does run more than once.

The number of calls is counted once per layer and input shape by a no-grad forward pass of
one row (:func:`count_calls`), so the passes themselves still stop at the explained call.
"""
from __future__ import annotations

import contextlib
import numbers
import os
import sys
import warnings
from typing import Callable, Optional, Union

import torch
from torch import nn

#: The call forms ``set_layer(..., call=...)`` takes besides an int.
CALL_NAMES = ("first", "last")
Call = Union[str, int, None]


def check_call(call: Call, name: str = "call") -> Call:
    """``call`` checked: None, ``'first'``, ``'last'`` or a nonzero int.

    Raises
    ------
    TypeError, ValueError
        Naming ``name``, the bad value and the valid forms.
    """
    if call is None or call in CALL_NAMES:
        return call
    if isinstance(call, bool) or not isinstance(call, numbers.Integral):
        if isinstance(call, str):
            raise ValueError(f"`{name}` must be one of {list(CALL_NAMES)} or a nonzero int "
                             f"(from 1; -1 is the last call), got {call!r}")
        raise TypeError(f"`{name}` must be 'first', 'last' or a nonzero int (from 1; -1 is "
                        f"the last call), got {type(call).__name__} {call!r}")
    if call == 0:
        raise ValueError(f"`{name}` must be a nonzero int (calls count from 1; -1 is the "
                         "last call), got 0")
    return int(call)


def needs_count(call: Call) -> bool:
    """Whether the call to stop at depends on how many calls there are."""
    return call is None or call == "last" or (isinstance(call, int) and call < 0)


def call_index(call: Call, n: Optional[int], layer: str) -> int:
    """The explained call of ``layer``, counted from 1, when it runs ``n`` times per forward
    pass (``n`` may be None where ``call`` does not depend on it).

    Raises
    ------
    ValueError
        If the call does not exist (the layer runs fewer times).
    """
    if call == "first":
        return 1
    if call is None or call == "last":
        return max(n or 1, 1)
    if call > 0:
        if n is not None and call > n:
            raise ValueError(f"`call` {call} of layer {layer!r}: the layer runs {n} "
                             f"time{'s' if n != 1 else ''} in one forward pass")
        return call
    if n is None or -call > n:
        raise ValueError(f"`call` {call} of layer {layer!r}: the layer runs {n or 0} "
                         f"time{'s' if n != 1 else ''} in one forward pass")
    return n + 1 + call


def count_calls(module: nn.Module, forward: Callable[[], object]) -> int:
    """How many times ``module`` runs during ``forward()`` (run without gradients).

    An error of the forward pass after ``module`` ran is not raised: the calls before it
    are counted (a model may fail past the layers the engine needs). A hook counts the
    calls and is removed before this returns.
    """
    n = [0]

    def hook(mod, inputs, output):
        n[0] += 1

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            forward()
    except Exception:  # noqa: BLE001 - counted up to the failure (see above)
        if n[0] == 0:
            raise
    finally:
        handle.remove()
    return n[0]


def _outside_stacklevel() -> int:
    """``stacklevel`` of the first caller outside dnnbrain (and contextlib), for warnings."""
    inside = (os.path.dirname(os.path.dirname(os.path.dirname(__file__))),
              os.path.dirname(contextlib.__file__) + os.sep + "contextlib")
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(inside):
        frame, level = frame.f_back, level + 1
    return level


class CallCounts:
    """A method's call counts, one per layer and input shape, and the layers it warned
    about (one warning per layer and method object)."""

    def __init__(self) -> None:
        self._counts: dict = {}
        self._warned: set = set()

    def stop_at(self, call: Call, layer: str, module: nn.Module, key: tuple,
                forward: Callable[[], object], who: str) -> int:
        """The explained call of ``layer`` (``module``), from 1.

        ``forward()`` runs one row through the network when the count is needed and not
        yet known for ``key`` (the input shape ...). With ``call`` None and a layer that
        runs more than once, warns once (``who``: the method's name).
        """
        if not needs_count(call):
            return call_index(call, None, layer)
        n = self._counts.get(key)
        if n is None:
            n = self._counts[key] = count_calls(module, forward)
        if n > 1 and call is None and layer not in self._warned:
            self._warned.add(layer)
            warnings.warn(f"target layer {layer!r} runs {n} times in one forward pass; {who} "
                          "explains its last call (as captum does): pass call='first', "
                          "'last' or an index (from 1, -1 the last) to set_layer to choose",
                          stacklevel=_outside_stacklevel())
        return call_index(call, n, layer)
