"""captum-ltx: LTX (Learning to Explain) and peer attribution methods for vision models, as Captum methods."""

from . import methods
from ._maps import to_map
from ._shipped import available_explainers
from .dix import DIX
from .explainer import Explainer
from .gradcam import GradCAM
from .iia import IIA
from .ltx import LTX, LTXAttribution
from .objective import LTXObjective, masked_input
from .pretrain import PretrainingCfg, pretrain
from .random_map import RandomMap
from .rollout import AttentionRollout, GradientAttentionRollout
from .sobol import Sobol

__version__ = "0.1.0"

__all__ = [
    "LTX",
    "LTXAttribution",
    "Explainer",
    "available_explainers",
    "LTXObjective",
    "masked_input",
    "pretrain",
    "PretrainingCfg",
    "IIA",
    "DIX",
    "GradCAM",
    "AttentionRollout",
    "GradientAttentionRollout",
    "RandomMap",
    "Sobol",
    "methods",
    "to_map",
    "__version__",
]
