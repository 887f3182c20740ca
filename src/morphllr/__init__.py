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
    "load_model": "morphllr.model.io",
    "load_ensemble": "morphllr.model.ensemble",
    "Ensemble": "morphllr.model.ensemble",
    "save_model": "morphllr.model.io",
    "log_likelihood": "morphllr.score",
    "llr": "morphllr.score",
    "LLRResult": "morphllr.score",
    "PixelCNN": "morphllr.model.pixelcnn",
    "PixelCNNConfig": "morphllr.model.pixelcnn",
    "ImageSet": "morphllr.data.imageset",
    "open_images": "morphllr.data.inputs",
    "compare": "morphllr.comparison.run",
    "MorphllrError": "morphllr.errors",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'morphllr' has no attribute {name!r}")


def __dir__():
    return __all__
