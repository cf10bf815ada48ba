"""Evaluation metrics for saliency maps of image classifiers; each returns one value per image."""

from .localisation import localisation
from .perturbation import (
    PERTURBATION_FRACTIONS,
    adp_pic,
    curve_auc,
    deletion_insertion,
    gaussian_blur,
    mufidelity,
    perturbation_auc,
    perturbation_curves,
)
from .sanity import class_sensitivity, parameter_randomisation, randomized_copy, spearman
from .stability import mege_reco

__all__ = [
    "PERTURBATION_FRACTIONS",
    "adp_pic",
    "class_sensitivity",
    "curve_auc",
    "deletion_insertion",
    "gaussian_blur",
    "localisation",
    "mege_reco",
    "mufidelity",
    "parameter_randomisation",
    "perturbation_auc",
    "perturbation_curves",
    "randomized_copy",
    "spearman",
]
