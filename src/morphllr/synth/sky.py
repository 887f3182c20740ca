"""Real sky for the synthetic universe: a sky-patch library and the placing of images in it.

Real sky (``sky_patches``, ``morphllr synth --sky-patches``): instead of the synthetic
Gaussian sky and read noise, every observed, sim-* and archetype image gets the Poisson
noise of its own sources plus one random patch of a real empty-sky library
(:func:`morphllr.galaxies.sky_patches.add_sky_patch`, as ``morphllr archetypes --sky-patches`` does;
:func:`sky_library`), each image from its own seeded stream, an archetype never from its
galaxy's patch.  Without a library the pixels are exactly those the shipped models saw.
"""

from __future__ import annotations

import numpy as np

from morphllr.galaxies.archetypes import add_matched_noise
from morphllr.galaxies.sky_patches import SkyLibrary, add_sky_patch, load_sky_library
from morphllr.synth.population import PIXEL_SCALE, STAMP, ZERO_POINT


_SKY_TAG = 0x736B79  # "sky": keeps the per-image sky streams apart from the per-chunk noise streams


def sky_library(source, where: str = "--sky-patches") -> SkyLibrary | None:
    """Read and check a sky-patch library (for making sets, archetypes and the universe with ``sky_patches``).

    Args:
        source: None (synthetic Gaussian sky), a :class:`~morphllr.galaxies.sky_patches.SkyLibrary`, a file readable by
            :func:`morphllr.galaxies.sky_patches.load_sky_patches` (e.g. the ``.npy`` of ``morphllr
            sky-patches``) or an array (M, 1, S, S) / (M, S, S) of empty sky in r counts at
            0.396"/px, S >= 128 (the flux cutout side).
        where: option name for messages.

    Returns:
        :class:`~morphllr.galaxies.sky_patches.SkyLibrary`, or None for ``source=None``.
    """
    if source is None:
        return None
    fix = (f"cut single-band r-count patches of at least {STAMP}x{STAMP} pixels at {PIXEL_SCALE}\"/px with "
           f"`morphllr sky-patches FRAME --size {STAMP} --out SKY.npy`")
    return load_sky_library(source, where, size=STAMP, channels=1, zero_point=ZERO_POINT, pixel_scale=PIXEL_SCALE,
                            fix=fix)


def place_in_sky(scene: np.ndarray, gain: np.ndarray, sky: SkyLibrary, key: list[int], first: int,
                  avoid: np.ndarray | None = None):
    """Noiseless scenes + their own Poisson noise + one random real sky patch each.

    Image ``first + b`` draws everything from its own stream ``(key, sky tag, index + 1)``,
    so the result depends neither on chunking nor on worker count.  The sky is
    :func:`morphllr.galaxies.sky_patches.add_sky_patch` (random patch, quarter turn, flip, crop): the
    library's own pixels, never resampled.

    Args:
        scene: (B, H, W) noiseless counts (galaxy + neighbours).
        gain: (B,) electrons per count.
        sky: the library.
        key: seed integers of the set.
        first: absolute index of ``scene[0]`` in the set.
        avoid: (B,) patch index each image must not use (its galaxy's, for archetypes), or None.

    Returns:
        (float64 (B, H, W) images, int64 (B,) patch indices, float64 (B,) rms of the sky added).
    """
    n_patches = len(sky.patches)
    out = np.empty(scene.shape, np.float64)
    index = np.empty(len(scene), np.int64)
    rms = np.empty(len(scene), np.float64)
    blank = np.zeros((1,) + scene.shape[1:])
    for b in range(len(scene)):
        rng = np.random.default_rng(np.random.SeedSequence([*key, _SKY_TAG, first + b + 1]))
        if avoid is not None and n_patches > 1:  # a different patch than the galaxy's: fresh sky
            k = int(rng.integers(n_patches - 1))
            k += k >= int(avoid[b])
        else:
            k = int(rng.integers(n_patches))
        noisy = add_matched_noise(scene[b], 0.0, float(gain[b]), rng)  # shot noise of the sources' own light
        patch = add_sky_patch(blank, sky.patches[k:k + 1], rng)[0]
        out[b] = noisy + patch
        index[b], rms[b] = k, patch.std()
    return out, index, rms
