"""Evaluation metrics for saliency maps of image classifiers."""

from .perturbation import PERTURBATION_FRACTIONS, perturbation_auc

__all__ = ["PERTURBATION_FRACTIONS", "perturbation_auc"]
