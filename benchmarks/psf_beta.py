"""How much a wrong Moffat beta biases the fitted Sérsic index (issue 13).

    .venv/bin/python benchmarks/psf_beta.py                       # 40 mocks, true beta 3.5
    .venv/bin/python benchmarks/psf_beta.py --n 100 --workers 2 --true-beta 3.0

GalSim mocks (Sérsic n 0.5-5, major-axis R_e 2.5-9 px, q 0.3-1, r ~ 16.5-19 mag, SDSS r
noise: sky sigma 5.7 counts, gain 4.8 e-/count, 0.396"/px) convolved with a Moffat PSF of
FWHM 1.4" and the *true* beta; each is fitted by ``morphllr.galaxies.sersic_fit.fit_sersic`` twice,
with the right beta and with the default 4.765 (``--psf-beta`` not given), and the
median |Δn|, median Δn and median |ΔR_e / R_e| are printed (JSON on the last line).
``--noiseless`` fits the noise-free images (the pure PSF-model bias).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

SCALE = 0.396
SKY_SIGMA = 5.7
GAIN = 4.8
FWHM = 1.4


def mocks(n: int, true_beta: float, seed: int, noiseless: bool = False, size: int = 64):
    """(images (n, size, size), truths (n, 2) of n and R_e) of PSF-convolved GalSim Sérsics."""
    import galsim

    from morphllr.galaxies.psf import make_psf

    psf = make_psf(FWHM, "moffat", beta=true_beta)
    rng = np.random.default_rng(seed)
    images, truths = [], []
    for _ in range(n):
        sn, re, q, pa = rng.uniform(0.5, 5.0), rng.uniform(2.5, 9.0), rng.uniform(0.3, 1.0), rng.uniform(0, 180)
        flux = rng.uniform(5e3, 5e4)
        offset = tuple(rng.uniform(-1.5, 1.5, 2))
        gal = galsim.Sersic(sn, half_light_radius=re * np.sqrt(q) * SCALE, flux=flux).shear(q=q, beta=pa * galsim.degrees)
        clean = galsim.Convolve(gal, psf).drawImage(nx=size, ny=size, scale=SCALE, offset=offset).array.astype(float)
        if not noiseless:
            shot = rng.poisson(clean.clip(0) * GAIN) / GAIN - clean.clip(0)
            clean = clean + rng.normal(0, SKY_SIGMA, clean.shape) + shot
        images.append(clean)
        truths.append((sn, re))
    return np.stack(images), np.array(truths)


def fit_all(images, beta: float, workers: int, noiseless: bool):
    from morphllr.galaxies.psf import make_psf
    from morphllr.galaxies.sersic_fit import fit_sersic_many, psf_kernel_for

    kernel = psf_kernel_for(make_psf(FWHM, "moffat", beta=beta), SCALE)
    fits = fit_sersic_many(images, kernel, sky_sigma=1.0 if noiseless else SKY_SIGMA,
                           gain=None if noiseless else GAIN, workers=workers)
    return np.array([(f.n, f.re_pix) for f in fits])


def main(argv=None) -> dict:
    from morphllr.galaxies.psf import DEFAULT_MOFFAT_BETA

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="mock galaxies")
    parser.add_argument("--true-beta", type=float, default=3.5)
    parser.add_argument("--assumed-beta", type=float, default=DEFAULT_MOFFAT_BETA)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--noiseless", action="store_true")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    images, truth = mocks(args.n, args.true_beta, args.seed, args.noiseless)
    result = {"n": args.n, "true_beta": args.true_beta, "assumed_beta": args.assumed_beta,
              "noiseless": args.noiseless, "seed": args.seed}
    for label, beta in (("right", args.true_beta), ("wrong", args.assumed_beta)):
        got = fit_all(images, beta, args.workers, args.noiseless)
        dn = got[:, 0] - truth[:, 0]
        result[label] = {"beta": beta, "median_abs_dn": float(np.median(np.abs(dn))),
                         "median_dn": float(np.median(dn)),
                         "median_abs_dre": float(np.median(np.abs(got[:, 1] / truth[:, 1] - 1)))}
        print(f"fit beta {beta:g} ({label}): median |dn| = {result[label]['median_abs_dn']:.3f}, "
              f"median dn = {result[label]['median_dn']:+.3f}, median |dRe/Re| = "
              f"{result[label]['median_abs_dre']:.3f}", file=sys.stderr)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
