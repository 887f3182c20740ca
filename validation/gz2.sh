#!/usr/bin/env bash
# Validate morphllr on real galaxies: Galaxy Zoo 2 SDSS gri JPEGs (issue 7).
#
# Reproduces everything in VALIDATION.md from ../shared/data/gz2_sdss_jpeg:
#   split -> linearise + prepare -> fit-sersic -> archetypes (matched noise; and real sky tiled from the frames'
#   empty blocks) -> train p_obs / p_arch (/ p_arch_sky) -> degraded copies -> compare (report).
#
# Usage:   validation/gz2.sh                    # the whole run (about 40 min on 2 busy cores, + the train_sky run)
#          validation/gz2.sh STEP ...           # only these steps: split prepare fit residuals arch sky arch_sky
#                                               # skystats train train_sky degrade compare compare_sky skyllr ship
#                                               # (shipped: use validation/models instead of step train)
#          validation/gz2.sh jpegs DIR OUT.h5   # prepare your own SDSS-like JPEG cutouts exactly like the
#                                               # shipped validation models' training data
# Environment: DATA (default ../shared/data/gz2_sdss_jpeg), RUN (default runs/gz2), PY (default .venv/bin/python),
#              NET (network options), STEPS (optimizer steps per model), THREADS (CPU threads per training run
#              of step train), THREADS_SKY (CPU threads of step train_sky, default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/gz2_sdss_jpeg}
RUN=${RUN:-runs/gz2}
PY=${PY:-.venv/bin/python}
MORPHLLR=${MORPHLLR:-.venv/bin/morphllr}
# Network: the paper's PixelCNN++ (gaussian head, dropout 0.5, rot augmentation) slimmed to fit ~30 min of
# two shared CPU cores: nr_resnet 2 / nr_filters 32 instead of 3 / 64 (3/64 ran at 11 s per step here).
# --input-norm preset: the network input (x - 0.5) / 0.5 the shipped validation models were trained with.
NET=${NET:---preset zanisi21 --nr-resnet 2 --nr-filters 32 --dropout 0.5 --warmup-steps 100 --input-norm preset}
STEPS=${STEPS:-500}   # optimizer steps of 64 images (~31 epochs of the 1008 images left after the 10 % val split)
THREADS=${THREADS:-1}
PSF_FWHM=1.4   # arcsec, SDSS r median; ~1.4 px at the nominal 1"/px of the binned cutouts (see recipe)
mkdir -p "$RUN"

# The recipe.  GZ2 JPEGs are asinh-stretched (Lupton et al. 2004; we assume the softening Q = 8) and 8-bit.
# `jpegs` below undoes the stretch: flux = (255/Q) sinh(Q v/255) (v = green value), i.e. linear flux
# in units of one 8-bit level at the faint end, then bins 4x4 (424 -> 106 px, nominal 1"/px: GZ2 cutouts
# are 0.02 petroR90 arcsec/px, ~0.25"/px for typical galaxies).  The model side re-applies the same
# arcsinh (stretch_scale = 255/Q) after the 2x2 mean, so p_obs and p_arch see pixels made the same way
# from linear flux, and the Sérsic fits and archetypes live in (approximately) linear flux.
write_recipe() {
cat > "$RUN/gz2_linear.toml" <<'TOML'
# GZ2 JPEGs linearised by validation/gz2.sh (flux = 31.875 sinh(8 v/255), 4x4 binned).
name = "gz2_linear"
units = "counts"
sky = "estimate"       # the JPEG sky sits a few levels above black
nonfinite = "fail"
center = false         # GZ2 cutouts are centred on the galaxy
pixel_scale = 1.0      # nominal (arcsec/px after 4x4 binning); only sets the PSF size in pixels
cutout = 64            # = central 256 px of the 424 px JPEG
zoom = 0.5             # 2x2 mean -> 32x32
stretch = "arcsinh"
stretch_scale = 31.875 # 255 / Q: the JPEG's own stretch, re-applied after binning
clip_lo = -1.0
clip_hi = 8.0          # = Q: a saturated (255) pixel
quantise_8bit = false
TOML
}

