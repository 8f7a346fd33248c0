"""``resolved_units``: after a call, the unit each map explains ('predicted' resolved)."""
import numpy as np
import pytest
import torch

from dnnbrain.dnn.algo import make_method
from dnnbrain.dnn.base import to_input

from .conftest import hook_dicts_empty


@pytest.fixture(scope="module")
def four(demo_stim, shapenet):
    x, _ = to_input(demo_stim.paths[:4], shapenet.test_transform, False)
    with torch.no_grad():
        logits = shapenet.model.eval()(x)
    return x, (logits.argmax(1) + 1).tolist()


@pytest.mark.parametrize("name,params", [("vanilla", {}), ("guided", {}),
                                         ("smoothgrad", {"n_samples": 2, "seed": 0}),
                                         ("ig", {"steps": 4}), ("gradcam", {})])
def test_predicted_resolves_to_the_argmax_logit(shapenet, four, name, params):
    x, top = four
    method = make_method(shapenet, name, "fc2", ["predicted", 2], "mean", 3, **params)
    assert method.resolved_units is None
    maps = method.backprop(x, preprocessed=True)  # 4 images x 2 units, chunks of 3 rows
    assert method.resolved_units == [[t, 2] for t in top]
    assert method.get_layer() == ("fc2", ["predicted", 2])  # the request is kept
    fixed = make_method(shapenet, name, "fc2", [1, 2], "mean", 3, **params)
    for i, t in enumerate(top):  # the map of 'predicted' is the map of the argmax unit
        fixed.set_layer("fc2", [t, 2])
        np.testing.assert_allclose(maps[i], fixed.backprop(x[i:i + 1], preprocessed=True)[0],
                                   rtol=1e-5, atol=1e-6)
    assert hook_dicts_empty(shapenet.model)


def test_fixed_units_are_reported_as_given(shapenet, four):
    x, _ = four
    method = make_method(shapenet, "vanilla", "conv4", 3, "max", None)
    method.backprop(x[:2], preprocessed=True)
    assert method.resolved_units == [[3], [3]]
