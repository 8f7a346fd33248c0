"""Probing units like a physiologist: activations, top stimuli, receptive fields, synthesis."""
from .activations import activations, iter_activations  # noqa: F401
