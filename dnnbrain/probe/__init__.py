"""Probing units like a physiologist: activations, top stimuli, receptive fields, synthesis.

>>> from dnnbrain.probe import activations, theoretical_rf, visualise
"""
from .activations import activations, iter_activations  # noqa: F401
from .actstore import ActivationStore, export_h5, open_activations  # noqa: F401
from .featvis import FeatureVis, visualise  # noqa: F401
from .param import Robustness  # noqa: F401
from .receptive import (EmpiricalRF, ReceptiveField, empirical_rf,  # noqa: F401
                        receptive_fields, theoretical_rf)
