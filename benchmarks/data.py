"""Data-stage benchmarks (issue 4).

    .venv/bin/python benchmarks/data.py                      # all data benchmarks
    .venv/bin/python benchmarks/data.py prepare segmentation # some of them

Targets: segmentation >= 300 images/s on 64x64 cutouts; ``morphllr prepare`` of
40,000 cutouts in <= 5 minutes (>= 133 images/s).  Each benchmark is a function
``bench_<name>() -> dict`` registered in BENCHMARKS; the archetype/fit benchmarks
live in their own functions further down.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


def _galaxies(n: int, size: int, seed: int = 0) -> np.ndarray:
    """n noisy exponential discs with random centre offsets, sizes and one companion each."""
    rng = np.random.default_rng(seed)
    yy, xx = np.indices((size, size))
    out = np.empty((n, size, size), np.float32)
    for i in range(n):
        cx, cy = size / 2 + rng.uniform(-3, 3, 2)
        scale = rng.uniform(2, 6)
        ox, oy = rng.uniform(0, size, 2)
        out[i] = (rng.uniform(200, 2000) * np.exp(-np.hypot(xx - cx, yy - cy) / scale)
                  + 300 * np.exp(-np.hypot(xx - ox, yy - oy) / 1.5) + rng.normal(0, 5, (size, size)))
    return out


# ---------------------------------------------------------------------- prepare + segmentation
def bench_segmentation(n: int = 600, size: int = 64) -> dict:
    """Segmentation speed (sep) on n size x size cutouts; target >= 300 images/s."""
    from morphllr.data.segmentation import segment_batch

    images = _galaxies(n, size)
    segment_batch(images[:10])  # imports and first-call set-up are not what we measure
    start = time.perf_counter()
    _, _, found = segment_batch(images)
    seconds = time.perf_counter() - start
    return {"images": n, "size": size, "seconds": round(seconds, 3), "images_per_s": round(n / seconds, 1),
            "central_found_fraction": float(found.mean()), "target_images_per_s": 300}


def bench_prepare(n: int = 800, size: int = 140, workers: int = 1) -> dict:
    """``prepare`` (zanisi21) of n single FITS cutouts of size x size from disk.

    Reports images/s and the implied time for 40,000 cutouts (target <= 300 s).
    """
    from astropy.io import fits

    from morphllr.data import files as readers
    from morphllr.data.prepare import prepare_imageset
    from morphllr.data.preprocess import Preprocessing

    images = _galaxies(n, size, seed=1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "fits"
        folder.mkdir()
        for i, image in enumerate(images):
            fits.PrimaryHDU(image).writeto(folder / f"g{i:05d}.fits")
        start, cpu_start = time.perf_counter(), time.process_time()
        files = readers.expand_inputs([folder])
        total = readers.count_images(files)
        report = prepare_imageset(readers.iter_images(files), Path(tmp) / "set.h5", Preprocessing.preset("zanisi21"),
                                  n=total, workers=workers)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        size_mb = (Path(tmp) / "set.h5").stat().st_size / 1e6
    rate = n / seconds
    return {"images": report["n_images"], "workers": workers, "seconds": round(seconds, 2),
            "images_per_s": round(rate, 1), "cpu_seconds_main_process": round(cpu, 2), "seconds_for_40000": round(40000 / rate), "target_seconds_for_40000": 300,
            "file_mb_per_1000_images": round(size_mb / n * 1000, 1), "load_average": os.getloadavg()[0]}


BENCHMARKS = {"segmentation": bench_segmentation, "prepare": bench_prepare}


# ---------------------------------------------------------------------- fit-sersic + archetypes
GAL_SCALE = 0.396  # arcsec/px (SDSS)


def _sdss_like_sersics(n: int, rng: np.random.Generator) -> dict:
    """Sérsic parameters roughly like the SDSS main sample at 0.396"/px (n from 0.5 to 6, r ~ 16.5-19)."""
    return {"n": np.clip(np.exp(rng.normal(np.log(1.8), 0.55, n)), 0.5, 6.0), "re": rng.uniform(2.0, 10.0, n),
            "q": rng.uniform(0.3, 1.0, n), "pa": rng.uniform(0, 180, n), "flux": rng.uniform(5e3, 5e4, n)}


