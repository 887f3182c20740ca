"""Domain guards: is a scored set inside what the two models were trained on?

morphllr reports one number per set; when a set lies outside what the models describe
(another sky, another noise level, another recipe, other galaxy sizes) that number is
confident and wrong.  This module records, at training time, what the model saw, and
judges every scored set against it.

**What is recorded** (``model.json`` ``metrics["domain"]``, :func:`morphllr.score.record_domain`,
which scores the images; written by ``train`` at the end of training and by
``scripts/record_domain.py`` for older models):
over the model's validation images (its training images when it has no validation split),
per image,

* ``whole_bpd``: bits/dim of the whole image, ``-log p(x) / (C H W ln 2)``;
* ``sky_bpd``: bits/dim over the image's empty-sky pixels only,
  ``-sum_sky log p / (n_sky C ln 2)``; empty sky is what ``compare`` calls sky
  (:class:`morphllr.data.pixels.SkyMasks`, one implementation: ``/segmap`` through the set's crop
  and zoom with every source grown by ``geometry.SKY_MARGIN`` flux pixels,
  ``geometry.model_sky_mask``; without ``/segmap``, ``/segmap_model == 0``);
  images without a sky pixel are left out;
  (a set whose sky comes from the other mask than the record's is not judged on the sky, with a note);
* ``size_area``: the central source's area in model pixels (``/segmap_model == 1``);
  ``size_re``: the catalogue half-light radius ``sersic_re_pix`` x ``zoom`` (model pixels),
  when the catalogue has it.

Masked pixels (an ImageSet's ``/mask_model``, 1 = excluded) are in no statistic: their terms
leave log p (``whole_bpd`` is then per unmasked dimension, ``-sum_unmasked log p /
(n_unmasked C ln 2)``) and they are never empty sky - in the record as in the judged sets.

Each is stored as quantiles (:data:`QUANTILES`, in %), mean, std, n, plus the definition
(:data:`DEFINITION`) and its version (:data:`VERSION`).  A statistic that cannot be
measured (no segmentation, no catalogue column) is ``null``.

**Why these and not the galaxy pixels**: a poor simulation *should* score worse bits/dim on
its galaxies' pixels - that is the signal the tool measures (on GZ2 the real-vs-archetype
gap is ~0.5 bits/dim).  So the guards rest on what must be shared by every set a comparison
is valid for: the background (sky pixels under *both* models), a whole-image bits/dim far
beyond anything seen in training, and the galaxies' sizes.

**Rules** (set level, per model member against that member's own record; a guard fires
when it fires for at least half the members of a side - one odd retraining is not enough -
and the warning names the members).  ``q[p]`` = the training record's p-th percentile,
``spread`` = ``q[99] - q[1]`` of the training values:

* **sky** (each of p_obs and p_arch; the background must be shared, so this one is tight):
  the set's median sky bits/dim lies outside ``[q[5] - 0.5 w, q[95] + 0.5 w]`` with
  ``w = q[95] - q[5]`` (:data:`SKY_MARGIN_SPREAD` = 0.5), or more than :data:`OUTSIDE_SHARE`
  of its images lie outside ``[q[0.1] - 0.5 w, q[99.9] + 0.5 w]``;
* **whole image** (each model; loose on purpose, since a worse simulation scores worse here):
  the set's median whole-image bits/dim lies outside ``[q[0] - spread, q[100] + spread]``
  (:data:`WHOLE_MARGIN_SPREAD` = 1: one full 1-99 % width of the training values beyond the
  best and the worst validation image), or more than :data:`OUTSIDE_SHARE` of its images do;
* **size** (against p_obs's record: the observed galaxies' sizes; p_arch's are its archetypes'):
  the set's median central-source area (else catalogue R_e) lies outside
  ``[q[1], q[99]]`` of the training sizes, or more than :data:`OUTSIDE_SHARE` of its images lie
  outside ``[q[0.1] / SIZE_FACTOR, q[99.9] * SIZE_FACTOR]`` (:data:`SIZE_FACTOR` = 1.5).

:data:`OUTSIDE_SHARE` = 0.25: a set drawn from the training distribution has ~0.2 % of its
images outside the 0.1-99.9 % range.  The measured margins on the demo and GZ2 sets are in
``tests/score/test_domain.py`` and the issue-13 report.

Other warnings (:func:`model_warnings`, :func:`set_warnings`): a reference whose mean LLR is
<= 0 (p_obs does not prefer the observations it should describe), a set of fewer than
:data:`MIN_RELIABLE_N` images (intervals unreliable), two models trained on data of different
input kinds or recipes, and a model whose training had not converged (issue 12:
``metrics["convergence"]``; for an ensemble of K >= 2 members the tolerance is
``max(recorded tolerance, sample std of the members' val bits/dim)``).  Models trained before
these fields existed get a one-line note, never a refusal.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from morphllr.data.pixels import OpenedSet, SkyMasks, excluded_pixels, take_rows
from morphllr.data.catalog import RE_PIX_COLUMNS, catalog_values, find_column
from morphllr.model.heads import bits_per_dim

VERSION = 1
#: records of fewer validation images are not judged (their quantiles have no usable spread: with 5 images a set of
#: the same distribution fired the sky rule 14.5 % of the time, with 20 never, in 200 draws)
MIN_RECORD_N = 20
#: percentiles recorded for every statistic
QUANTILES = (0.0, 0.1, 1.0, 5.0, 50.0, 95.0, 99.0, 99.9, 100.0)
STATISTICS = ("whole_bpd", "sky_bpd", "size_area", "size_re")
DEFINITION = {
    "whole_bpd": "-log p(x) / (C H W ln 2) per image",
    "sky_bpd": "-sum of log p over empty-sky pixels / (n_sky C ln 2) per image; empty sky as in compare "
               "(/segmap through crop and zoom, sources grown by geometry.SKY_MARGIN; else /segmap_model == 0); "
               "images without sky pixels left out",
    "size_area": "central-source area in model pixels (/segmap_model == 1)",
    "size_re": "catalogue sersic_re_pix x preprocessing zoom (model pixels)",
    "quantiles": "percentiles " + ", ".join(f"{q:g}" for q in QUANTILES),
}
#: share of a set's images outside the training range above which a guard fires
OUTSIDE_SHARE = 0.25
#: sky bits/dim: margin beyond the training's 5-95 % (median) / 0.1-99.9 % (images) range, in units of its 5-95 % width
SKY_MARGIN_SPREAD = 0.5
#: whole-image bits/dim: margin beyond the training's extremes, in units of its 1-99 % width
WHOLE_MARGIN_SPREAD = 1.0
#: sizes: per-image range = 0.1-99.9 % of the training sizes, widened by this factor each way
SIZE_FACTOR = 1.5
#: sets smaller than this get the "intervals unreliable" warning
MIN_RELIABLE_N = 30
RECORD_HINT = "scripts/record_domain.py MODEL TRAINING_SET"


# --------------------------------------------------------------------------- per-image numbers
def key(q: float) -> str:
    """The JSON key of percentile ``q`` (``"0.1"``, ``"50"``)."""
    return f"{q:g}"


def describe(values: np.ndarray) -> dict | None:
    """Quantiles, mean, std and n of the finite ``values`` (None when there is none)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {"quantiles": {key(q): float(np.percentile(v, q)) for q in QUANTILES}, "mean": float(v.mean()),
            "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def whole_bpd(logp: np.ndarray, n_dims: Any) -> np.ndarray:
    """Per-image whole-image bits/dim of log p (nats), any leading shape (float64)."""
    return bits_per_dim(np.asarray(logp, dtype=np.float64), n_dims)


def sky_bpd(sky_logp: np.ndarray, n_sky: np.ndarray, channels: int) -> np.ndarray:
    """Per-image sky bits/dim from the summed sky log p (nats) and the sky-pixel counts (NaN without sky)."""
    n_sky = np.asarray(n_sky, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_sky > 0, bits_per_dim(np.asarray(sky_logp, np.float64), n_sky * channels), np.nan)


class SkyReader:
    """Empty-sky masks and central-source masks of an image source, by rows.

    The sky is :class:`morphllr.data.pixels.SkyMasks`'s (the one definition); this only opens it for
    any ImageSource (an ImageSet has ``segmap`` / ``segmap_model``; a bare array has neither).
    """

    def __init__(self, source: Any, name: str | None = None):
        _, _, h, w = source.shape
        self.opened = OpenedSet.from_source(name or str(getattr(source, "name", "set")),
                                            str(getattr(source, "name", "")), source)
        self.masks = SkyMasks(self.opened, (h, w))
        self.kind = self.masks.kind

    def sky(self, rows: np.ndarray) -> np.ndarray | None:
        """bool (B, H, W) empty sky of the (sorted) ``rows``, or None."""
        return self.masks.read_rows(np.asarray(rows))

    def excluded(self, rows: np.ndarray) -> np.ndarray | None:
        """bool (B, H, W) masked pixels (``/mask_model``) of the (sorted) ``rows``, or None without a mask."""
        return excluded_pixels(self.opened.mask, rows=rows)

    def central(self, rows: np.ndarray) -> np.ndarray | None:
        """bool (B, H, W) central-source mask of the (sorted) ``rows``, or None."""
        if self.opened.segmap is None:
            return None
        return take_rows(self.opened.segmap, rows) == 1


def re_model_pixels(catalog: Any, preprocessing: dict | None) -> tuple[np.ndarray | None, str | None]:
    """Catalogue half-light radii in model pixels (``sersic_re_pix`` x zoom), or None and why not.

    Args:
        catalog: the set's catalogue (astropy Table) or None.
        preprocessing: the preprocessing record whose zoom maps catalogue pixels onto the model grid.
    """
    col = find_column(catalog, RE_PIX_COLUMNS)
    if col is None:
        return None, f"no half-light radius column ({' / '.join(RE_PIX_COLUMNS)}) in the catalogue"
    zoom = (preprocessing or {}).get("zoom")
    if zoom is None:
        return None, f"the preprocessing records no zoom, so {col} cannot be converted to model pixels"
    return catalog_values(catalog, col) * float(zoom), None


# --------------------------------------------------------------------------- judging a set
def set_statistics(member_logp: np.ndarray, member_sky_logp: np.ndarray | None, n_sky: np.ndarray | None,
                   area: np.ndarray | None, re: np.ndarray | None, shape: Sequence[int], *,
                   n_valid: np.ndarray | None = None) -> dict:
    """Per-image statistics of a scored set, per member.

    Args:
        member_logp: (K, N) log p per member (nats).
        member_sky_logp: (K, N) summed sky log p per member, or None.
        n_sky: (N,) sky pixels per image, or None.
        area: (N,) central-source areas (model pixels), or None.
        re: (N,) half-light radii in model pixels, or None.
        shape: (C, H, W).
        n_valid: (N,) unmasked model pixels per image when ``member_logp`` sums only those
            (whole-image bits/dim per unmasked dimension); None: all H x W.

    Returns:
        ``{"whole_bpd": (K, N), "sky_bpd": (K, N) | None, "size_area": (N,) | None, "size_re": (N,) | None}``.
    """
    c, h, w = (int(v) for v in shape)
    dims: Any = c * h * w
    if n_valid is not None:
        n_valid = np.asarray(n_valid, np.float64)
        dims = np.where(n_valid > 0, c * n_valid, np.nan)[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        whole = whole_bpd(np.atleast_2d(member_logp), dims)
    out = {"whole_bpd": whole, "sky_bpd": None,
           "size_area": None if area is None else np.asarray(area, np.float64),
           "size_re": None if re is None else np.asarray(re, np.float64)}
    if member_sky_logp is not None and n_sky is not None and np.isfinite(np.asarray(n_sky, float)).any():
        out["sky_bpd"] = sky_bpd(np.atleast_2d(member_sky_logp), np.asarray(n_sky)[None], c)
    return out


def _q(rec: dict, q: float) -> float:
    return float(rec["quantiles"][key(q)])


def bounds(rec: dict, statistic: str) -> tuple[tuple[float, float], tuple[float, float]]:
    """``(median range, per-image range)`` of one recorded statistic (see the module's rules)."""
    spread = _q(rec, 99) - _q(rec, 1)
    if statistic == "sky_bpd":
        bulk = _q(rec, 95) - _q(rec, 5)
        return ((_q(rec, 5) - SKY_MARGIN_SPREAD * bulk, _q(rec, 95) + SKY_MARGIN_SPREAD * bulk),
                (_q(rec, 0.1) - SKY_MARGIN_SPREAD * bulk, _q(rec, 99.9) + SKY_MARGIN_SPREAD * bulk))
    if statistic == "whole_bpd":
        lo, hi = _q(rec, 0) - WHOLE_MARGIN_SPREAD * spread, _q(rec, 100) + WHOLE_MARGIN_SPREAD * spread
        return (lo, hi), (lo, hi)
    return (_q(rec, 1), _q(rec, 99)), (_q(rec, 0.1) / SIZE_FACTOR, _q(rec, 99.9) * SIZE_FACTOR)


def judge(values: np.ndarray, rec: dict, statistic: str) -> dict | None:
    """One statistic of a set against one training record: median, share outside, ranges, fired."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0 or rec is None or int(rec.get("n") or 0) < MIN_RECORD_N:
        return None  # a record of a handful of images has no usable spread: not judged
    (mlo, mhi), (ilo, ihi) = bounds(rec, statistic)
    median = float(np.median(v))
    outside = float(np.mean((v < ilo) | (v > ihi)))
    return {"median": median, "median_range": [mlo, mhi], "share_outside": outside, "image_range": [ilo, ihi],
            "training_median": _q(rec, 50), "n": int(v.size),
            "fired": bool(median < mlo or median > mhi or outside > OUTSIDE_SHARE)}


_LABELS = {"sky_bpd": "sky bits/dim", "whole_bpd": "whole-image bits/dim", "size_area": "central-source area",
           "size_re": "half-light radius"}
_RULE_TEXT = {
    "sky_bpd": f"median outside [q5 - {SKY_MARGIN_SPREAD:g} w, q95 + {SKY_MARGIN_SPREAD:g} w] of the training "
               f"images (w = q95 - q5) or > {OUTSIDE_SHARE:.0%} of the images outside [q0.1 - {SKY_MARGIN_SPREAD:g} w, "
               f"q99.9 + {SKY_MARGIN_SPREAD:g} w]",
    "whole_bpd": f"median outside [min - {WHOLE_MARGIN_SPREAD:g} w, max + {WHOLE_MARGIN_SPREAD:g} w] of the training "
                 f"images (w = q99 - q1) or > {OUTSIDE_SHARE:.0%} of the images outside it",
    "size_area": f"median outside the training's 1-99 % range or > {OUTSIDE_SHARE:.0%} of the images outside "
                 f"[q0.1 / {SIZE_FACTOR:g}, q99.9 x {SIZE_FACTOR:g}]",
}
_RULE_TEXT["size_re"] = _RULE_TEXT["size_area"]
#: the rules as summary.json states them (``domain_rules``)
RULES = {
    "sky_bpd": "sky bits/dim under each model: " + _RULE_TEXT["sky_bpd"],
    "whole_bpd": "whole-image bits/dim under each model: " + _RULE_TEXT["whole_bpd"],
    "size": "central-source area in model pixels (else catalogue R_e): " + _RULE_TEXT["size_area"],
    "members": "each member against its own training record; a guard fires when it fires for at least half the "
               "members of a side",
    "small_sample": f"n < {MIN_RELIABLE_N}: intervals unreliable",
    "reference": "the reference's mean LLR <= 0",
}
#: what each out-of-domain finding means, for the warning text
_MEANING = {
    "sky_bpd": "its background (sky, noise, PSF) is not the training data's, so the LLR partly measures the "
               "background, not the galaxies",
    "whole_bpd": "far outside anything seen in training, so both models extrapolate",
    "size_area": "its galaxies' sizes are outside the training range",
    "size_re": "its galaxies' sizes are outside the training range",
}


def domain_check(name: str, values: dict, sides: Sequence[tuple[str, str, list[str], list[dict | None]]],
                 sky_kind: str | None = None) -> tuple[dict, list[str]]:
    """Judge one set against every side's recorded domain (the rules of this module's docstring).

    Args:
        name: the set's label.
        values: side key -> :func:`set_statistics` of the set under that side's members.
        sides: ``(side key "obs"/"arch", label "p_obs"/"p_arch", member names, member records
            (``metrics["domain"]`` or None))``.
        sky_kind: where the set's empty-sky mask came from (``segmap`` / ``segmap_model``); a member
            whose record used the other kind is not judged on the sky (``report["sky_not_comparable"]``).

    Returns:
        (the measured numbers for summary.json, warning strings)
    """
    report: dict = {}
    warnings: list[str] = []
    size_done = False
    for side_key, label, names, records in sides:
        vals = values[side_key]
        side_report: dict = {}
        for statistic in ("sky_bpd", "whole_bpd"):
            arr = vals.get(statistic)
            if arr is None:
                continue
            per_member = []
            for k, (member, rec) in enumerate(zip(names, records)):
                srec = ((rec or {}).get("stats") or {}).get(statistic)
                if statistic == "sky_bpd" and sky_kind and (rec or {}).get("sky_mask") not in (None, sky_kind):
                    report.setdefault("sky_not_comparable", []).append(f"{label} {member}")
                    continue
                got = judge(arr[k], srec, statistic) if srec else None
                if got is not None:
                    per_member.append((member, got))
            if not per_member:
                continue
            side_report[statistic] = {m: g for m, g in per_member}
            fired = [(m, g) for m, g in per_member if g["fired"]]
            if 2 * len(fired) >= len(per_member) and fired:
                m, g = fired[0]
                who = label if len(per_member) == 1 else f"{label} ({len(fired)}/{len(per_member)} members: " \
                    f"{', '.join(x for x, _ in fired)})"
                warnings.append(
                    f"{name}: outside the models' domain - {_LABELS[statistic]} under {who}: median "
                    f"{g['median']:.3f} (training median {g['training_median']:.3f}, allowed "
                    f"[{g['median_range'][0]:.3f}, {g['median_range'][1]:.3f}]), {g['share_outside']:.0%} of the images "
                    f"outside [{g['image_range'][0]:.3f}, {g['image_range'][1]:.3f}]; rule: {_RULE_TEXT[statistic]}; "
                    f"{_MEANING[statistic]}")
        if not size_done:
            for statistic in ("size_area", "size_re"):
                arr = vals.get(statistic)
                recs = [((rec or {}).get("stats") or {}).get(statistic) for rec in records]
                if arr is None or not any(recs):
                    continue
                per_member = [(m, judge(arr, r, statistic)) for m, r in zip(names, recs) if r]
                per_member = [(m, g) for m, g in per_member if g is not None]
                if not per_member:
                    continue
                size_done = True
                report[statistic] = {m: g for m, g in per_member}
                fired = [(m, g) for m, g in per_member if g["fired"]]
                if fired and 2 * len(fired) >= len(per_member):
                    m, g = fired[0]
                    warnings.append(
                        f"{name}: outside the models' domain - {_LABELS[statistic]} (model pixels): median "
                        f"{g['median']:.3g} against the {label} training images' 1-99 % range "
                        f"[{g['median_range'][0]:.3g}, {g['median_range'][1]:.3g}], {g['share_outside']:.0%} of the "
                        f"images outside [{g['image_range'][0]:.3g}, {g['image_range'][1]:.3g}]; rule: "
                        f"{_RULE_TEXT[statistic]}; {_MEANING[statistic]}")
                break
        report[side_key] = side_report
    return report, warnings


# --------------------------------------------------------------------------- models
def member_meta(member: Any) -> dict:
    """A member's model.json (``meta``) or {} for an in-memory network."""
    return dict(getattr(member, "meta", None) or {})


def domain_record(member: Any) -> dict | None:
    """The recorded domain of a model (``metrics["domain"]``), or None for models trained before it existed."""
    rec = (member_meta(member).get("metrics") or {}).get("domain")
    return rec if isinstance(rec, dict) and rec.get("stats") else None


def convergence_findings(label: str, names: Sequence[str], members: Sequence[Any]) -> tuple[list[str], list[str]]:
    """Warnings for members whose training had not converged; notes for members that do not say.

    For a side of K >= 2 members the tolerance is max(recorded tolerance, sample std of the
    members' ``val_bits_per_dim``): the seed-to-seed noise measured on the ensemble itself.
    """
    warnings: list[str] = []
    notes: list[str] = []
    metas = [member_meta(m) for m in members]
    vals = [(mt.get("metrics") or {}).get("val_bits_per_dim") for mt in metas]
    vals = [float(v) for v in vals if isinstance(v, (int, float)) and math.isfinite(v)]
    seed_std = float(np.std(vals, ddof=1)) if len(members) >= 2 and len(vals) >= 2 else None
    missing, unknown = [], []
    for name, mt in zip(names, metas):
        conv = (mt.get("metrics") or {}).get("convergence")
        if not isinstance(conv, dict):
            missing.append(name)
            continue
        gain = conv.get("tail_improvement_bpd")
        recorded = conv.get("tolerance_bpd")
        if not isinstance(gain, (int, float)):
            unknown.append(name)
            continue
        tol = float(recorded) if isinstance(recorded, (int, float)) else 0.0
        source = f"the recorded tolerance {tol:.3g}"
        if seed_std is not None and seed_std > tol:
            tol, source = seed_std, (f"the seed-to-seed std of the {len(vals)} members' val bits/dim "
                                     f"{seed_std:.3g} (> recorded {float(recorded or 0):.3g})")
        if float(gain) >= tol:
            tail = conv.get("tail")
            share = f"last {float(tail):.0%} of steps" if isinstance(tail, (int, float)) else "last steps"
            who = f"the {label}" if name == label else f"{label} model {name}"
            warnings.append(f"{who} may not have converged: its validation bits/dim still improved "
                            f"by {float(gain):.3g} in the {share}, >= {tol:.3g} bits/dim ({source}); train it "
                            "longer (--max-steps) before quoting its scores")
    if missing:
        notes.append(f"{label}: {'model' if len(names) == 1 else 'members'} {', '.join(missing)} record no "
                     "convergence test (trained before it was recorded); whether training had converged is unknown")
    if unknown:
        notes.append(f"{label}: convergence of {', '.join(unknown)} could not be judged (too few validations)")
    return warnings, notes


def domain_notes(label: str, names: Sequence[str], members: Sequence[Any]) -> list[str]:
    """One note per side whose members lack domain statistics."""
    missing = [n for n, m in zip(names, members) if domain_record(m) is None]
    if not missing:
        return []
    where = ", ".join(missing) if len(missing) < len(names) or len(names) > 1 else "it"
    return [f"{label} ({where}) trained before domain statistics were recorded, so sets are not checked against "
            f"its training domain; run {RECORD_HINT} to add them"]


#: preprocessing keys that say what kind of data the models were trained on (beyond the model-space keys)
RECIPE_KEYS = ("input_kind", "name", "units", "input_zero_point", "sky", "cutout")


def recipe_warnings(obs_prep: dict, arch_prep: dict) -> list[str]:
    """Warn when p_obs and p_arch were trained on data of different input kinds or recipes.

    The model-space keys are refused already (``preprocess.check_compatible``); here the input
    side: ``input_kind`` (missing or null on either side = unknown, not a difference), the recipe
    name, units, input zero point, sky treatment and cutout size (a key missing on either side:
    unknown).
    """
    obs_prep, arch_prep = dict(obs_prep or {}), dict(arch_prep or {})
    diffs = []
    for k in RECIPE_KEYS:
        a, b = obs_prep.get(k), arch_prep.get(k)
        if k == "input_kind" and (a is None or b is None):
            continue
        if k not in obs_prep or k not in arch_prep:  # an older model.json without the key: unknown, not a difference
            continue
        if a != b:
            diffs.append(f"{k}: {a!r} vs {b!r}")
    if not diffs:
        return []
    return [f"p_obs and p_arch were trained on data of different input kinds or recipes ({'; '.join(diffs)}); an "
            "LLR of two models of differently made data measures the recipes, not the galaxies - prepare both "
            "training sets with one recipe (`morphllr prepare --like`)"]


def _validation_history(conv: dict | None) -> list[list[float]] | None:
    """The recorded ``[step, val bits/dim]`` pairs of a model's training (finite ones, step order), or None."""
    history = (conv or {}).get("history")
    if not isinstance(history, list):
        return None
    rows = []
    for point in history:
        try:
            step, bpd = int(point[0]), float(point[1])
        except (TypeError, ValueError, IndexError):
            continue
        if math.isfinite(bpd):
            rows.append([step, bpd])
    return sorted(rows) or None


def provenance(label: str, names: Sequence[str], members: Sequence[Any], paths: Sequence[str]) -> dict:
    """What a side's models were trained on, for the report and summary.json.

    Per member: ``name``, ``path``, ``data`` (training file name), ``n_images`` (= ``train_images`` +
    ``val_images``), ``steps``, ``best_step``, ``val_bits_per_dim`` (the kept weights'),
    ``train_bits_per_dim``, ``data_fingerprint`` (sha256 of the training pixels), ``preprocessing``,
    ``input_kind``, ``converged`` (None: not recorded), ``tail_improvement_bpd``, ``tolerance_bpd``,
    ``convergence_rule`` and ``convergence_tail`` (the last share of the steps the rule of
    :mod:`morphllr.train.convergence` judges), ``val_history`` (the ``[step, val bits/dim]`` pairs of every
    validation, or None when not recorded) and ``domain_recorded``; every missing field is None.
    """
    rows = []
    for name, m, path in zip(names, members, paths):
        mt = member_meta(m)
        metrics = mt.get("metrics") or {}
        training = (mt.get("extra") or {}).get("training") or {}
        conv = metrics.get("convergence") if isinstance(metrics.get("convergence"), dict) else None
        n_images = None
        if isinstance(metrics.get("train_images"), int):
            n_images = int(metrics["train_images"]) + int(metrics.get("val_images") or 0)
        rows.append({"name": name, "path": path, "data": training.get("data"), "n_images": n_images,
                     "train_images": metrics.get("train_images"), "val_images": metrics.get("val_images"),
                     "steps": metrics.get("steps"), "val_bits_per_dim": metrics.get("val_bits_per_dim"),
                     "data_fingerprint": mt.get("data_fingerprint"),
                     "preprocessing": (mt.get("preprocessing") or {}).get("name"),
                     "input_kind": (mt.get("preprocessing") or {}).get("input_kind"),
                     "converged": None if conv is None else conv.get("converged"),
                     "best_step": metrics.get("best_step"), "train_bits_per_dim": metrics.get("train_bits_per_dim"),
                     "tail_improvement_bpd": (conv or {}).get("tail_improvement_bpd"),
                     "tolerance_bpd": (conv or {}).get("tolerance_bpd"), "convergence_rule": (conv or {}).get("rule"),
                     "convergence_tail": (conv or {}).get("tail"),
                     "val_history": _validation_history(conv),
                     "domain_recorded": domain_record(m) is not None})
    return {"label": label, "members": rows}


def small_sample_warning(name: str, n: int) -> list[str]:
    """The n < MIN_RELIABLE_N warning."""
    if n >= MIN_RELIABLE_N:
        return []
    return [f"{name}: only {n} images (< {MIN_RELIABLE_N}); its bootstrap intervals, AUROC, KS and outlier share are "
            "unreliable - score a larger set before quoting them"]


def reference_warning(name: str, mean_llr: float) -> list[str]:
    """The reference's mean LLR <= 0 warning."""
    if not (mean_llr <= 0):
        return []
    return [f"{name} (the reference): mean LLR {mean_llr:.4g} <= 0, so p_obs does not prefer the observations it "
            "should describe over p_arch; these images are probably not what p_obs was trained on (another survey, "
            "recipe or sky) and the ranking is meaningless"]
