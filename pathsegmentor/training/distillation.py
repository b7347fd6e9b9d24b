"""CellSAM feature distillation, an objective of the one trainer: the light student learns to
reproduce the frozen teacher's embedding.

    pathsegmentor distill --config configs/train/distill-test.yaml [key=value ...]
    accelerate launch -m pathsegmentor.training.distillation --config ...       # multi-GPU / multi-node

Tiles come from :mod:`~pathsegmentor.training.distill_tiles` (image folders with their µm/px, or a
PathSeg corpus split; whole images held out for validation). The loss on the 256-channel embedding
map is ``mse * MSE + cosine * (1 - cos)`` (cosine over channels, averaged over positions). Teacher
embeddings are cached on disk (:mod:`~pathsegmentor.training.teacher_cache`), so the teacher runs once
per tile. Only the student is prepared and trained by :func:`pathsegmentor.training.trainer.fit`; at
the end the whole CellSAM model (teacher, distilled student, untouched decoder) is written with
``save_pretrained`` to ``<output_dir>/model``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from torch import nn

from ..modeling.config import ConfigError
from .distill_tiles import DistillData, TileDataset, collate_tiles, list_corpus_images, list_images, split_tiles
from .recipe import LoopConfig, ModelSection, OptimConfig, load_recipe, resolve_data_path
from .teacher_cache import TeacherCache, teacher_fingerprint
from .trainer import add_arguments  # noqa: F401 - with run(): what `pathsegmentor distill` calls
from .trainer import Objective, TrainingSetup, fit, training_command


@dataclass
class DistillLoss:
    mse: float = 1.0
    cosine: float = 1.0


@dataclass
class TeacherCacheConfig:
    """``dir`` default ``<output_dir>/teacher_cache``; ``dtype`` float32 or float16 (half the disk)."""

    enabled: bool = True
    dir: str = ""
    dtype: str = "float32"


@dataclass
class DistillConfig:
    output_dir: str = "runs/distill"
    model: ModelSection = field(default_factory=lambda: ModelSection(name="cellsam-test"))
    data: DistillData = field(default_factory=DistillData)
    loss: DistillLoss = field(default_factory=DistillLoss)
    cache: TeacherCacheConfig = field(default_factory=TeacherCacheConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)


def load_distill_config(path: str | Path | None, overrides: Sequence[str] = ()) -> DistillConfig:
    """Read a recipe and apply ``key.sub=value`` overrides; unknown keys raise ConfigError. Relative
    folder/corpus paths that do not exist from the working directory are taken relative to the recipe."""
    cfg, recipe_dir = load_recipe(DistillConfig, path, overrides)
    folders = []
    for i, f in enumerate(cfg.data.folders):
        if not isinstance(f, dict) or "path" not in f:
            raise ConfigError(f"data.folders[{i}] must be a mapping with 'path' (and optional 'mpp', 'pattern'), "
                              f"got {f!r}")
        unknown = sorted(set(f) - {"path", "mpp", "pattern"})
        if unknown:
            raise ConfigError(f"data.folders[{i}]: unknown key(s) {unknown}. Valid keys: ['mpp', 'path', 'pattern']")
        folders.append({**f, "path": resolve_data_path(f["path"], recipe_dir)})
    cfg.data.folders = folders
    cfg.data.corpus = resolve_data_path(cfg.data.corpus, recipe_dir)
    return cfg


def distillation_loss(student, teacher, cfg: DistillLoss | None = None) -> dict[str, Any]:
    """``student``/``teacher`` ``[B, C, h, w]``. Returns ``mse`` (mean squared error over the map),
    ``cosine`` (mean over positions of 1 - channel cosine similarity) and the weighted ``loss``."""
    import torch.nn.functional as F

    cfg = cfg or DistillLoss()
    mse = F.mse_loss(student, teacher)
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6).mean()
    return {"mse": mse, "cosine": cos, "loss": cfg.mse * mse + cfg.cosine * cos}


class StudentModule(nn.Module):
    """The CellSAM student alone (what distillation trains and prepares): pixels -> embedding."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, pixels):
        return self.student.forward_features(pixels).embedding


def build_distill_model(cfg: DistillConfig):
    """The CellSAM model to distil: a registered name or model dir, optionally initialised from an
    official SAM ``.pth`` (teacher + SAM decoder) or from another model dir."""
    from ..modeling.factory import create_model, from_pretrained
    from ..modeling.weights import load_sam_checkpoint
    from ..cellsam.model import CellSAM

    m = cfg.model
    model = from_pretrained(m.name, overrides=m.overrides or None) if Path(m.name).is_dir() else \
        create_model(m.name, overrides=m.overrides or None)
    if not isinstance(model, CellSAM):
        raise ConfigError(f"model.name '{m.name}' is not a CellSAM model (image_encoder.type 'dual'); distillation "
                          f"needs a teacher and a student. CellSAM variants: cellsam-test, cellsam-vit-b.")
    if m.init_from:
        src = Path(m.init_from).expanduser()
        if src.suffix in (".pth", ".pt"):
            load_sam_checkpoint(model, src)
        else:
            model.load_state_dict(from_pretrained(str(src)).state_dict(), strict=False)
    return model