def bench_fit_sersic(n: int = 64, workers: int = 2, seed: int = 0) -> dict:
    """Fits/s of the Sérsic fitter on 64x64 GalSim mocks (Moffat 1.4", SDSS noise) and its accuracy.

    Targets: >= 15 fits/s on 2 cores; median |dn| <= 0.2 and median |dRe/Re| <= 5 %.
    """
    import galsim

    from morphllr.galaxies.psf import make_psf
    from morphllr.galaxies.sersic_fit import fit_sersic_many, psf_kernel_for

    rng = np.random.default_rng(seed)
    p = _sdss_like_sersics(n, rng)
    psf = make_psf(1.4)
    images = []
    for i in range(n):
        gal = galsim.Sersic(p["n"][i], half_light_radius=p["re"][i] * np.sqrt(p["q"][i]) * GAL_SCALE, flux=p["flux"][i])
        gal = gal.shear(q=p["q"][i], beta=p["pa"][i] * galsim.degrees)
        img = galsim.Convolve(gal, psf).drawImage(nx=64, ny=64, scale=GAL_SCALE).array.astype(np.float64)
        images.append(img + rng.normal(0, 5.7, img.shape) + rng.poisson(img.clip(0) * 4.8) / 4.8 - img.clip(0))
    kernel = psf_kernel_for(psf, GAL_SCALE)
    fit_sersic_many(np.stack(images[:2]), kernel, sky_sigma=5.7, gain=4.8, workers=1)  # imports, set-up
    # CPU seconds per fit of one process: what a free core delivers, whatever the machine's load
    cpu = time.process_time()
    fit_sersic_many(np.stack(images[:24]), kernel, sky_sigma=5.7, gain=4.8, workers=1)
    fits_per_cpu_s = 24 / (time.process_time() - cpu)
    start = time.perf_counter()
    fits = fit_sersic_many(np.stack(images), kernel, sky_sigma=5.7, gain=4.8, workers=workers)
    seconds = time.perf_counter() - start
    got_n, got_re = np.array([f.n for f in fits]), np.array([f.re_pix for f in fits])
    return {"fits": n, "workers": workers, "seconds": round(seconds, 2), "fits_per_s": round(n / seconds, 1),
            "target_fits_per_s": 15, "fits_per_cpu_s": round(fits_per_cpu_s, 1), "median_abs_dn": round(float(np.nanmedian(np.abs(got_n - p["n"]))), 3),
            "median_abs_dre_over_re": round(float(np.nanmedian(np.abs(got_re / p["re"] - 1))), 4),
            "flag0_fraction": round(float(np.mean([f.flag == 0 for f in fits])), 3),
            "load_average": os.getloadavg()[0]}


def bench_archetypes(n: int = 512, workers: int = 2, size: int = 128, seed: int = 0) -> dict:
    """Archetypes/s (GalSim Sérsic * Moffat drawn on size x size + matched noise); target >= 200 img/s.

    ``cold`` includes building GalSim's Sérsic tables for every index on the n grid (once per
    process); ``warm`` is the steady state of a large set.
    """
    from morphllr.galaxies.archetypes import ArchetypeParams, NoiseModel, render_archetypes
    from morphllr.galaxies.psf import make_psf

    rng = np.random.default_rng(seed)
    p = _sdss_like_sersics(n, rng)
    params = ArchetypeParams(ids=np.arange(n), n=p["n"], re_pix=p["re"], q=p["q"], pa_deg=p["pa"], flux=p["flux"],
                             n_clipped=np.zeros(n, bool))
    noise = NoiseModel(sky_sigma=np.full(n, 5.7), gain=np.full(n, 4.8))
    psf = make_psf(1.4)
    start = time.perf_counter()
    render_archetypes(params, (1, size, size), GAL_SCALE, psf, noise, seed=seed, workers=workers)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    render_archetypes(params, (1, size, size), GAL_SCALE, psf, noise, seed=seed, workers=workers)
    warm = time.perf_counter() - start
    cpu = time.process_time()
    render_archetypes(params, (1, size, size), GAL_SCALE, psf, noise, seed=seed, workers=1)
    per_cpu_s = n / (time.process_time() - cpu)
    return {"images": n, "size": size, "workers": workers, "images_per_s_cold": round(n / cold, 1),
            "images_per_s_warm": round(n / warm, 1), "images_per_cpu_s_warm": round(per_cpu_s, 1), "target_images_per_s": 200, "load_average": os.getloadavg()[0]}


BENCHMARKS.update({"fit_sersic": bench_fit_sersic, "archetypes": bench_archetypes})


#: (benchmark, measured key, target key, "higher" or "lower" is better, unit) for the summary table.
SUMMARY = [
    ("segmentation", "images_per_s", "target_images_per_s", "higher", "img/s (64x64)"),
    ("prepare", "seconds_for_40000", "target_seconds_for_40000", "lower", "s for 40,000 cutouts"),
    ("fit_sersic", "fits_per_s", "target_fits_per_s", "higher", "fits/s (64x64)"),
    ("archetypes", "images_per_s_warm", "target_images_per_s", "higher", "img/s (128x128)"),
]


def main(argv: list[str]) -> None:
    """Run the named benchmarks (all by default), print each result as JSON, then a summary table."""
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return
    results = {}
    for name in argv or list(BENCHMARKS):
        if name not in BENCHMARKS:
            raise SystemExit(f"unknown benchmark {name}; choose from {list(BENCHMARKS)}")
        results[name] = BENCHMARKS[name]()
        print(json.dumps({name: results[name]}), flush=True)
    print(f"\n| benchmark | measured | target | unit | met |\n|---|---|---|---|---|")
    for name, key, target_key, better, unit in SUMMARY:
        if name in results:
            got, target = results[name][key], results[name][target_key]
            met = got >= target if better == "higher" else got <= target
            print(f"| {name} | {got} | {target} | {unit} | {'yes' if met else 'no'} |")
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f}; cores: {os.cpu_count()}")


if __name__ == "__main__":
    main(sys.argv[1:])
