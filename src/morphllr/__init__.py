"""morphllr: how realistic is the morphology of simulated galaxies?

Likelihood-ratio scoring of image sets with two PixelCNN++ density models
(Zanisi et al. 2021, MNRAS 501, 4359): one trained on real survey cutouts, one on
their smooth Sérsic archetypes.  ``LLR(x) = log p_obs(x) - log p_arch(x)``.

The public names are imported lazily so that ``import morphllr`` stays fast and
does not pull in torch until a model is used.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_LAZY = {
    "load_model": "morphllr.modelio",
    "load_ensemble": "morphllr.modelio",
    "Ensemble": "morphllr.modelio",
    "save_model": "morphllr.modelio",
    "log_likelihood": "morphllr.score",
    "PixelCNN": "morphllr.model",
    "PixelCNNConfig": "morphllr.model",
    "ImageSet": "morphllr.imageset",
    "open_images": "morphllr.sources",
    "compare": "morphllr.compare",
    "MorphllrError": "morphllr.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'morphllr' has no attribute {name!r}")


def __dir__():
    return __all__
