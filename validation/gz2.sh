#!/usr/bin/env bash
# Validate morphllr on real galaxies: Galaxy Zoo 2 SDSS gri JPEGs (issue 7), in morphllr commands only.
#
# Reproduces VALIDATION.md from ../shared/data/gz2_sdss_jpeg:
#   split -> prepare (JPEG un-stretch: preset gz2_linear) -> fit-sersic -> archetypes (matched noise; and real sky
#   tiled from the frames' empty blocks) -> train p_obs / p_arch (/ p_arch_sky) -> degraded copies -> compare.
#
# Usage:   validation/gz2.sh                    # the whole run (about 40 min on 2 busy cores, + the train_sky run)
#          validation/gz2.sh STEP ...           # only these steps: split prepare fit residuals arch sky arch_sky
#                                               # skystats train train_sky train_seeds degrade compare
#                                               # compare_ensemble compare_sky skyllr ship
#                                               # (shipped: use validation/models instead of step train)
#          validation/gz2.sh jpegs DIR OUT.h5   # = morphllr prepare DIR --like validation/models/obs --out OUT.h5
# Environment: DATA (default ../shared/data/gz2_sdss_jpeg), RUN (default runs/gz2), PY (default .venv/bin/python;
#              MORPHLLR defaults to the morphllr beside it), NET (network options), STEPS (optimizer steps per
#              model), THREADS (CPU threads per training run of step train), THREADS_SKY (step train_sky, default 2).
set -euo pipefail
if [[ $# -eq 3 && $1 == jpegs ]]; then  # the user's paths are relative to where the script was called from
  set -- jpegs "$(realpath -m -- "$2")" "$(realpath -m -- "$3")"
fi
cd "$(dirname "$0")/.."
DATA=${DATA:-../shared/data/gz2_sdss_jpeg}
RUN=${RUN:-runs/gz2}
PY=${PY:-.venv/bin/python}
MORPHLLR=${MORPHLLR:-$(dirname "$PY")/morphllr}
# Network: the paper's PixelCNN++ (gaussian head, dropout 0.5, rot augmentation) slimmed to fit ~30 min of
# two shared CPU cores: nr_resnet 2 / nr_filters 32 instead of 3 / 64 (3/64 ran at 11 s per step here).
# --input-norm preset: the network input (x - 0.5) / 0.5 the shipped validation models were trained with.
NET=${NET:---preset zanisi21 --nr-resnet 2 --nr-filters 32 --dropout 0.5 --warmup-steps 100 --input-norm preset}
STEPS=${STEPS:-500}   # optimizer steps of 64 images (~31 epochs of the 1008 images left after the 10 % val split)
THREADS=${THREADS:-1}
PSF_FWHM=1.4   # arcsec, SDSS r median; ~1.4 px at the nominal 1"/px of the binned cutouts (see the recipe)
SPLIT=validation/split.csv   # id, label, split, file: the seeded (2021), label-stratified 80/20 split
mkdir -p "$RUN"

# The recipe is the shipped preset gz2_linear (src/morphllr/presets/gz2_linear.toml): the green channel un-stretched,
# flux = (255/8) sinh(8 v/255), binned 4x4 (424 -> 106 px), central 64 px, 2x2 mean, arcsinh(flux/31.875) clipped.

split_files() {  # the JPEGs of one split, in split.csv's order
  awk -F, -v s="$1" -v d="$DATA" 'NR > 1 && $3 == s { print d "/" $4 }' "$SPLIT"
}

prepare_split() {  # SPLIT OUT.h5 [more prepare options]: the split's JPEGs with split.csv's label and split columns
  local split=$1 out=$2 files
  shift 2
  mapfile -t files < <(split_files "$split")
  "$MORPHLLR" prepare "${files[@]}" --catalog "$SPLIT" --out "$out" --workers 1 --overwrite "$@"
}

step_split() {
  # The split is committed (validation/split.csv, drawn once with numpy's default_rng(2021)); this checks that
  # DATA holds every file of it.
  [[ -d $DATA/train ]] || { echo "error: $DATA/train not found; set DATA=/path/to/gz2_sdss_jpeg" >&2; exit 2; }
  local missing
  missing=$(awk -F, -v d="$DATA" 'NR > 1 { print d "/" $4 }' "$SPLIT" | while read -r f; do [[ -f $f ]] || echo "$f"; done)
  [[ -z $missing ]] || { echo "error: $SPLIT names files missing from $DATA, e.g. $(head -n 1 <<< "$missing")" >&2; exit 2; }
  echo "split: $(split_files train | wc -l) train, $(split_files val | wc -l) val ($SPLIT)"
}

step_prepare() {
  prepare_split train "$RUN/train_real.h5" --preset gz2_linear
  prepare_split val "$RUN/val_real.h5" --preset gz2_linear
}

step_fit() {
  "$MORPHLLR" fit-sersic "$RUN/train_real.h5" --psf-fwhm $PSF_FWHM --workers 2 --overwrite
  "$MORPHLLR" fit-sersic "$RUN/val_real.h5" --psf-fwhm $PSF_FWHM --workers 2 --overwrite
}

step_residuals() {
  # Dropped with the script's Python: validation/figures/sersic_residuals.png is from the original run; the
  # compare report's galleries show galaxies next to their archetypes, and the fits' flags are catalogue columns.
  echo "residuals: no longer computed (see validation/figures/sersic_residuals.png and the compare report)"
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
#     cutout, at frame pixel 20), so only 3 seams cross a patch.
#   dilate 4 px: sources grown by ~3 PSF FWHM to keep their wings below the 1.5 sigma isophote out.
#   the blocks of one patch come from the 32 frames nearest in sky noise: one noise level per patch (the script's
#     former Python matched the frames' sky level too, which `sky-patches` does not; one patch per galaxy).
SKY_BLOCK=16
SKY_DILATE=4
SKY_NEIGHBOURS=32

step_sky() {
  # the whole frames, linearised like the cutouts (validation/gz2_frames.toml = gz2_linear without the cutout)
  local split seed
  for split in train val; do
    seed=$([[ $split == train ]] && echo 11 || echo 12)
    prepare_split "$split" "$RUN/${split}_frames.h5" --preset validation/gz2_frames.toml
    "$MORPHLLR" sky-patches "$RUN/${split}_frames.h5" --size 64 --block $SKY_BLOCK --grid 4 --dilate $SKY_DILATE \
        --neighbours $SKY_NEIGHBOURS --n "$(split_files "$split" | wc -l)" --seed $seed --out "$RUN/${split}_sky.npy" \
        --overwrite > "$RUN/${split}_sky.log"
  done
}

step_arch_sky() {
  "$MORPHLLR" archetypes "$RUN/train_real.h5" --out "$RUN/train_arch_sky.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 1 \
      --sky-patches "$RUN/train_sky.npy" --overwrite
  "$MORPHLLR" archetypes "$RUN/val_real.h5" --out "$RUN/val_arch_sky.h5" --psf-fwhm $PSF_FWHM --drop-bad --seed 2 \
      --sky-patches "$RUN/val_sky.npy" --overwrite
}

step_skystats() {
  # `morphllr sky-patches` (step sky) prints the frames' and the patches' sky statistics (rms, mean, skew,
  # neighbour correlation) and records them in $RUN/{train,val}_sky.json; compare_sky's sky split does the rest.
  echo "skystats: see the sky statistics printed by step sky (records $RUN/train_sky.json, $RUN/val_sky.json)"
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

step_train_seeds() {
  # issue 12: the ensembles. Seed 0 is models/{obs,arch} (step train or shipped); seeds 1 and 2 are trained
  # here with the same recipe (each pair side by side, one thread each), then joined: models/{obs,arch}_ens
  local k m data pids=()
  for k in 1 2; do
    pids=()
    for m in obs arch; do
      data=$([[ $m == obs ]] && echo train_real.h5 || echo train_arch.h5)
      "$MORPHLLR" train "$RUN/$data" --out "$RUN/models/${m}_seed$k" $NET --max-steps "$STEPS" --seed $k \
          --augment rot,flip --threads "$THREADS" --overwrite --quiet > "$RUN/train_${m}_seed$k.log" 2>&1 &
      pids+=($!)
    done
    wait "${pids[@]}"
  done
  for m in obs arch; do
    "$MORPHLLR" ensemble "$RUN/models/$m" "$RUN/models/${m}_seed1" "$RUN/models/${m}_seed2" \
        --out "$RUN/models/${m}_ens" --overwrite
  done
}

step_train_sky() {
  # p_arch of the real-sky archetypes; p_obs is the one from step_train.  One run: both cores.
  "$MORPHLLR" train "$RUN/train_arch_sky.h5" --out "$RUN/models/arch_sky" $NET --max-steps "$STEPS" \
      --augment rot,flip --threads "${THREADS_SKY:-2}" --overwrite --quiet > "$RUN/train_arch_sky.log" 2>&1
  tail -n 3 "$RUN/train_arch_sky.log"
}

step_shipped() {
  # instead of `train`: score with the shipped validation models, refused unless the rebuilt training sets are
  # the very sets they were trained on
  # p_arch: its archetypes were rendered from fits made before fit-sersic's half-pixel start fix (2026-12-02), which
  # moves 3 of the 1120 training fits, so a rebuilt train_arch.h5 differs from its training set in those 3 images:
  # checked for the recipe only (VALIDATION.md, "caveats")
  local m
  "$MORPHLLR" check validation/models/obs "$RUN/train_real.h5" --trained-on
  "$MORPHLLR" check validation/models/arch "$RUN/train_arch.h5"
  for m in obs arch; do
    mkdir -p "$RUN/models/$m"
    cp "validation/models/$m/weights.safetensors" "validation/models/$m/model.json" "$RUN/models/$m/"
    rm -rf "$RUN/models/${m}_ens"
    cp -r "validation/models/ensemble/$m" "$RUN/models/${m}_ens"  # issue 12: the 3-seed ensembles (train_seeds)
  done
}

step_degrade() {
  # degraded copies of the validation galaxies through identical preprocessing, sky noise restored (seeded),
  # and the label subsets
  "$MORPHLLR" degrade "$RUN/val_real.h5" --psf-broaden 2 --psf-fwhm $PSF_FWHM --seed 7 --out "$RUN/val_psf2x.h5" --overwrite
  "$MORPHLLR" degrade "$RUN/val_real.h5" --smooth-centre --seed 8 --out "$RUN/val_smooth_centre.h5" --overwrite
  "$MORPHLLR" subset "$RUN/val_real.h5" --where 'label == spiral' --out "$RUN/val_spirals.h5" --overwrite
  "$MORPHLLR" subset "$RUN/val_real.h5" --where 'label == non_spiral' --out "$RUN/val_non_spirals.h5" --overwrite
  # resolution loss (bin K x K and back, noise restored): the synthetic twin of the paper's TNG50-1/-2/-3 test
  "$MORPHLLR" degrade "$RUN/val_real.h5" --resolution 2 --seed 9 --out "$RUN/val_res2.h5" --overwrite
  "$MORPHLLR" degrade "$RUN/val_real.h5" --resolution 4 --seed 10 --out "$RUN/val_res4.h5" --overwrite
}

step_compare() {
  "$MORPHLLR" compare --obs "$RUN/models/obs" --arch "$RUN/models/arch" --reference "GZ2-val=$RUN/val_real.h5" \
      "archetypes=$RUN/val_arch.h5" "spirals=$RUN/val_spirals.h5" "non-spirals=$RUN/val_non_spirals.h5" \
      "smoothed-centre=$RUN/val_smooth_centre.h5" "PSF-2x=$RUN/val_psf2x.h5" \
      --out "$RUN/report" --overwrite
}

step_compare_ensemble() {
  # issue 12: the same sets under all 3 x 3 model pairs of the seed ensembles (model_std, ci95_total, ranking_agreement)
  "$MORPHLLR" compare --obs "$RUN/models/obs_ens" --arch "$RUN/models/arch_ens" --reference "GZ2-val=$RUN/val_real.h5" \
      "archetypes=$RUN/val_arch.h5" "spirals=$RUN/val_spirals.h5" "non-spirals=$RUN/val_non_spirals.h5" \
      "smoothed-centre=$RUN/val_smooth_centre.h5" "PSF-2x=$RUN/val_psf2x.h5" "resolution-2x=$RUN/val_res2.h5" \
      "resolution-4x=$RUN/val_res4.h5" --out "$RUN/report_ensemble" --overwrite
}

step_compare_sky() {
  # the same sets scored with p_arch trained on the real-sky archetypes (the Gaussian-noise archetypes too)
  "$MORPHLLR" compare --obs "$RUN/models/obs" --arch "$RUN/models/arch_sky" --reference "GZ2-val=$RUN/val_real.h5" \
      "sky-archetypes=$RUN/val_arch_sky.h5" "gaussian-archetypes=$RUN/val_arch.h5" "spirals=$RUN/val_spirals.h5" \
      "non-spirals=$RUN/val_non_spirals.h5" "smoothed-centre=$RUN/val_smooth_centre.h5" "PSF-2x=$RUN/val_psf2x.h5" \
      --out "$RUN/report_sky" --overwrite
}

step_skyllr() {
  # Where the real-vs-archetype separation comes from: compare splits every LLR into its empty-sky pixels and
  # the rest itself (scores.csv columns llr_sky, llr_rest, n_sky_pixels; summary.json sets.*.sky with
  # auroc_sky_vs_reference and auroc_rest_vs_reference; the table "LLR split: empty sky vs the rest").
  echo "skyllr: the sky / rest split is in $RUN/report/summary.json and $RUN/report_sky/summary.json (sets.*.sky)"
}

step_ship() {
  for m in obs arch arch_sky; do
    mkdir -p "validation/models/$m"
    cp "$RUN/models/$m/weights.safetensors" "$RUN/models/$m/model.json" "validation/models/$m/"
    chmod 644 "validation/models/$m/"*
  done
  for m in obs arch; do
    if [[ -f "$RUN/models/${m}_ens/ensemble.json" ]]; then
      rm -rf "validation/models/ensemble/$m"; mkdir -p validation/models/ensemble
      cp -r "$RUN/models/${m}_ens" "validation/models/ensemble/$m"
    fi
  done
  mkdir -p validation/figures
  cp "$RUN"/report/figures/{radial_llr_profile,llr_histograms,mean_llr_maps}.png validation/figures/
  cp "$RUN"/report_sky/figures/radial_llr_profile.png validation/figures/radial_llr_profile_sky.png
  echo "models copied to validation/models/, report figures to validation/figures/"
}

if [[ $# -ge 1 && $1 == jpegs ]]; then
  shift; [[ $# -eq 2 ]] || { echo "usage: $0 jpegs DIR OUT.h5" >&2; exit 2; }
  exec "$MORPHLLR" prepare "$1" --like validation/models/obs --out "$2" --overwrite
fi
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] ||
  steps=(split prepare fit residuals arch sky arch_sky skystats train train_sky train_seeds degrade compare
         compare_ensemble compare_sky skyllr ship)
for s in "${steps[@]}"; do
  declare -F "step_$s" > /dev/null || { echo "error: unknown step $s; see the usage at the top of $0" >&2; exit 2; }
  echo "== $s ($(date -u +%H:%M:%S))"; "step_$s"
done