step_split() {
  "$PY" - "$DATA" "$RUN" <<'PY'
"""Seeded, label-stratified 80/20 train/validation split -> validation/split.csv."""
import sys
from pathlib import Path
import numpy as np
data, run = Path(sys.argv[1]), Path(sys.argv[2])
if not (data / "train").is_dir():
    sys.exit(f"error: {data}/train not found; set DATA=/path/to/gz2_sdss_jpeg")
rng = np.random.default_rng(2021)
rows = []
for label, folder in (("spiral", "spirals"), ("non_spiral", "non_spirals")):
    ids = sorted(p.stem for p in (data / "train" / folder).glob("*.jpg"))
    val = set(rng.choice(ids, size=round(0.2 * len(ids)), replace=False))
    rows += [(i, label, "val" if i in val else "train", f"train/{folder}/{i}.jpg") for i in ids]
out = Path("validation/split.csv")
out.write_text("id,label,split,file\n" + "".join(",".join(r) + "\n" for r in rows))
print(f"split: {sum(r[2] == 'train' for r in rows)} train, {sum(r[2] == 'val' for r in rows)} val -> {out}")
PY
}

# The JPEG linearisation, shared by every step that reads JPEGs (prepended to their Python).
JPEG_PY=$(cat <<'PY'
import sys
from pathlib import Path
import numpy as np
from PIL import Image
from morphllr.errors import MorphllrError

Q = 8.0      # Lupton et al. (2004) softening assumed for the SDSS/GZ2 colour JPEGs
BIN = 4      # 424 px -> 106 px


def linear_flux(path: Path) -> np.ndarray:
    """Green channel of an SDSS gri JPEG as approximately linear flux, (1, H/BIN, W/BIN).

    Args:
        path: JPEG file.

    Returns:
        float32 flux in units of one 8-bit level at the faint (linear) end of the stretch.
    """
    try:
        rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
    except OSError as exc:
        raise MorphllrError(f"{path}: cannot read JPEG ({exc})") from None
    flux = (255.0 / Q) * np.sinh(Q * rgb[..., 1] / 255.0)
    h, w = (s // BIN * BIN for s in flux.shape)
    binned = flux[:h, :w].reshape(h // BIN, BIN, w // BIN, BIN).mean(axis=(1, 3))
    return binned[None].astype(np.float32)
PY
)

# Linearise + bin + prepare JPEGs.  Args: OUT.h5, then either a split name (train/val, from split.csv) or a folder.
prepare_jpegs() {
  write_recipe
  { printf '%s\n' "$JPEG_PY"; cat <<'PY'
# JPEG green channel -> approximately linear flux, 4x4 binned -> morphllr ImageSet.
from morphllr.imageset import prepare_imageset
from morphllr.preprocess import Preprocessing
from morphllr.readers import RawImage

data, recipe, out, what = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3]), sys.argv[4]
if Path(what).is_dir():
    files = sorted(p for p in Path(what).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
    meta = [{} for _ in files]
else:
    import csv
    rows = [r for r in csv.DictReader(open("validation/split.csv")) if r["split"] == what]
    files = [data / r["file"] for r in rows]
    meta = [{"label": r["label"], "split": r["split"]} for r in rows]
if not files:
    sys.exit(f"error: no JPEG/PNG files for {what!r}")
records = (RawImage(id=f.stem, image=linear_flux(f), source=str(f), meta=m) for f, m in zip(files, meta))
report = prepare_imageset(records, out, Preprocessing.from_file(recipe), n=len(files), overwrite=True, workers=1)
print(f"{out}: {report['n_images']} images {report['image_shape']}, central source missing in "
      f"{report['n_central_missing']}")
PY
  } | "$PY" - "$DATA" "$RUN/gz2_linear.toml" "$@"
}

step_prepare() {
  prepare_jpegs "$RUN/train_real.h5" train
  prepare_jpegs "$RUN/val_real.h5" val
}

step_fit() {
  "$MORPHLLR" fit-sersic "$RUN/train_real.h5" --psf-fwhm $PSF_FWHM --workers 2 --overwrite
  "$MORPHLLR" fit-sersic "$RUN/val_real.h5" --psf-fwhm $PSF_FWHM --workers 2 --overwrite
}

step_residuals() {
  "$PY" - "$RUN" "$PSF_FWHM" <<'PY'
"""Sérsic fit quality: good-fit fractions per class and a figure of residuals for 4 + 4 validation galaxies."""
import sys
from pathlib import Path
import numpy as np
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from morphllr.archetypes import SersicProfileCache, draw_archetype_safely
from morphllr.imageset import ImageSet
from morphllr.psf import make_psf

run, psf_fwhm = Path(sys.argv[1]), float(sys.argv[2])
for name in ("train_real", "val_real"):
    with ImageSet.open(run / f"{name}.h5") as s:
        cat = s.catalog
    for label in ("spiral", "non_spiral"):
        rows = np.asarray(cat["label"]) == label
        good = np.asarray(cat["sersic_flag"])[rows] == 0
        n = np.asarray(cat["sersic_n"])[rows][good]
        print(f"{name} {label}: {good.mean():.3f} good fits (flag 0) of {rows.sum()}; median n {np.median(n):.2f}, "
              f"median chi2nu {np.nanmedian(np.asarray(cat['sersic_chi2nu'])[rows][good]):.2f}")
with ImageSet.open(run / "val_real.h5") as s:
    cat, flux, scale = s.catalog, np.asarray(s.flux[:]), s.preprocessing["pixel_scale"]
psf, cache = make_psf(psf_fwhm, "moffat"), SersicProfileCache()
rng = np.random.default_rng(3)
picks = [rng.choice(np.flatnonzero((np.asarray(cat["label"]) == lab) & (np.asarray(cat["sersic_flag"]) == 0)), 4,
                    replace=False) for lab in ("spiral", "non_spiral")]
fig, axes = plt.subplots(3, 8, figsize=(16, 6.4))
for col, i in enumerate(np.concatenate(picks)):
    r = cat[i]
    model = draw_archetype_safely(cache, np.clip(r["sersic_n"], 0.3, 6.2), r["sersic_re_pix"], r["sersic_q"],
                                  r["sersic_pa_deg"], r["sersic_flux"], psf, flux.shape[2:], scale,
                                  r["sersic_x0_pix"], r["sersic_y0_pix"])
    img, sig = flux[i, 0], float(r["sky_sigma"])
    for row, (panel, kw) in enumerate(((img, {}), (model, {}), ((img - model) / sig, {"cmap": "RdBu_r"}))):
        ax = axes[row, col]
        if row < 2:
            ax.imshow(np.arcsinh(panel / 31.875), origin="lower", cmap="gray", vmin=-0.2, vmax=5)
        else:
            ax.imshow(panel, origin="lower", cmap="RdBu_r", vmin=-10, vmax=10)
        ax.set_xticks([]); ax.set_yticks([])
    axes[0, col].set_title(f"{r['label']} {r['id']}\nn={r['sersic_n']:.1f} Re={r['sersic_re_pix']:.1f}px", fontsize=8)
for row, text in enumerate(("GZ2 (linearised)", "Sérsic fit (PSF)", "residual / sky σ (±10)")):
    axes[row, 0].set_ylabel(text)
fig.tight_layout()
out = Path("validation/figures"); out.mkdir(parents=True, exist_ok=True)
fig.savefig(out / "sersic_residuals.png", dpi=60)
print(f"wrote {out / 'sersic_residuals.png'}")
PY
}

step_arch() {
  "$MORPHLLR" archetypes "$RUN/train_real.h5" --out "$RUN/train_arch.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 1 --overwrite
  "$MORPHLLR" archetypes "$RUN/val_real.h5" --out "$RUN/val_arch.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 2 --overwrite
}

# Real-sky archetypes (second variant).  The 106 px frames hold no empty 64 px square, so each 64 px sky patch
# is tiled from 16 empty 16x16 blocks of 16 different frames of the same split (train frames for the train
# archetypes, validation frames for the validation ones): sky of the whole pool, not the galaxy's own frame.
#   block 16 px: the 424 px JPEG has 8x8 luma blocks and 16x16 chroma blocks (4:2:0) = 2 and 4 binned px; a
#     16 px block keeps 4x4 of them whole, with their phase (blocks start on the 4 px lattice, and so does the
#     cutout, at frame pixel 20), so only 3 seams cross a patch; 95 % of the train frames have an empty block
#     (8 px blocks lose the 4 px correlation at their 7 seams; 32 px blocks exist in only ~8 % of the frames).
#   dilate 4 px: sources grown by ~3 PSF FWHM to keep their wings below the 1.5 sigma isophote out.
#   the blocks of one patch come from the 32 frames nearest in (log sky rms, log sky level): one noise level and
#     one 8-bit floor per patch, as in a real cutout (a free mix gives a patchwork of deep and shallow skies).
SKY_BLOCK=16
SKY_DILATE=4
SKY_NEIGHBOURS=32

step_sky() {
  { printf '%s\n' "$JPEG_PY"; cat <<'PY'
# Empty-sky patches for the real-sky archetypes, tiled from empty blocks of each split's own frames.
from morphllr.imageset import ImageSet
from morphllr.preprocess import cutout_window
from morphllr.skypatches import empty_blocks, tile_sky_patches

run, block, dilate, neighbours = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
GRID = 4  # the JPEG's 16 px chroma blocks after 4x4 binning: block corners stay on this lattice
for split, seed in (("train", 11), ("val", 12)):
    with ImageSet.open(run / f"{split}_real.h5") as s:
        cat, cutouts = s.catalog, np.asarray(s.flux[:])
    # the whole binned frame, minus the sky level that prepare subtracted (catalogue column sky_level)
    frames = np.stack([linear_flux(Path(f)) - np.array([lvl])[:, None, None]
                       for f, lvl in zip(cat["file"], cat["sky_level"])]).astype(np.float32)
    size = cutouts.shape[-1]
    rows, cols = cutout_window(frames.shape, (frames.shape[-1] - 1) / 2, (frames.shape[-2] - 1) / 2, size, split)
    if not np.array_equal(frames[:, :, rows, cols], cutouts):
        sys.exit(f"error: {split}: frames rebuilt from the JPEGs differ from {split}_real.h5; run `prepare` again")
    if rows.start % GRID or cols.start % GRID:
        sys.exit(f"error: the cutout starts at frame pixel {rows.start}, off the {GRID} px JPEG block lattice")
    sky = empty_blocks(frames, block=block, grid=GRID, dilate=dilate)
    patches = tile_sky_patches(sky, len(frames), size, seed=seed, neighbours=neighbours,
                               match=np.log(np.asarray(cat["sky_level"], float)))
    covered = np.zeros(frames.shape[:1] + frames.shape[2:], bool)
    for f, y, x in zip(sky.frame, sky.y, sky.x):
        covered[f, y:y + block, x:x + block] = True
    out = run / f"{split}_sky.npy"
    tmp = out.with_name(out.stem + ".tmp.npy")
    np.save(tmp, patches)
    tmp.replace(out)
    print(f"{split}: {len(sky)} empty {block}x{block} blocks (on a {GRID} px lattice) in {len(np.unique(sky.frame))} "
          f"of {len(frames)} frames, {covered.sum()} distinct sky pixels; {len(patches)} patches of {size}x{size} "
          f"(patch pixels / pool pixels = {patches[:, 0].size / covered.sum():.1f}) -> {out}")
PY
  } | "$PY" - "$RUN" $SKY_BLOCK $SKY_DILATE $SKY_NEIGHBOURS
}

step_arch_sky() {
  "$MORPHLLR" archetypes "$RUN/train_real.h5" --out "$RUN/train_arch_sky.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 1 \
      --sky-patches "$RUN/train_sky.npy" --overwrite
  "$MORPHLLR" archetypes "$RUN/val_real.h5" --out "$RUN/val_arch_sky.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 2 \
      --sky-patches "$RUN/val_sky.npy" --overwrite
}

step_skystats() {
  { printf '%s\n' "$JPEG_PY"; cat <<'PY'
# Does the tiled sky look like the real sky?  Statistics of the empty sky of the train set, flux and model pixels.
from morphllr.imageset import ImageSet
from morphllr.preprocess import Preprocessing, cutout_window
from morphllr.skypatches import sky_mask, sky_statistics

run, dilate = Path(sys.argv[1]), int(sys.argv[2])
with ImageSet.open(run / "train_real.h5") as s:
    cat, prep = s.catalog, Preprocessing.from_dict(s.preprocessing)
frames = np.stack([linear_flux(Path(f)) - np.array([lvl])[:, None, None]
                   for f, lvl in zip(cat["file"], cat["sky_level"])]).astype(np.float32)
size = int(prep.cutout)
rows, cols = cutout_window(frames.shape, (frames.shape[-1] - 1) / 2, (frames.shape[-2] - 1) / 2, size, "train")


def model_mask(mask: np.ndarray) -> np.ndarray:
    """A model pixel (2x2 mean) is sky when its four flux pixels are."""
    m, h, w = mask.shape
    return mask[:, :h // 2 * 2, :w // 2 * 2].reshape(m, h // 2, 2, w // 2, 2).all(axis=(2, 4))


def masks(flux: np.ndarray) -> np.ndarray:
    return np.stack([sky_mask(f, dilate) for f in flux])


frame_sky = masks(frames)
sets = [("real: all empty sky of the 106 px frames", frames, frame_sky),
        ("real: empty sky inside the 64 px cutouts", frames[:, :, rows, cols], frame_sky[:, rows, cols]),
        ("tiled sky patches (train_sky.npy)", np.load(run / "train_sky.npy"), None)]
for name, file in (("gaussian-noise archetypes", "train_arch.h5"), ("sky-patch archetypes", "train_arch_sky.h5")):
    if (run / file).is_file():
        with ImageSet.open(run / file) as s:
            flux = np.asarray(s.flux[:])
        sets.append((f"{name}: empty sky ({file})", flux, masks(flux)))
head = "| sky | rms | mean | z skew | z 0.1% | z floor | z 99.9% | rho(1) | rho(1,1) | rho(2) | rho(4) |"
for space in ("flux pixels", "model pixels (2x2 mean, arcsinh)"):
    print(f"\n{space}: rms = median over images; z = pixels standardised by their image's own mean and rms; "
          "z floor = median lowest z; rho = correlation of z at that lag in pixels")
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    for name, flux, mask in sets:
        if space.startswith("model"):
            flux, mask = prep.flux_to_model(flux), None if mask is None else model_mask(mask)
        st = sky_statistics(flux, mask)
        q = st["z_quantiles"]
        print(f"| {name} | {st['rms_median']:.4g} | {st['mean']:+.3g} | {st['z_skew']:+.2f} | {q[0.1]:+.2f} | "
              f"{st['z_floor']:+.2f} | {q[99.9]:+.2f} | {st['corr_1']:.3f} | {st['corr']['1,1']:.3f} | "
              f"{st['corr_2']:.3f} | {st['corr_4']:.3f} |")
print("\nsep sky_sigma (catalogue, measured on each 64 px cutout as prepare does), median:")
for file in ("train_real.h5", "train_arch.h5", "train_arch_sky.h5"):
    if (run / file).is_file():
        with ImageSet.open(run / file) as s:
            print(f"  {file}: {np.median(np.asarray(s.catalog['sky_sigma'])):.3f}")
PY
  } | "$PY" - "$RUN" $SKY_DILATE
}

step_train() {
  # both runs in parallel, one thread each (2-core machine)
  "$MORPHLLR" train "$RUN/train_real.h5" --out "$RUN/models/obs" $NET --max-steps "$STEPS" \
      --augment rot,flip --threads "$THREADS" --overwrite --quiet > "$RUN/train_obs.log" 2>&1 &
  local pid_obs=$!
  "$MORPHLLR" train "$RUN/train_arch.h5" --out "$RUN/models/arch" $NET --max-steps "$STEPS" \
      --augment rot,flip --threads "$THREADS" --overwrite --quiet > "$RUN/train_arch.log" 2>&1 &
  local pid_arch=$!
  wait $pid_obs; wait $pid_arch
  tail -n 3 "$RUN/train_obs.log" "$RUN/train_arch.log"
}

step_train_sky() {
  # p_arch of the real-sky archetypes; p_obs is the one from step_train.  One run: both cores.
  "$MORPHLLR" train "$RUN/train_arch_sky.h5" --out "$RUN/models/arch_sky" $NET --max-steps "$STEPS" \
      --augment rot,flip --threads "${THREADS_SKY:-2}" --overwrite --quiet > "$RUN/train_arch_sky.log" 2>&1
  tail -n 3 "$RUN/train_arch_sky.log"
}

step_shipped() {
  # instead of `train`: score with the shipped validation models (same recipe, trained on the same train_real.h5;
  # refused if the rebuilt training set differs from the one they were trained on)
  "$PY" - "$RUN" <<'PY'
import json, shutil, sys
from pathlib import Path
from morphllr.imageset import ImageSet
run = Path(sys.argv[1])
for m, data in (("obs", "train_real.h5"), ("arch", "train_arch.h5")):
    meta = json.loads(Path(f"validation/models/{m}/model.json").read_text())
    with ImageSet.open(run / data) as s:
        got = s.fingerprint()
    if got != meta["data_fingerprint"]:
        sys.exit(f"error: {run / data} (sha256 {got[:12]}) is not the set validation/models/{m} was trained on "
                 f"({meta['data_fingerprint'][:12]}); run step train instead")
    dest = run / "models" / m
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("weights.safetensors", "model.json"):
        shutil.copy(Path(f"validation/models/{m}") / f, dest / f)
    print(f"{dest}: the shipped model, trained on this very {data}")
PY
}

step_degrade() {
  "$PY" - "$RUN" "$PSF_FWHM" <<'PY'
"""Label subsets and degraded copies of the validation galaxies, through identical preprocessing."""
import sys
from pathlib import Path
import numpy as np
from scipy.ndimage import gaussian_filter
from morphllr.imageset import ImageSet, write_flux_set
from morphllr.segmentation import background_stats

run, psf_fwhm = Path(sys.argv[1]), float(sys.argv[2])
rng = np.random.default_rng(7)
with ImageSet.open(run / "val_real.h5") as real:
    flux, cat, prep = np.asarray(real.flux[:]), real.catalog, real.preprocessing
scale = prep["pixel_scale"]


def restore_noise(smoothed: np.ndarray, original: np.ndarray) -> np.ndarray:
    """Add white noise so the smoothed image's sky rms matches the original's again."""
    target, now = background_stats(original)[1], background_stats(smoothed)[1]
    return smoothed + rng.normal(0.0, np.sqrt(max(target**2 - now**2, 0.0)), smoothed.shape)


def broader_psf(img: np.ndarray) -> np.ndarray:
    """PSF 2x broader: convolve with a Gaussian of FWHM sqrt(3) x PSF (FWHMs add in quadrature)."""
    sigma = np.sqrt(3.0) * psf_fwhm / scale / 2.3548
    return restore_noise(gaussian_filter(img, sigma), img)


def smoothed_centre(img: np.ndarray, re_pix: float) -> np.ndarray:
    """Blur the galaxy inside ~1.5 R_e (sigma = R_e/2), keep the outskirts: structure erased at the centre."""
    re_pix = float(re_pix) if np.isfinite(re_pix) and re_pix > 0 else 4.0
    yy, xx = np.indices(img.shape)
    c = (img.shape[0] - 1) / 2
    weight = np.clip(1.5 - np.hypot(yy - c, xx - c) / (1.5 * re_pix), 0.0, 1.0)  # 1 inside, ramps to 0
    blurred = restore_noise(gaussian_filter(img, max(re_pix / 2, 1.0)), img)
    return weight * blurred + (1 - weight) * img


psf2 = np.stack([[broader_psf(f[0])] for f in flux]).astype(np.float32)
centre = np.stack([[smoothed_centre(f[0], r)] for f, r in zip(flux, cat["sersic_re_pix"])]).astype(np.float32)
write_flux_set(run / "val_psf2x.h5", psf2, cat, prep, overwrite=True)
write_flux_set(run / "val_smooth_centre.h5", centre, cat, prep, overwrite=True)
for label in ("spiral", "non_spiral"):
    keep = np.asarray(cat["label"]) == label
    write_flux_set(run / f"val_{label}s.h5", flux[keep], cat[keep], prep, overwrite=True)
print("degraded copies and label subsets written")
PY
}

step_compare() {
  "$MORPHLLR" compare --obs "$RUN/models/obs" --arch "$RUN/models/arch" --reference "GZ2-val=$RUN/val_real.h5" \
      "archetypes=$RUN/val_arch.h5" "spirals=$RUN/val_spirals.h5" "non-spirals=$RUN/val_non_spirals.h5" \
      "smoothed-centre=$RUN/val_smooth_centre.h5" "PSF-2x=$RUN/val_psf2x.h5" \
      --out "$RUN/report" --overwrite
}

step_compare_sky() {
  # the same sets scored with p_arch trained on the real-sky archetypes (the Gaussian-noise archetypes too)
  "$MORPHLLR" compare --obs "$RUN/models/obs" --arch "$RUN/models/arch_sky" --reference "GZ2-val=$RUN/val_real.h5" \
      "sky-archetypes=$RUN/val_arch_sky.h5" "gaussian-archetypes=$RUN/val_arch.h5" "spirals=$RUN/val_spirals.h5" \
      "non-spirals=$RUN/val_non_spirals.h5" "smoothed-centre=$RUN/val_smooth_centre.h5" "PSF-2x=$RUN/val_psf2x.h5" \
      --out "$RUN/report_sky" --overwrite
}

step_skyllr() {
  # Where the real-vs-archetype separation comes from: LLR summed over empty-sky pixels (no source within
  # SKY_DILATE flux px: sky_mask on the flux cutout, a model pixel counts when its 2x2 flux pixels are all sky)
  # and over the rest, for the validation galaxies and their archetypes, under both archetype models.
  "$PY" - "$RUN" $SKY_DILATE <<'PY'
import sys
from pathlib import Path
import numpy as np
import morphllr
from morphllr.imageset import ImageSet
from morphllr.skypatches import sky_mask
from morphllr.stats import auroc

run, dilate = Path(sys.argv[1]), int(sys.argv[2])
obs = morphllr.load_model(run / "models" / "obs")
print("| p_arch | set | empty-sky model px per image | LLR in empty sky [nats/image] | per px | LLR elsewhere [nats/image] |")
print("|---|---|---|---|---|---|")
parts = {}
for arch_name in ("arch", "arch_sky"):
    arch = morphllr.load_model(run / "models" / arch_name)
    for name in ("val_real", "val_arch", "val_arch_sky"):
        with ImageSet.open(run / f"{name}.h5") as s:
            images, flux = np.asarray(s.images[:]), np.asarray(s.flux[:])
        llr = (morphllr.log_likelihood(obs, images, per_pixel=True)
               - morphllr.log_likelihood(arch, images, per_pixel=True))
        k = images.shape[-1]
        z = flux.shape[-1] // k
        sky = np.stack([sky_mask(f, dilate) for f in flux]).reshape(len(flux), k, z, k, z).all(axis=(2, 4))
        in_sky = (llr * sky).sum(axis=(1, 2))
        parts[arch_name, name] = in_sky, llr.sum(axis=(1, 2)) - in_sky
        print(f"| {arch_name} | {name} | {sky.sum(axis=(1, 2)).mean():.0f} | {in_sky.mean():+.1f} | "
              f"{(in_sky.sum() / sky.sum()):+.3f} | {parts[arch_name, name][1].mean():+.1f} |")
for arch_name, arch_set in (("arch", "val_arch"), ("arch_sky", "val_arch_sky")):
    (rs, rr), (as_, ar) = parts[arch_name, "val_real"], parts[arch_name, arch_set]
    print(f"AUROC val_real > {arch_set} under p_{arch_name}: empty-sky pixels only {auroc(rs, as_):.4f}, "
          f"all other pixels {auroc(rr, ar):.4f}")
PY
}

step_ship() {
  for m in obs arch arch_sky; do
    mkdir -p "validation/models/$m"
    cp "$RUN/models/$m/weights.safetensors" "$RUN/models/$m/model.json" "validation/models/$m/"
    chmod 644 "validation/models/$m/"*
  done
  mkdir -p validation/figures
  cp "$RUN"/report/figures/{radial_llr_profile,llr_histograms,mean_llr_maps}.png validation/figures/
  cp "$RUN"/report_sky/figures/radial_llr_profile.png validation/figures/radial_llr_profile_sky.png
  echo "models copied to validation/models/, report figures to validation/figures/"
}

if [[ $# -ge 1 && $1 == jpegs ]]; then
  shift; [[ $# -eq 2 ]] || { echo "usage: $0 jpegs DIR OUT.h5" >&2; exit 2; }
  prepare_jpegs "$2" "$1"; exit
fi
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] ||
  steps=(split prepare fit residuals arch sky arch_sky skystats train train_sky degrade compare compare_sky skyllr ship)
for s in "${steps[@]}"; do echo "== $s ($(date -u +%H:%M:%S))"; "step_$s"; done
