"""Rendering the synthetic galaxies as SDSS-like cutouts (:func:`render_galaxies`).

Rendering is vectorised with numpy: profiles are evaluated on a 2x oversampled grid
(the central pixels 5x5 supersampled so that n = 4 cusps are integrated, not sampled),
structure is applied in the disk plane, clumps and stars are deposited as points and
blurred in Fourier space, everything is convolved with the per-galaxy PSF by FFT and
binned 2x2 to 0.396" pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from morphllr.galaxies.sersic import sersic_b
from morphllr.galaxies.sky_patches import SkyLibrary
from morphllr.synth.population import MAX_CLUMPS, PIXEL_SCALE, STAMP
from morphllr.synth.sky import place_in_sky


_OVERSAMPLE = 2


CHUNK = 32  # galaxies rendered at once; fixed so results do not depend on memory


@dataclass
class Rendered:
    """Images of a batch of galaxies at 0.396"/px, in counts (sky-subtracted).

    Attributes:
        flux: float32 (N, 128, 128) observed cutouts (PSF, sky and shot noise).
        noiseless: float32 (N, 128, 128) the central galaxy alone, PSF-convolved, no noise.
        segmap: int32 (N, 128, 128) 0 sky, 1 central galaxy, 2 companion, 3 star (pixels
            whose noiseless flux exceeds the sky noise, labelled by the brightest source).
        sky_sigma: float64 (N,) sky noise per pixel in counts.
        neighbours: float32 (N, 128, 128) the noiseless companion + star layer.
        neighbour_label: int8 (N, 128, 128) which neighbour dominates a pixel (2 companion, 3 star).
        sky_patch: int64 (N,) index of the real sky patch of each image, or None (synthetic sky).
    """

    flux: np.ndarray
    noiseless: np.ndarray
    segmap: np.ndarray
    sky_sigma: np.ndarray
    neighbours: np.ndarray
    neighbour_label: np.ndarray
    sky_patch: np.ndarray | None = None


def add_noise(total: np.ndarray, sky: np.ndarray, gain: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Sky-subtracted counts with SDSS-like noise: sky + source shot noise and 1 DN^2 dark/read variance.

    Args:
        total: (B, H, W) noiseless scene in counts (sky already subtracted).
        sky, gain: (B, 1, 1) sky level (counts per pixel) and gain (electrons per count).
        rng: the chunk's random stream.

    Returns:
        float64 (B, H, W) noisy image.
    """
    var = (sky + np.maximum(total, 0)) / gain + 1.0
    return total + rng.standard_normal(total.shape) * np.sqrt(var)


def label_sources(layers: np.ndarray, labels: tuple[int, ...], sky_sigma: np.ndarray) -> np.ndarray:
    """Segmap: each pixel labelled by its brightest noiseless layer where that exceeds the sky noise.

    Args:
        layers: (L, B, H, W) noiseless images of the sources.
        labels: the segmap value of each layer.
        sky_sigma: (B,) per-pixel sky noise.

    Returns:
        int32 (B, H, W) segmap, 0 = sky.
    """
    label = np.asarray(labels, np.int32)[np.argmax(layers, axis=0)]
    return np.where(layers.max(axis=0) > sky_sigma[:, None, None], label, 0)


def _col(params: dict[str, np.ndarray], key: str, sl: slice, extra_dims: int = 2) -> np.ndarray:
    """One parameter for a chunk, shaped (B, 1, 1[, 1]) to broadcast against images."""
    # float32 halves the cost of the per-pixel transcendental functions; plenty for counts.
    return np.asarray(params[key][sl], dtype=np.float32).reshape((-1,) + (1,) * extra_dims)


def _sersic_norm(flux, re, n, q):
    """Surface brightness at Re of a Sérsic profile with the given total flux."""
    from scipy.special import gamma

    b = sersic_b(n)
    return flux * b ** (2 * n) / (2 * np.pi * q * re**2 * n * np.exp(b) * gamma(2 * n))


