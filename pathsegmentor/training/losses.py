"""Segmentation and presence losses (Dice + BCE/focal on valid pixels, presence BCE), and the deep-supervised
loss of CellSAM's fused mode."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class LossConfig:
    dice: float = 1.0
    bce: float = 1.0
    focal: float = 0.0
    focal_gamma: float = 2.0
    presence: float = 0.5
    separation: float = 0.0  # weight of the separation-map loss (models with a separation head)
    # where masks are compared with their targets: "input" (logits upsampled to the crop) or "decoder" (targets
    # area-averaged to the decoder's grid, stride 2 in dense mode: a quarter of the pixels, no upsampling)
    grid: str = "input"
    # extra weight of object interiors in the mask's BCE/focal, on rows with instance targets: a pixel weighs
    # 1 + interior_weight * d, d the target's border distance in [0, 1] (0 at an object's edge, 1 at its centre), so a
    # wholly missed nucleus costs more than the ambiguous ring at the border of a found one (0: every pixel alike)
    interior_weight: float = 0.0


GRIDS = ("input", "decoder")


def area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[..., H, W]`` area-averaged to ``[..., *size]`` (float)."""
    return F.interpolate(x.reshape(-1, 1, *x.shape[-2:]).float(), size=size, mode="area").reshape(*x.shape[:-2], *size)


