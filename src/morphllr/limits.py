"""The bounds of every number a user can give morphllr, in one place (no imports: the CLI reads it at start-up).

The command line declares them on its options (``typer.Option(min=..., max=...)``, so NaN,
inf and absurd values stop before any work, and ``--help`` shows the range); the library
checks the same bounds for Python callers and for values read from files (catalogue
columns, image sizes).  Resource bounds keep a mistake from exhausting memory: a refusal
names the limit instead of the machine running out of memory minutes later.
"""

from __future__ import annotations

# --- command-line options shared by several commands -------------------------------------------
SEED_MAX = 2**32 - 1  # numpy and Lightning seeds
THREADS_MAX = 1024
WORKERS_MAX = 256
N_GALAXIES_MAX = 10_000_000  # galaxies generated per set
PIXEL_SCALE_MIN, PIXEL_SCALE_MAX = 1e-6, 3600.0  # arcsec per pixel
ZERO_POINT_MIN, ZERO_POINT_MAX = -60.0, 60.0  # AB magnitude of one flux unit (1 erg/s/cm^2/Hz is -48.6)
GAIN_MIN, GAIN_MAX = 1e-9, 1e9  # electrons per DN / per flux unit
PSF_FWHM_MIN, PSF_FWHM_MAX = 0.01, 60.0  # arcsec (also refused beyond these in a catalogue column)
PSF_BETA_MIN, PSF_BETA_MAX = 1.0, 50.0  # Moffat index (option and catalogue column psf_beta); 50 is ~Gaussian
PSF_IMAGE_MAX_SIDE = 1025  # pixels per side of a PSF image (--psf-image); stored whole in the fit's record

# --- Sérsic fits and archetypes ----------------------------------------------------------------
MIN_FIT_SIZE = 8  # pixels per side of the fitted square: fewer leave too few pixels for the 7 parameters
#: an archetype's major-axis R_e may be at most this many flux-cutout sides (a fit that large has failed)
MAX_RE_CUTOUTS = 100.0
#: total flux of an archetype, in the set's flux units (SDSS r counts: a 10th-magnitude galaxy has ~1e7)
MAX_FLUX = 1e15

# --- images ------------------------------------------------------------------------------------
#: pixels per side of one input image or cutout (prepare, mock); 2 x 16384^2 float32 is 2 GiB
MAX_IMAGE_SIDE = 16384