def softened_structure(r, softening):
    """Fraction of the small-scale structure a softened simulation keeps at radius ``r``.

    Structure (arms, bars, clumps, dust lanes) cannot form below the softening length:
    none inside ``eps / 4``, all beyond ``5 eps / 4``, a smooth step in between.

    Args:
        r: radius (same unit as ``softening``).
        softening: core radius eps (> 0), broadcastable against ``r``.

    Returns:
        values in [0, 1].
    """
    t = np.clip((np.asarray(r) / softening - 0.25), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _galaxy_light(dx, dy, g: dict[str, np.ndarray], softening: np.ndarray | None = None):
    """Surface brightness (counts / arcsec^2) of bulge + disk (+ arms, bar, dust).

    Args:
        dx, dy: offsets from the galaxy centre in arcsec, broadcastable against the
            (B, 1, 1[, 1]) parameter arrays in ``g``.
        g: per-galaxy parameters of the chunk (see :func:`_chunk_params`).
        softening: per-galaxy core radius in arcsec, or None: the smooth profile is
            flattened inside it and the structure faded out (:func:`softened_structure`).

    Returns:
        float64 array of the broadcast shape.
    """
    c, s = np.cos(g["pa"]), np.sin(g["pa"])
    u = dx * c + dy * s
    v = -dx * s + dy * c
    vd = v / g["q_d"]  # disk-plane coordinate along the minor axis
    r_true = np.sqrt(u**2 + vd**2)  # disk-plane radius: where the structure lives
    r_d2 = u**2 + vd**2
    r_b2 = u**2 + (v / g["q_b"]) ** 2
    keep = 1.0
    if softening is not None:
        # r -> (r^4 + eps^4)^(1/4): a flat core inside eps, the untouched profile a few eps out.
        r_d2 = np.sqrt(r_d2**2 + softening**4)
        r_b2 = np.sqrt(r_b2**2 + softening**4)
        keep = softened_structure(r_true, softening)
    r_d, r_b = np.sqrt(r_d2), np.sqrt(r_b2)

    h = g["re_d"] / 1.6783469900166605  # exponential scale length
    disk = g["disk_flux"] / (2 * np.pi * g["q_d"] * h**2) * np.exp(-r_d / h)
    arms = g["arm_a"] != 0
    if np.any(arms):
        theta = np.arctan2(vd, u)
        lnr = np.log(np.maximum(r_true, 1e-3) / g["re_d"])
        phase = g["arm_m"] * (theta - lnr / np.tan(g["pitch"])) + g["arm_phase"]
        # Squared cosine makes arms narrower than inter-arm gaps; mean-zero modulation keeps the flux.
        wave = ((1 + np.cos(phase)) / 2) ** 2 / 0.375 - 1
        envelope = np.clip((r_true / g["re_d"] - 0.4) / 0.6, 0, 1) * keep
        disk = disk * (1 + g["arm_a"] * envelope * wave)
    bulge = g["bulge_ie"] * np.exp(-g["b_n"] * ((r_b / g["re_b"]) ** (1 / g["n_b"]) - 1))
    light = disk + bulge
    if np.any(g["bar_flux"] > 0):
        cb, sb = np.cos(g["bar_angle"]), np.sin(g["bar_angle"])
        a = np.maximum(g["bar_len"], 1e-3)
        s2 = ((u * cb + vd * sb) / a) ** 2 + ((-u * sb + vd * cb) / (0.3 * a)) ** 2
        # Ferrers n=2 bar; its disk-plane area is 0.3 pi a^2 / 3, projected by q_d.
        light = light + keep * g["bar_flux"] / (0.1 * np.pi * a**2 * g["q_d"]) * np.clip(1 - s2, 0, None) ** 2
    if np.any(g["dust_tau"] > 0):
        width = np.maximum(0.06 * g["re_d"], 0.12)
        lane = np.exp(-0.5 * ((v - g["dust_off"]) / width) ** 2) * np.exp(-0.5 * (u / (1.5 * g["re_d"])) ** 2)
        light = light * np.exp(-g["dust_tau"] * keep * lane)
    return light


def _chunk_params(params: dict[str, np.ndarray], sl: slice, extra_dims: int = 2) -> dict[str, np.ndarray]:
    """Derived per-galaxy quantities of one chunk, broadcastable against images."""
    col = lambda k: _col(params, k, sl, extra_dims)  # noqa: E731
    flux, bt = col("flux"), col("bt")
    n_b, re_b, q_b = col("n_bulge"), col("re_bulge_arcsec"), col("q_bulge")
    disk_total = flux * (1 - bt)
    return {
        "pa": np.radians(col("pa_deg")), "q_d": col("q_disk"), "q_b": q_b, "re_d": col("re_disk_arcsec"),
        "re_b": re_b, "n_b": n_b, "b_n": sersic_b(n_b).astype(np.float32),
        "bulge_ie": _sersic_norm(flux * bt, re_b, n_b, q_b).astype(np.float32),
        "disk_flux": disk_total * (1 - col("bar_frac") - col("clump_frac")),
        "arm_a": col("arm_strength"), "arm_m": col("arm_m"), "pitch": np.radians(np.maximum(col("arm_pitch_deg"), 1.0)),
        "arm_phase": col("arm_phase"), "bar_flux": disk_total * col("bar_frac"),
        "bar_len": col("bar_length_arcsec"), "bar_angle": np.radians(col("bar_angle_deg")),
        "dust_tau": col("dust_tau"), "dust_off": col("dust_offset_arcsec"),
    }


def _fine_axis() -> np.ndarray:
    """Fine-pixel centres in coarse-pixel units (coarse pixel i spans [i - 0.5, i + 0.5])."""
    nf = STAMP * _OVERSAMPLE
    return (np.arange(nf) + 0.5) / _OVERSAMPLE - 0.5


def _moffat_transfer(fwhm: np.ndarray, beta: np.ndarray) -> np.ndarray:
    """rfft2 of unit-flux Moffat PSFs on the fine grid (wrap-around centred at 0)."""
    import scipy.fft

    nf = STAMP * _OVERSAMPLE
    step = PIXEL_SCALE / _OVERSAMPLE
    d = np.fft.fftfreq(nf, 1.0 / nf) * step  # signed offsets in arcsec
    r2 = d[None, :, None] ** 2 + d[None, None, :] ** 2
    fwhm, beta = fwhm[:, None, None], beta[:, None, None]
    alpha = fwhm / (2 * np.sqrt(2 ** (1 / beta) - 1))
    psf = (1 + r2 / alpha**2) ** (-beta)
    psf /= psf.sum(axis=(1, 2), keepdims=True)
    return scipy.fft.rfft2(psf, workers=1)


def _deposit(image: np.ndarray, index: np.ndarray, fx: np.ndarray, fy: np.ndarray, flux: np.ndarray) -> None:
    """Add point sources to (B, H, W) ``image`` with bilinear weights (fine-pixel coords)."""
    nf = image.shape[-1]
    x0, y0 = np.floor(fx).astype(int), np.floor(fy).astype(int)
    wx, wy = fx - x0, fy - y0
    for ox, oy, w in ((0, 0, (1 - wx) * (1 - wy)), (1, 0, wx * (1 - wy)), (0, 1, (1 - wx) * wy), (1, 1, wx * wy)):
        xi, yi = x0 + ox, y0 + oy
        ok = (xi >= 0) & (xi < nf) & (yi >= 0) & (yi < nf)
        np.add.at(image, (index[ok], yi[ok], xi[ok]), (flux * w)[ok])


def _clump_positions(params, sl, rng):
    """Clump centres (fine pixels), fluxes and disk-plane radii (arcsec) for one chunk, placed along the arms."""
    nb = sl.stop - sl.start
    k = np.arange(MAX_CLUMPS)
    idx = np.repeat(np.arange(nb), MAX_CLUMPS)
    present = (k[None, :] < params["n_clumps"][sl][:, None]).ravel()
    get = lambda key: np.repeat(np.asarray(params[key][sl], float), MAX_CLUMPS)  # noqa: E731
    re_d, m = get("re_disk_arcsec"), np.maximum(get("arm_m"), 1)
    radius = re_d * rng.uniform(0.5, 2.0, idx.size)
    on_arm = get("arm_strength") > 0
    arm_theta = (np.log(radius / re_d) / np.tan(np.radians(np.maximum(get("arm_pitch_deg"), 1.0)))
                 + (2 * np.pi * rng.integers(0, 3, idx.size) - get("arm_phase")) / m + rng.normal(0, 0.2, idx.size))
    theta = np.where(on_arm, arm_theta, rng.uniform(0, 2 * np.pi, idx.size))
    u, vd = radius * np.cos(theta), radius * np.sin(theta)
    v = vd * get("q_disk")
    pa = np.radians(get("pa_deg"))
    dx, dy = u * np.cos(pa) - v * np.sin(pa), u * np.sin(pa) + v * np.cos(pa)
    weights = rng.exponential(1.0, (nb, MAX_CLUMPS)) * (k[None, :] < params["n_clumps"][sl][:, None])
    weights /= np.maximum(weights.sum(axis=1, keepdims=True), 1e-12)
    total = np.asarray(params["flux"][sl] * (1 - params["bt"][sl]) * params["clump_frac"][sl], float)
    flux = (weights * total[:, None]).ravel()
    fx = (get("x0") + dx / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
    fy = (get("y0") + dy / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
    return idx[present], fx[present], fy[present], flux[present], radius[present]


def _companion_light(params, sl, fine_x, fine_y):
    """Surface brightness of the companion galaxies of one chunk (zeros where absent)."""
    col = lambda k: _col(params, k, sl)  # noqa: E731
    dx = (fine_x[None, None, :] - col("x0")) * PIXEL_SCALE - col("companion_dx_arcsec")
    dy = (fine_y[None, :, None] - col("y0")) * PIXEL_SCALE - col("companion_dy_arcsec")
    pa, q = np.radians(col("companion_pa_deg")), col("companion_q")
    u = dx * np.cos(pa) + dy * np.sin(pa)
    v = (-dx * np.sin(pa) + dy * np.cos(pa)) / q
    n, re = col("companion_n"), col("companion_re_arcsec")
    r = np.sqrt(u**2 + v**2)
    light = _sersic_norm(col("companion_flux"), re, n, q) * np.exp(-sersic_b(n) * ((r / re) ** (1 / n) - 1))
    return light * col("has_companion")


def render_galaxies(params: dict[str, np.ndarray], seed_key: list[int], noise: bool = True,
                    sky: SkyLibrary | None = None) -> Rendered:
    """Render galaxies drawn by :func:`~morphllr.synth.population.sample_galaxies` as SDSS-like cutouts.

    Args:
        params: the catalogue columns from :func:`~morphllr.synth.population.sample_galaxies`.
        seed_key: integers seeding the noise/clump streams (one stream per chunk, so the
            result is reproducible and independent of the caller's batching).
        noise: add sky and shot noise (False: ``flux`` equals the noiseless scene).
        sky: real sky patches: with ``noise``, every image gets the Poisson noise of its
            sources plus one random patch (:func:`~morphllr.synth.sky.place_in_sky`) instead of the synthetic
            Gaussian sky and read noise; ``sky_sigma`` is then the rms of the patch used.

    Returns:
        :class:`Rendered`.
    """
    import scipy.fft

    n = len(params["flux"])
    nf = STAMP * _OVERSAMPLE
    step = PIXEL_SCALE / _OVERSAMPLE
    fine = _fine_axis().astype(np.float32)
    area = np.float32(step**2)
    # Central block supersampled 5x5 so that cuspy bulges are integrated over pixels.
    sub = (np.arange(5) + 0.5) / 5 - 0.5
    block = np.arange(STAMP * _OVERSAMPLE // 2 - 7, STAMP * _OVERSAMPLE // 2 + 7)
    bx = (fine[block][None, :, None] + sub[None, None, :] / _OVERSAMPLE)  # (1, 14, 5)
    out_flux = np.empty((n, STAMP, STAMP), np.float32)
    out_clean = np.empty_like(out_flux)
    out_seg = np.zeros((n, STAMP, STAMP), np.int32)
    out_neigh = np.zeros((n, STAMP, STAMP), np.float32)
    out_neigh_label = np.zeros((n, STAMP, STAMP), np.int8)
    sky_sigma = np.sqrt(params["sky_level"] / params["gain"] + 1.0)
    sky_patch = np.zeros(n, np.int64) if sky is not None and noise else None
    freq = np.fft.fftfreq(nf)[:, None] ** 2 + np.fft.rfftfreq(nf)[None, :] ** 2  # cycles / fine px
    for start in range(0, n, CHUNK):
        sl = slice(start, min(start + CHUNK, n))
        nb = sl.stop - sl.start
        rng = np.random.default_rng(np.random.SeedSequence([*seed_key, start // CHUNK]))
        g = _chunk_params(params, sl)
        x0, y0 = _col(params, "x0", sl), _col(params, "y0", sl)
        soft = _col(params, "softening_kpc", sl) / _col(params, "kpc_per_arcsec", sl)
        softened = bool(np.any(soft > 0))
        dx = (fine[None, None, :] - x0) * PIXEL_SCALE
        dy = (fine[None, :, None] - y0) * PIXEL_SCALE

        def light_with_centre(soft_r):
            img = _galaxy_light(dx, dy, g, soft_r)
            gb = _chunk_params(params, sl, extra_dims=4)
            sx = (bx[:, None, :, None, :] - x0[..., None, None]) * PIXEL_SCALE  # (B,1,14,1,5)
            sy = (bx[:, :, None, :, None] - y0[..., None, None]) * PIXEL_SCALE  # (B,14,1,5,1)
            sb = None if soft_r is None else soft_r[..., None, None]
            fine_block = _galaxy_light(sx, sy, gb, sb).mean(axis=(-2, -1))
            img[:, block[0]:block[-1] + 1, block[0]:block[-1] + 1] = fine_block
            return img * area

        idx, cfx, cfy, cflux, cradius = _clump_positions(params, sl, rng)
        scene = light_with_centre(soft if softened else None)
        if softened:
            # No clumps inside the core either; all light removed from the core (smooth profile,
            # bar, clumps) reappears just outside it (mass is conserved).
            kept = softened_structure(cradius, soft.reshape(-1)[idx])
            missing = light_with_centre(None).sum(axis=(1, 2)) - scene.sum(axis=(1, 2))
            missing += np.bincount(idx, weights=cflux * (1 - kept), minlength=nb)
            cflux = cflux * kept
            q = _col(params, "bt", sl) * g["q_b"] + (1 - _col(params, "bt", sl)) * g["q_d"]
            u = dx * np.cos(g["pa"]) + dy * np.sin(g["pa"])
            v = (-dx * np.sin(g["pa"]) + dy * np.cos(g["pa"])) / q
            puff = np.exp(-0.5 * (u**2 + v**2) / np.maximum(soft, 1e-6) ** 2)
            scene += missing[:, None, None] * puff / puff.sum(axis=(1, 2), keepdims=True)
        clumps = np.zeros((nb, nf, nf))
        _deposit(clumps, idx, cfx, cfy, cflux)
        sigma_fine = _col(params, "clump_sigma_arcsec", sl) / step
        psf_ft = _moffat_transfer(params["psf_fwhm_arcsec"][sl], params["psf_beta"][sl])
        central_ft = (scipy.fft.rfft2(scene, workers=1)
                      + scipy.fft.rfft2(clumps, workers=1) * np.exp(-2 * np.pi**2 * sigma_fine**2 * freq)) * psf_ft
        central = scipy.fft.irfft2(central_ft, s=(nf, nf), workers=1)

        others = np.zeros((2, nb, nf, nf))
        if np.any(params["has_companion"][sl]):
            others[0] = scipy.fft.irfft2(scipy.fft.rfft2(_companion_light(params, sl, fine, fine) * area, workers=1)
                                         * psf_ft, s=(nf, nf), workers=1)
        stars = np.flatnonzero(params["has_star"][sl])
        if stars.size:
            points = np.zeros((nb, nf, nf))
            sx = (params["x0"][sl][stars] + params["star_dx_arcsec"][sl][stars] / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
            sy = (params["y0"][sl][stars] + params["star_dy_arcsec"][sl][stars] / PIXEL_SCALE + 0.5) * _OVERSAMPLE - 0.5
            _deposit(points, stars, sx, sy, params["star_flux"][sl][stars])
            others[1] = scipy.fft.irfft2(scipy.fft.rfft2(points, workers=1) * psf_ft, s=(nf, nf), workers=1)

        def bin2(x):
            return x.reshape(x.shape[:-2] + (STAMP, _OVERSAMPLE, STAMP, _OVERSAMPLE)).sum(axis=(-3, -1))

        central, others = bin2(central), bin2(others)
        total = central + others.sum(axis=0)
        if sky_patch is not None:
            observed, sky_patch[sl], sky_sigma[sl] = place_in_sky(total, params["gain"][sl], sky, seed_key, start)
        elif noise:
            observed = add_noise(total, _col(params, "sky_level", sl), _col(params, "gain", sl), rng)
        else:
            observed = total
        out_seg[sl] = label_sources(np.stack([central, others[0], others[1]]), (1, 2, 3), sky_sigma[sl])
        out_flux[sl] = observed
        out_clean[sl] = central
        out_neigh[sl] = others.sum(axis=0)
        out_neigh_label[sl] = np.where(others[1] > others[0], 3, 2)
    return Rendered(flux=out_flux, noiseless=out_clean, segmap=out_seg, sky_sigma=sky_sigma,
                    neighbours=out_neigh, neighbour_label=out_neigh_label, sky_patch=sky_patch)
