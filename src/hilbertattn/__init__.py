"""hilbertattn: fast 2-D and 3-D local attention on Hilbert-curve token layouts."""

from . import nn
from .bias import RelativeBias
from .functional import (attention, neighborhood_attention, slide_attention, window_attention,
                         window_attention_2d)
from .layout import Layout
from .patterns import MaskCodes, Neighborhood, Pattern, Slide, Window, Window2D
from .plan import BlockPlan, block_plan

__all__ = ["Layout", "MaskCodes", "Pattern", "Window", "Slide", "Neighborhood", "Window2D",
           "BlockPlan", "block_plan", "RelativeBias", "attention", "window_attention",
           "slide_attention", "neighborhood_attention", "window_attention_2d"]