def evaluate_distillation(model, ds: TileDataset, cache: TeacherCache, *, batch_size: int = 8,
                          loss_cfg: DistillLoss | None = None) -> dict[str, float]:
    """Mean embedding cosine similarity (per position, over channels), MSE and loss of the student vs
    the teacher on the tiles of ``ds`` (student in eval mode)."""
    import torch
    import torch.nn.functional as F

    enc = model.image_encoder
    was_training = enc.student.training
    enc.student.eval()
    sums = {"cosine_similarity": 0.0, "mse": 0.0, "loss": 0.0}
    n = 0
    with torch.no_grad():
        for start in range(0, len(ds), batch_size):
            items = collate_tiles([ds[i] for i in range(start, min(len(ds), start + batch_size))])
            pixels = model.normalize(items["pixels"].to(model.device))
            t = cache.embeddings(items["key"], pixels, enc.encode_teacher)
            s = enc.student.forward_features(pixels).embedding
            b = pixels.shape[0]
            sums["cosine_similarity"] += float(F.cosine_similarity(s, t, dim=1).mean()) * b
            losses = distillation_loss(s, t, loss_cfg)
            sums["mse"] += float(losses["mse"]) * b
            sums["loss"] += float(losses["loss"]) * b
            n += b
    enc.student.train(was_training)
    return {k: v / max(n, 1) for k, v in sums.items()} | {"tiles": n}


class DistillationObjective(Objective):
    """Tiles -> student embedding vs the (cached) teacher embedding; only the student is prepared."""

    name = "distill"

    def setup(self, accelerator) -> TrainingSetup:
        import numpy as np

        cfg = self.cfg
        if not cfg.data.folders and not cfg.data.corpus:
            raise ConfigError("no tiles: set data.folders (image folders with their mpp) or data.corpus")
        model = build_distill_model(cfg).to(accelerator.device).eval()
        size = model.config.preprocess.input_size
        crop = cfg.data.crop or size
        if crop != size:
            raise ConfigError(f"data.crop ({crop}) must equal the model's input size ({size}): the SAM teacher takes "
                              f"fixed {size}x{size} inputs. Change the crop, or build the model at the crop size "
                              f"with model.overrides: {{preprocess.input_size: {crop}}} (random or re-initialised "
                              f"teacher).")
        mpp = model.config.preprocess.mpp
        refs, corpus = (list_images(cfg.data, mpp), None) if cfg.data.folders else list_corpus_images(cfg.data, mpp)
        train_tiles, hold_tiles = split_tiles(refs, cfg.data, crop, cfg.train.seed)
        if not train_tiles:
            raise ConfigError("no training tiles (every image held out?): lower data.holdout or add images")
        self.model, self.refs, self.hold_tiles = model, refs, hold_tiles
        self.train_ds = TileDataset(refs, train_tiles, corpus, cfg.data.split)
        self.hold_ds = TileDataset(refs, hold_tiles, corpus, cfg.data.split)
        enc = model.image_encoder
        self.cache = TeacherCache((cfg.cache.dir or Path(cfg.output_dir) / "teacher_cache") if cfg.cache.enabled
                                  else None, teacher_fingerprint(enc.teacher, size), cfg.cache.dtype)
        student = StudentModule(enc.student)
        student.train()
        params = [p for p in student.parameters() if p.requires_grad]
        return TrainingSetup(module=student, dataset=self.train_ds, weights=np.full(len(self.train_ds),
                                                                                    1.0 / len(self.train_ds)),
                             collate=collate_tiles, param_groups=[{"params": params, "lr": cfg.optim.lr,
                                                                   "name": "student"}])

    def _evaluate(self) -> dict[str, float]:
        return evaluate_distillation(self.model, self.hold_ds, self.cache, batch_size=self.cfg.train.batch_size,
                                     loss_cfg=self.cfg.loss)

    def before_loop(self, accelerator, *, resumed: bool) -> None:
        self.before = None
        if accelerator.is_main_process and len(self.hold_ds) and not resumed:
            self.before = self._evaluate()

    def loss(self, module, batch: dict[str, Any], device) -> dict[str, Any]:
        pixels = self.model.normalize(batch["pixels"].to(device))
        target = self.cache.embeddings(batch["key"], pixels, self.model.image_encoder.encode_teacher)
        return distillation_loss(module(pixels), target, self.cfg.loss)

    def final_model(self):
        return self.model

    def summary(self, accelerator) -> dict[str, Any]:
        out: dict[str, Any] = {
            "train_tiles": len(self.train_ds), "holdout_tiles": len(self.hold_ds),
            "holdout_images": sorted({self.refs[t.image].name for t in self.hold_tiles}),
            "cache_hits": self.cache.hits, "cache_misses": self.cache.misses,
            "teacher_calls": self.cache.teacher_calls}
        if accelerator.is_main_process and len(self.hold_ds):
            out["holdout_before"] = self.before
            out["holdout_after"] = self._evaluate()
        return out


def run_distillation(cfg: DistillConfig, *, resume: bool = False) -> dict[str, Any]:
    """Distil per ``cfg``; returns the summary of :func:`~pathsegmentor.training.trainer.fit` plus tiles,
    held-out cosine similarity before and after, cache hits/misses and teacher calls."""
    return fit(DistillationObjective(cfg), resume=resume)


run, main = training_command("pathsegmentor distill", __doc__, load_distill_config, run_distillation)

if __name__ == "__main__":
    sys.exit(main())
