"""Probing units like a physiologist: feature visualisation (more to come).

>>> from dnnbrain.probe import visualise
"""
from .featvis import FeatureVis, visualise
from .param import Robustness

__all__ = ["FeatureVis", "visualise", "Robustness"]
