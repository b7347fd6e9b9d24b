"""CellSAM (Ma et al. 2024): asymmetric dual image encoders, feature distillation, aggregation, mask fusion.

Data flow (file names in order): ``dual_encoder`` (frozen SAM ViT teacher + light timm student) ->
``aggregation`` (teacher and student embeddings fused for the decoder) -> the shared PathSegmentor
decoder, once per branch -> ``fusion`` (per-pixel learned gate or plain average over the branches'
masks) -> ``model`` (:class:`CellSAM`, deployment ``mode`` student / teacher / fused). ``distill``
trains the student to reproduce the teacher's embedding; ``metrics`` reports the paper's pixel
accuracy / recall / precision beside Dice.

Nothing heavy is imported here; the submodules import torch, timm and segment_anything.
"""
from __future__ import annotations

MODES = ("student", "teacher", "fused")
BRANCHES = ("teacher", "student", "aggregated")
