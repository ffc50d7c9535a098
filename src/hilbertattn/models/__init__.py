"""Vision models on curve-ordered tokens, registered with timm.

``import hilbertattn.models`` registers every named config, after which
``timm.create_model(name, **overrides)`` builds it (``pretrained=False``; overrides such as
``img_size``, ``num_classes``, ``layout`` and ``backend`` are constructor arguments):

- ``swin.py``: ``swin_*`` (exact shifted 2-D windows) and ``hwt_*`` (Hilbert windows);
- ``nat.py``: ``nat_*`` (exact 2-D neighbourhoods) and ``hnt_*`` (clamped 1-D neighbourhoods
  along the curve).

Sizes: ``tiny`` (and ``mini`` for NAT) as published for 224 x 224 ImageNet; ``cifar`` for 32 x 32
images and 10 classes; ``64`` for 64 x 64 images and 200 classes.
"""

from . import nat, swin
from .common import CurveTransformer, PatchMerging
from .nat import NeighborhoodTransformer
from .swin import SwinTransformer

CONFIGS = {**swin.CONFIGS, **nat.CONFIGS}
MODEL_NAMES = tuple(CONFIGS)

__all__ = ["CurveTransformer", "PatchMerging", "SwinTransformer", "NeighborhoodTransformer",
           "CONFIGS", "MODEL_NAMES"]
