"""Probing units like a physiologist: activations, top stimuli, receptive fields, synthesis."""
from .activations import activations, iter_activations  # noqa: F401
from .actstore import ActivationStore, export_h5, open_activations  # noqa: F401
from .receptive import (EmpiricalRF, ReceptiveField, empirical_rf,  # noqa: F401
                        receptive_fields, theoretical_rf)