def to_grid(target: torch.Tensor, valid: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Targets ``[..., H, W]`` area-averaged (soft) and valid masks min-pooled (a grid cell is valid only where all
    its pixels are) to ``size``."""
    return area_resize(target, size), area_resize(valid, size) > 0.999


def soft_dice_loss(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """``1 - Dice`` per row over valid pixels; ``[M, H, W]`` -> ``[M]``."""
    p = torch.sigmoid(logits) * valid
    t = target * valid
    inter = (p * t).flatten(1).sum(1)
    denom = p.flatten(1).sum(1) + t.flatten(1).sum(1)
    return 1.0 - (2.0 * inter + eps) / (denom + eps)


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float) -> torch.Tensor:
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = torch.exp(-bce)
    return (1 - p_t) ** gamma * bce


def interior_weights(distance: torch.Tensor, rows: torch.Tensor, weight: float) -> torch.Tensor:
    """Per-pixel weights ``[B, P, H, W]`` of the mask loss (``LossConfig.interior_weight``): ``1 + weight * d`` on
    the ``rows`` (``bool [B, P]``) with instance targets, ``d`` their border distance ``[B, P, H, W]`` in [0, 1];
    1 everywhere else."""
    return 1.0 + weight * distance.clamp(0, 1) * rows[..., None, None].to(distance.dtype)


def segmentation_loss(mask_logits: torch.Tensor, presence_logits: torch.Tensor, target: torch.Tensor,
                      valid: torch.Tensor, presence: torch.Tensor, cfg: LossConfig,
                      pixel_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Dice + BCE (or focal) on masks, BCE on presence.

    Args:
        mask_logits / target / valid: ``[B, P, H, W]`` (target 0/1, valid bool).
        presence_logits / presence: ``[B, P]`` (presence 0/1).
        pixel_weight: ``[B, P, H, W]`` weights of the BCE/focal pixels (:func:`interior_weights`; None: all 1);
            the weighted mean divides by the weights' sum, so the loss keeps its scale.

    Dice is averaged over prompts whose target is non-empty (Dice of an empty target is undefined);
    BCE/focal over every valid pixel of every prompt, so negatives learn empty masks.
    """
    ml = mask_logits.flatten(0, 1)
    t = target.flatten(0, 1)
    v = valid.flatten(0, 1).to(ml.dtype)
    wv = v if pixel_weight is None else v * pixel_weight.flatten(0, 1).to(ml.dtype)  # BCE/focal weights
    out: dict[str, torch.Tensor] = {}
    total = ml.new_zeros(())
    if cfg.dice:
        has = t.flatten(1).amax(1) > 0
        d = soft_dice_loss(ml, t, v)
        out["dice"] = (d * has).sum() / has.sum().clamp(min=1)
        total = total + cfg.dice * out["dice"]
    if cfg.bce:
        pix = F.binary_cross_entropy_with_logits(ml, t, reduction="none")
        out["bce"] = (pix * wv).sum() / wv.sum().clamp(min=1)
        total = total + cfg.bce * out["bce"]
    if cfg.focal:
        pix = focal_loss(ml, t, cfg.focal_gamma)
        out["focal"] = (pix * wv).sum() / wv.sum().clamp(min=1)
        total = total + cfg.focal * out["focal"]
    if cfg.presence:
        out["presence"] = F.binary_cross_entropy_with_logits(presence_logits.flatten(), presence.flatten())
        total = total + cfg.presence * out["presence"]
    out["loss"] = total
    return out


def separation_loss(raw: torch.Tensor | None, target: torch.Tensor, rows: torch.Tensor,
                    objects: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Loss of the separation maps on the rows that have instance ground truth.

    Args:
        raw: ``[B, P, 3, H, W]`` raw head outputs; target: ``[B, P, 3, H, W]``
            (:func:`pathsegmentor.inference.separation.separation_targets`).
        rows: ``bool [B, P]`` rows with instance ground truth; objects: ``[B, P, H, W]`` their object masks;
        valid: ``bool [B, P, H, W]``.
    Centre offsets (``tanh``): mean squared error on object pixels plus the same on their spatial
    gradients (HoVer-Net's MSGE: the gradient is what cuts touching objects); border distance
    (``sigmoid``): mean squared error on all valid pixels; thick-border class (4th channel, where present):
    BCE + soft Dice on all valid pixels. Zero when no row has instances.
    """
    if raw is None or not bool(rows.any()):  # no row of this batch has instances: the head was not run
        return target.new_zeros(())
    r, t = raw[rows], target[rows]
    obj = (objects[rows] > 0) & valid[rows]
    v = valid[rows].to(r.dtype)
    o = obj.to(r.dtype)[:, None]
    hv = torch.tanh(r[:, :2])
    mse_hv = ((hv - t[:, :2]) ** 2 * o).sum() / (2 * o.sum()).clamp(min=1)

    def grads(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[..., :, 1:] - x[..., :, :-1], x[..., 1:, :] - x[..., :-1, :]

    gx_p, _ = grads(hv[:, :1])
    _, gy_p = grads(hv[:, 1:2])
    gx_t, _ = grads(t[:, :1])
    _, gy_t = grads(t[:, 1:2])
    ox, oy = o[..., :, 1:] * o[..., :, :-1], o[..., 1:, :] * o[..., :-1, :]
    msge = (((gx_p - gx_t) ** 2 * ox).sum() / ox.sum().clamp(min=1)
            + ((gy_p - gy_t) ** 2 * oy).sum() / oy.sum().clamp(min=1))
    dist = torch.sigmoid(r[:, 2])
    mse_d = ((dist - t[:, 2]) ** 2 * v).sum() / v.sum().clamp(min=1)
    total = mse_hv + msge + mse_d
    if r.shape[1] > 3 and t.shape[1] > 3:
        bce = F.binary_cross_entropy_with_logits(r[:, 3], t[:, 3], reduction="none")
        total = total + (bce * v).sum() / v.sum().clamp(min=1) + soft_dice_loss(r[:, 3], t[:, 3], v).mean()
    return total


def fused_segmentation_loss(output, target: torch.Tensor, valid: torch.Tensor, presence: torch.Tensor, cfg,
                            branch_weight: float = 0.5,
                            pixel_weight: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Segmentation loss of a fused-mode :class:`~pathsegmentor.cellsam.model.CellSAMOutput`: the
    fused masks' loss plus ``branch_weight`` times the mean of the branches' losses (deep supervision,
    so each deployment mode's masks stay good on their own). ``cfg``: a
    :class:`~pathsegmentor.training.losses.LossConfig`; ``pixel_weight``: as :func:`segmentation_loss`'s, for the fused
    masks and every branch. Returns the fused terms, ``branch_<name>`` totals and ``loss``."""
    out = segmentation_loss(output.mask_logits, output.presence_logits, target, valid, presence, cfg, pixel_weight)
    branches = getattr(output, "branches", {}) or {}
    if branches and branch_weight:
        per = {k: segmentation_loss(b.mask_logits, b.presence_logits, target, valid, presence, cfg,
                                   pixel_weight)["loss"]
               for k, b in branches.items()}
        for k, v in per.items():
            out[f"branch_{k}"] = v
        out["loss"] = out["loss"] + branch_weight * torch.stack(list(per.values())).mean()
    return out
