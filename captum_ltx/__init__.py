"""captum-ltx: LTX (Learning to Explain) and peer attribution methods for vision models, as Captum methods."""

from ._maps import to_map
from .explainer import Explainer
from .ltx import LTX, LTXAttribution
from .objective import LTXObjective, masked_input
from .pretrain import pretrain

__version__ = "0.1.0"

__all__ = ["LTX", "LTXAttribution", "Explainer", "LTXObjective", "masked_input", "to_map", "pretrain", "__version__"]
