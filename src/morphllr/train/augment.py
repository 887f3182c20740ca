"""Training-image augmentation: random rotations and flips of a batch.

Zanisi et al. 2021 rotate the training galaxies by random angles in 0-180 deg: ``rot``
rotates continuous-head images by a uniform random angle with bicubic interpolation and
reflected edges (sky noise continues past the border instead of a constant-filled
corner), while for the discretized head only the lossless multiples of 90 deg are used
so pixel values stay integers; ``flip`` mirrors half the images left-right.  The
comparison's rotation test uses the same rotations (:func:`rotate_continuous`,
:func:`rotate_lossless`) so it probes what the models saw.
"""

from __future__ import annotations

from typing import Sequence

import torch

from morphllr.errors import MorphllrError


AUGMENTATIONS = ("rot", "flip")


def parse_augment(text: str | Sequence[str] | None) -> tuple[str, ...]:
    """Parse ``"rot,flip"`` (or a list; "none" or "" for no augmentation).

    Args:
        text: comma-separated names.

    Returns:
        tuple of names from :data:`AUGMENTATIONS`.
    """
    if text is None:
        return ()
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(i.strip().lower() for i in items if i.strip() and i.strip().lower() != "none"))
    unknown = [n for n in names if n not in AUGMENTATIONS]
    if unknown:
        raise MorphllrError(f"--augment: unknown augmentation {', '.join(unknown)}; "
                            f"use a comma list of {', '.join(AUGMENTATIONS)} or none")
    return names


def rotate_continuous(x: torch.Tensor, angles_deg: torch.Tensor) -> torch.Tensor:
    """Rotate each image by its angle about the image centre (bicubic, reflected edges).

    Args:
        x: (B, C, H, W) float images.
        angles_deg: (B,) counter-clockwise angles in degrees.

    Returns:
        rotated images, same shape.
    """
    import torch.nn.functional as F

    b, _, h, w = x.shape
    theta = torch.deg2rad(angles_deg.to(torch.float32))
    cos, sin = torch.cos(theta), torch.sin(theta)
    # affine_grid works in [-1, 1] coordinates per axis; the aspect factors keep a
    # rotation of a non-square image a rotation (not a shear) in pixel space.
    mat = torch.zeros(b, 2, 3, dtype=torch.float32, device=x.device)
    mat[:, 0, 0], mat[:, 0, 1] = cos, -sin * h / w
    mat[:, 1, 0], mat[:, 1, 1] = sin * w / h, cos
    grid = F.affine_grid(mat, (b, x.shape[1], h, w), align_corners=False)
    return F.grid_sample(x.float(), grid, mode="bicubic", padding_mode="reflection", align_corners=False).to(x.dtype)


def rotate_lossless(x: torch.Tensor, quarter_turns: torch.Tensor) -> torch.Tensor:
    """Rotate each image by a multiple of 90 deg (exact; non-square images only by 0/180 deg).

    Args:
        x: (B, C, H, W) images.
        quarter_turns: (B,) integers 0..3.

    Returns:
        rotated images, same shape.
    """
    square = x.shape[-1] == x.shape[-2]
    out = x.clone()
    for k in range(1, 4):
        if not square and k % 2:
            continue
        pick = quarter_turns == k
        if pick.any():
            out[pick] = torch.rot90(x[pick], k, dims=(-2, -1))
    return out


def augment_batch(x: torch.Tensor, names: Sequence[str], discrete: bool,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Apply the chosen random augmentations to a training batch.

    Args:
        x: (B, C, H, W).
        names: subset of :data:`AUGMENTATIONS`.
        discrete: the head needs integer pixels (only lossless transforms then).
        generator: random generator (None: torch's global one).

    Returns:
        augmented batch.
    """
    b = x.shape[0]
    if "rot" in names:
        if discrete:
            x = rotate_lossless(x, torch.randint(0, 4, (b,), generator=generator).to(x.device))
        else:
            x = rotate_continuous(x, torch.rand(b, generator=generator).to(x.device) * 180.0)
    if "flip" in names:
        flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return x
