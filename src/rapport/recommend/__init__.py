"""Recommendations: guess-you-like, repurchase, cross-sell and up-sell.

The model is computed in the warehouse (``build``) and served from memory (``Model``).
"""

from rapport.recommend.build import build
from rapport.recommend.model import KINDS, Model

__all__ = ["KINDS", "Model", "build"]
