"""LLR of image sets from Python: the same numbers `morphllr compare` reports, by hand.

Run `make demo` first (it writes the demo's image sets to morphllr-demo/data/), then

    .venv/bin/python examples/llr_from_python.py [morphllr-demo/data]

It loads the two shipped models, computes every image's LLR = log p_obs - log p_arch and the
per-pixel LLR maps of one galaxy, prints the mean LLR of each set, and saves a picture of
where in that galaxy the observed-galaxy model wins (blue) or the Sérsic model wins (red).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

import morphllr
from morphllr.demo import shipped_models

data = Path(sys.argv[1] if len(sys.argv) > 1 else "morphllr-demo/data")
if not data.is_dir():
    raise SystemExit(f"{data}: not found; run `make demo` first or pass a folder of ImageSets (.h5)")

obs_dir, arch_dir = shipped_models()
p_obs, p_arch = morphllr.load_model(obs_dir), morphllr.load_model(arch_dir)

for path in sorted(data.glob("*.h5")):
    images = morphllr.ImageSet.open(path)
    llr = morphllr.log_likelihood(p_obs, images) - morphllr.log_likelihood(p_arch, images)
    print(f"{path.stem:>15s}: n = {len(llr):4d}, mean LLR = {llr.mean():8.2f} nats, median = {np.median(llr):8.2f}")

# Per-pixel maps: one forward pass per model gives every pixel's conditional log-probability.
galaxy = morphllr.ImageSet.open(data / "observed-test.h5").images[:1]
maps = morphllr.log_likelihood(p_obs, galaxy, per_pixel=True) - morphllr.log_likelihood(p_arch, galaxy, per_pixel=True)

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, (ax_img, ax_llr) = plt.subplots(1, 2, figsize=(7, 3.4))
ax_img.imshow(galaxy[0, 0], cmap="gray", origin="lower")
ax_img.set_title("image (model input space)")
limit = np.abs(maps[0]).max()
shown = ax_llr.imshow(maps[0], cmap="RdBu", vmin=-limit, vmax=limit, origin="lower")
ax_llr.set_title(f"per-pixel LLR (sum {maps[0].sum():.1f} nats)")
fig.colorbar(shown, ax=ax_llr, label="nats")
fig.savefig("llr_map_example.png", dpi=120, bbox_inches="tight")
print("saved llr_map_example.png")
