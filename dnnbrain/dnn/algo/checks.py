"""Parameter checks shared by the methods: errors name the parameter, value and range."""
from __future__ import annotations

import contextlib
import math
import re
from typing import Any, Iterator, Optional, Sequence, Tuple, Union

import numpy as np
import torch

#: A method label (it names files and folders): a letter or digit, then letters, digits,
#: ``_ . + -``.
METHOD_LABEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
#: SmoothGrad's ways of combining the noisy maps (mean, squared, VarGrad).
SMOOTH_MODES = ("mean", "squared", "vargrad")
#: SmoothGrad's one default noise level, everywhere (``SmoothGrad``, ``backprop_smooth``,
#: the ``smoothgrad`` method of the CLI and YAML runs): noise std as a fraction of each
#: preprocessed image's ``max - min``. 0.1 is DNNBrain's ``backprop_smooth`` default (the
#: contract); PAIR's ``stdev_spread`` default is 0.15 -- pass ``sigma_multiplier=0.15``.
SIGMA_MULTIPLIER = 0.1
#: The docstring lines on the network and target that open the Parameters section of
#: several methods (CAMs, attention maps); each module appends its own parameters.
TARGET_PARAMS = """
    Parameters
    ----------
    dnn : DNN
        The network.
    from_layer, from_chn : optional
        Target ``(layer, unit)``, as :meth:`SaliencyImage.set_layer`; units count from 1."""


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


#: torch's messages for an input the network cannot take (channels, size, flattening).
_SHAPE_ERRORS = re.compile(
    r"expected input\[.*\] to have \d+ channels|Output size is too small|Kernel size can't "
    r"be greater than actual input size|mat1 and mat2 shapes cannot be multiplied|shape "
    r"'\[.*\]' is invalid for input of size|Expected \d+D \(unbatched\) or \d+D \(batched\) "
    r"input|Padding size should be less than the corresponding input dimension|Input and "
    r"output sizes should be greater than 0|The size of tensor a \(\d+\) must match the size "
    r"of tensor b \(\d+\) at non-singleton dimension")


_CHANNEL_ERROR = re.compile(r"expected input\[.*?\] to have (\d+) channels, but got (\d+) "
                            r"channels")


def input_shape_error(err: RuntimeError, shape: Sequence[int], network: str,
                      expected: Optional[Sequence[int]]) -> Optional[ValueError]:
    """A one-line ValueError naming `image` for torch's complaint ``err`` about an input
    of ``shape`` ``(B, C, H, W)``, or None when ``err`` is not such a complaint (then it
    is a genuine error and must propagate as it is). ``expected``: the ``(C, H, W)`` the
    network's ``test_transform`` gives (None: it keeps the image size)."""
    text = " ".join(str(err).split())
    if not _SHAPE_ERRORS.search(text):
        return None
    chan = _CHANNEL_ERROR.search(text)
    one = tuple(int(v) for v in shape[1:])
    if chan:
        want, got = int(chan.group(1)), int(chan.group(2))
        gives = None if expected is None else int(expected[0])
        if gives == want:  # the transform is right: the (preprocessed) input is not
            fix = (f"its test_transform gives {tuple(expected)}; pass {want}-channel input "
                   "(or let the test_transform prepare it: preprocessed=False)")
        elif want in (1, 3):
            fix = (f"give the DNN test_transform=ImageTransform(size, mean, std, "
                   f"channels={want}) (DNN(model) without a test_transform does so itself)")
        else:
            fix = (f"dnnbrain's transforms give 1 or 3 channels: pass {want}-channel network"
                   " input with preprocessed=True")
        return ValueError(f"`image` of shape {one} gives the network {network} {got}-channel "
                          f"input but its first layer expects {want} channel"
                          f"{'s' if want != 1 else ''} (in_channels={want}): {fix}")
    want = (f"its test_transform gives {tuple(expected)}" if expected is not None
            else "its test_transform gives (3, H, W)")
    hint = ("; the network does not take its own test_transform's output: give the DNN a "
            "matching test_transform, or pass preprocessed=True input it takes"
            if expected is not None and one == tuple(expected) else "")
    return ValueError(f"`image` of shape {one} does not fit the network {network} ({want})"
                      f": {text}{hint}")


@contextlib.contextmanager
def input_errors(dnn: Any, x: torch.Tensor, name: str = "image") -> Iterator[None]:
    """Inside the block, torch's complaints about an input ``x`` (``(B, C, H, W)``) the
    network ``dnn`` cannot take become the one-line ValueError of
    :func:`input_shape_error`, naming the parameter ``name`` (the original as its
    ``__cause__``); every other error propagates as it is."""
    try:
        yield
    except RuntimeError as err:
        tf = dnn.test_transform
        bad = input_shape_error(err, x.shape, dnn.name, None if tf.size is None else
                                (getattr(tf, "channels", 3),) + tuple(tf.size))
        if bad is None:
            raise
        if name != "image":
            bad = ValueError(str(bad).replace("`image`", f"`{name}`", 1))
        raise bad from err
