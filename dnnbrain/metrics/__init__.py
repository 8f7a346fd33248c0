"""How good is a saliency map? Localisation, faithfulness and sanity metrics.

Example::

    from dnnbrain.metrics import proportional_energy, road, model_randomisation
    proportional_energy(saliency_map, [(12, 8, 40, 36)])     # share of |map| in the box
    road(method, x, maps, order='morf').mean_auc             # lower = more faithful
    [s.spearman_abs for s in model_randomisation(dnn, 'vanilla', x, 'fc2', 3)]

* localisation (ground-truth boxes or masks): :func:`proportional_energy`,
  :func:`average_saliency_focus` (mednet), :func:`pointing_game`,
  :func:`relevance_rank_accuracy`, with :func:`boxes_to_mask`;
* faithfulness (model-based): :func:`road` (ROAD, MoRF/LeRF with noisy linear
  imputation), :func:`deletion_insertion` (RISE);
* sanity (Adebayo et al., 2018): :func:`model_randomisation`, :func:`edge_detector_map`.
"""
from .faithfulness import (DeletionInsertion, PerturbationCurves, deletion_insertion,
                           road)
from .imputation import noisy_linear_impute
from .imputation_batch import linear_impute_batch, noisy_linear_impute_batch
from .localisation import (average_saliency_focus, boxes_to_mask, pointing_game,
                           proportional_energy, relevance_rank_accuracy,
                           saliency_magnitude)
from .sanity import (RandomisationStep, edge_detector_map, map_ssim, model_randomisation,
                     spearman)
from .scoring import make_scorer

__all__ = ["saliency_magnitude", "boxes_to_mask", "proportional_energy",
           "average_saliency_focus", "pointing_game", "relevance_rank_accuracy",
           "noisy_linear_impute", "noisy_linear_impute_batch", "linear_impute_batch",
           "make_scorer", "PerturbationCurves", "DeletionInsertion",
           "road", "deletion_insertion", "RandomisationStep", "model_randomisation",
           "edge_detector_map", "spearman", "map_ssim"]
