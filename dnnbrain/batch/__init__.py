"""YAML-described saliency experiments: ``dnn_saliency_batch RUN.yaml``.

A run config names a model, stimuli, targets (layer + units), methods and outputs;
:func:`load_config` validates it (every problem at once) and resolves it, :func:`run`
computes every map (stimulus batch x target x method), resumably and shardably, and
writes ``.npy`` / ``.png`` / overlay / ``.nii.gz`` files, ``manifest.csv``,
``config.resolved.yaml`` and an offline ``index.html``. See ``docs/batch.rst``.
"""
from .config import load_config
from .factories import factory_names, register_factory, unregister_factory
from .merge import merge
from .runner import RunResult, describe, run

__all__ = ["load_config", "run", "merge", "describe", "RunResult", "register_factory",
           "unregister_factory", "factory_names"]
