"""Probing units like a physiologist: receptive fields, top stimuli (and, on the
sibling branches, activations and feature visualisation)."""
from .receptive import (EmpiricalRF, ReceptiveField, empirical_rf, receptive_fields,
                        theoretical_rf)
