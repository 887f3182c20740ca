#!/usr/bin/env bash
# Does the background cancel for simulated galaxies inserted into real SDSS sky?  (issue 11, part 4)
#
# The 11 real IllustrisTNG50 SKIRT cubes of ../shared/data/tng50_skirt are observed twice, (a) in Gaussian sky
# of the same rms as the real sky and (b) in real sky cut from the SDSS frame of ../shared/data/sdss_frame, and
# scored under a model pair trained on real-sky data: demo-universe galaxies and their Sérsic archetypes inserted
# into sky patches of the same frame (training sky and scoring sky from disjoint interleaved stripes of it).
# `compare` splits every image's LLR into its empty-sky pixels and the rest (VALIDATION_TNG50.md).
#
# Only morphllr commands; every step's output lands in $RUN.
# Usage:   validation/tng50_realsky.sh                 # everything (~25 min on 2 cores, most of it training)
#          validation/tng50_realsky.sh STEP ...        # only these: sky universe train mocks compare
# Environment: SHARED (default ../shared/data), RUN (default runs/tng50), MORPHLLR (default .venv/bin/morphllr),
#              ZP (AB magnitude of 1 count/s of the SKIRT cubes, default 23.87: see below), N_TRAIN (2000).
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${SHARED:-../shared/data}
RUN=${RUN:-runs/tng50}
MORPHLLR=${MORPHLLR:-.venv/bin/morphllr}
N_TRAIN=${N_TRAIN:-2000}
FRAME="$SHARED/sdss_frame/frame-r-002583-2-0136.fits.bz2"
# The TNG SKIRT cubes are in counts/s/pixel with no AB zero point in the files, and none was found documented.
# We assume 1 count/s is one SDSS r DN per second of the frame's 53.9 s exposure: 28.2 - 2.5 log10(53.907) = 23.87.
# This sets how bright the galaxies are, not how the sky is treated, which is what this run checks.
ZP=${ZP:-23.87}
# The demo models' network and schedule (morphllr.demo.TRAIN_RECIPE), at two parallel runs of one thread each.
NET="--preset small --nr-resnet 1 --nr-filters 24 --dropout 0.1 --input-norm 0,0.05 --max-steps 700 --batch-size 32 \
--lr 0.002 --warmup-steps 50 --seed 0 --threads 1 --quiet --overwrite"
mkdir -p "$RUN"

step_sky() {  # training sky and scoring sky: interleaved 64-column stripes of the one frame, never a shared pixel
  "$MORPHLLR" sky-patches "$FRAME" --size 128 --part 1/2 --n 1000 --out "$RUN/sky_train.npy" --overwrite
  "$MORPHLLR" sky-patches "$FRAME" --size 128 --part 2/2 --n 300 --seed 1 --out "$RUN/sky_score.npy" --overwrite
}

step_universe() {  # demo-universe galaxies and archetypes in real sky (training sky / scoring sky)
  "$MORPHLLR" synth --out "$RUN/train" --n-train "$N_TRAIN" --sets observed-train,archetypes-train \
    --sky-patches "$RUN/sky_train.npy" --overwrite
  "$MORPHLLR" synth --out "$RUN/test" --n-test 300 --sets observed-test,archetypes \
    --sky-patches "$RUN/sky_score.npy" --overwrite
}

step_train() {  # p_obs and p_arch at once, one thread each
  "$MORPHLLR" train "$RUN/train/observed-train.h5" --out "$RUN/models/obs" $NET > "$RUN/train_obs.log" 2>&1 &
  local obs=$!
  "$MORPHLLR" train "$RUN/train/archetypes-train.h5" --out "$RUN/models/arch" $NET > "$RUN/train_arch.log" 2>&1
  wait "$obs"
}

step_mocks() {  # the 11 galaxies observed 10 times each (own sky, noise and PSF drawn from the observed test set):
               # (a) in Gaussian sky of the observed sky's rms, (b) in real sky from the scoring stripes
  local common=("$SHARED/tng50_skirt" --band r --zero-point "$ZP" --like "$RUN/models/obs"
                --match "$RUN/test/observed-test.h5" --repeat 10 --seed 3 --overwrite)
  "$MORPHLLR" mock "${common[@]}" --out "$RUN/tng50_gaussian_sky.h5"
  "$MORPHLLR" mock "${common[@]}" --sky-patches "$RUN/sky_score.npy" --out "$RUN/tng50_real_sky.h5"
  # The sky alone, made by the very same commands: the galaxies dimmed by 30 mag (an AB zero point of 1 count/s
  # 30 mag fainter: 1e-12 of their light) leave only each mock's sky and noise, so these sets say what the background alone scores.
  local dim=$(python3 -c "print($ZP + 30)")
  local empty=("${common[@]}")
  empty[4]=$dim
  "$MORPHLLR" mock "${empty[@]}" --out "$RUN/sky_only_gaussian.h5"
  "$MORPHLLR" mock "${empty[@]}" --sky-patches "$RUN/sky_score.npy" --out "$RUN/sky_only_real.h5"
}

step_compare() {
  "$MORPHLLR" compare --obs "$RUN/models/obs" --arch "$RUN/models/arch" --reference observed="$RUN/test/observed-test.h5" \
    archetypes="$RUN/test/archetypes.h5" tng50-gaussian-sky="$RUN/tng50_gaussian_sky.h5" \
    tng50-real-sky="$RUN/tng50_real_sky.h5" sky-only-gaussian="$RUN/sky_only_gaussian.h5" \
    sky-only-real="$RUN/sky_only_real.h5" --out "$RUN/report" --overwrite
}

steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(sky universe train mocks compare)
for s in "${steps[@]}"; do
  declare -F "step_$s" >/dev/null || { echo "error: unknown step $s (sky universe train mocks compare)" >&2; exit 2; }
  echo "== $s" >&2
  "step_$s"
done
