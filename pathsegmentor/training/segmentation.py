"""Text-prompted segmentation training: the objective that fine-tunes or pre-trains PathSegmentor.

    pathsegmentor train --config configs/train/tiny-cpu.yaml [key=value ...]
    torchrun --nproc_per_node 2 -m pathsegmentor.training --config ...
    accelerate launch -m pathsegmentor.training --config ...      # multi-GPU / multi-node (DDP, FSDP, DeepSpeed)

Prompted crops of a PathSeg corpus (:mod:`~pathsegmentor.training.data`), optionally with a frozen
encoder's embeddings cached (:mod:`~pathsegmentor.training.embedding_cache`); Dice + BCE + presence
loss (:mod:`~pathsegmentor.training.losses`; CellSAM's fused mode supervises every branch). The loop
is :func:`pathsegmentor.training.trainer.fit`.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..modeling.config import ConfigError
from .data import DataConfig
from .losses import GRIDS, LossConfig
from .recipe import LoopConfig, ModelSection, OptimConfig, load_recipe, resolve_data_path
from .trainer import add_arguments  # noqa: F401 - with run(): what `pathsegmentor train` calls
from .trainer import Objective, TrainingSetup, fit, training_command

PARTS = ("image_encoder", "text_encoder", "prompt_adapter", "mask_decoder", "prompt_encoder")


@dataclass
class FreezeConfig:
    image_encoder: bool = False
    text_encoder: bool = True
    prompt_adapter: bool = False
    mask_decoder: bool = False
    prompt_encoder: bool = True  # point/box embeddings: unused by text-only training
    # submodules of the image encoder kept frozen while the rest trains (e.g. a CNN's stem and first stage)
    image_encoder_modules: list[str] = field(default_factory=list)
    # when set, only these submodules of the model train (e.g. [mask_decoder.pixel_decoder]); everything else is
    # frozen whatever the switches above say
    train_only: list[str] = field(default_factory=list)
    # frozen submodules run in eval mode: their BatchNorm statistics stay as loaded instead of being re-estimated
    frozen_eval: bool = False


@dataclass
class CacheConfig:
    """Embedding-cache mode: with a frozen image encoder, ``views`` augmented views per training
    image are encoded once and stored on disk; only adapter + decoder train."""

    enabled: bool = False
    views: int = 4
    dir: str = ""  # default: <output_dir>/embedding_cache


@dataclass
class TrainConfig:
    output_dir: str = "runs/default"
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply ``key.sub=value`` overrides; unknown keys raise ConfigError."""
    cfg, recipe_dir = load_recipe(TrainConfig, path, overrides)
    cfg.data.corpus = resolve_data_path(cfg.data.corpus, recipe_dir)
    if cfg.model.init_from.startswith((".", "/")) or "/" in cfg.model.init_from:  # a path, not a registered name
        cfg.model.init_from = resolve_data_path(cfg.model.init_from, recipe_dir)
    if cfg.loss.grid not in GRIDS:
        raise ConfigError(f"loss.grid '{cfg.loss.grid}' unknown. Available: {list(GRIDS)} (set it in the recipe's "
                          "loss section or pass loss.grid=decoder)")
    if not cfg.loss.interior_weight >= 0:
        raise ConfigError(f"loss.interior_weight is {cfg.loss.interior_weight}; it must be >= 0 (0: every mask pixel "
                          "weighs alike; e.g. 2: an object's centre weighs 3x its edge). Fix the recipe's loss section.")
    return cfg


def build_model_for_training(cfg: TrainConfig):
    from ..modeling.factory import create_model, from_pretrained
    from ..modeling.weights import load_sam_checkpoint

    m = cfg.model
    if Path(m.name).is_dir():
        model = from_pretrained(m.name, overrides=m.overrides or None)
    else:
        model = create_model(m.name, overrides=m.overrides or None)
    if m.init_from:
        src = Path(m.init_from)
        if src.suffix in (".pth", ".pt"):
            load_sam_checkpoint(model, src)
        else:
            init = from_pretrained(m.init_from)
            model.load_state_dict(init.state_dict(), strict=False)
    for part in PARTS:
        if getattr(cfg.freeze, part):
            for p in getattr(model, part).parameters():
                p.requires_grad_(False)
    if cfg.freeze.text_encoder:
        model.text_encoder.freeze()
    for sub in _submodules(model.image_encoder, cfg.freeze.image_encoder_modules,
                           "freeze.image_encoder_modules", "the image encoder"):
        for p in sub.parameters():
            p.requires_grad_(False)
    if cfg.freeze.train_only:  # every parameter outside the named submodules frozen
        kept = {id(p) for sub in _submodules(model, cfg.freeze.train_only, "freeze.train_only", "the model")
                for p in sub.parameters()}
        for p in model.parameters():
            if id(p) not in kept:
                p.requires_grad_(False)
    return model


def _submodules(root, wanted: Sequence[str], key: str, what: str) -> list:
    """The submodules of ``root`` named (dotted) in ``wanted``; a name it lacks is a ConfigError naming ``key``."""
    names = dict(root.named_modules())
    for sub in wanted:
        if sub not in names or not sub:
            top = sorted(n for n in names if n and n.count(".") <= 1)
            raise ConfigError(f"{key}: {what} has no submodule '{sub}'. Some of its submodules: {top[:30]}")
    return [names[sub] for sub in wanted]


def frozen_to_eval(model) -> list[str]:
    """Put every submodule that has parameters, all of them frozen, in eval mode (the outermost such module, not
    its children again); returns their names. Run after ``model.train()``."""
    done: list[str] = []
    for name, mod in model.named_modules():
        if not name or any(name.startswith(d + ".") for d in done):
            continue
        params = list(mod.parameters())
        if params and not any(p.requires_grad for p in params):
            mod.eval()
            done.append(name)
    return done


def param_groups(model, cfg: OptimConfig) -> list[dict[str, Any]]:
    groups = []
    for part in PARTS:
        params = [p for p in getattr(model, part).parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": cfg.lr * cfg.lr_scale.get(part, 1.0), "name": part})
    # parts a model adds beyond the standard five (e.g. CellSAM's mask fusion gate) train at the base lr
    seen = {id(p) for g in groups for p in g["params"]}
    seen |= {id(p) for part in PARTS for p in getattr(model, part).parameters()}
    extra = [p for p in model.parameters() if p.requires_grad and id(p) not in seen]
    if extra:
        groups.append({"params": extra, "lr": cfg.lr * cfg.lr_scale.get("other", 1.0), "name": "other"})
    unknown = sorted(set(cfg.lr_scale) - set(PARTS) - {"other"})
    if unknown:
        raise ConfigError(f"optim.lr_scale has unknown part(s) {unknown}. Valid: {list(PARTS)}")
    if not groups:
        raise ConfigError("every part is frozen: nothing to train (check the `freeze` section)")
    return groups


def open_corpus(cfg: TrainConfig, splits: Sequence[str]):
    from data_builders import load_pathseg

    if not cfg.data.corpus:
        raise ConfigError("data.corpus is not set: point it at a PathSeg corpus built by pathseg-build")
    corpus_dir = Path(cfg.data.corpus)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"Corpus directory not found: '{corpus_dir}'. Build it with "
                                f"`pathseg-build --config configs/data/shared.yaml --out {corpus_dir}`.")
    corpus = load_pathseg(corpus_dir)
    for s in splits:
        if s not in corpus.images:
            raise ConfigError(f"Corpus '{corpus_dir}' has no split '{s}'. Available: {sorted(corpus.images)}")
    return corpus


class SegmentationObjective(Objective):
    """Prompted crops -> ``model(pixels, prompts)`` -> segmentation loss; the whole model is prepared."""

    name = "train"

    def setup(self, accelerator) -> TrainingSetup:
        import numpy as np

        from .data import PromptedCrops, collate, load_synonyms, sampling_weights

        cfg = self.cfg
        corpus = open_corpus(cfg, [cfg.data.train_split])
        model = build_model_for_training(cfg)
        if cfg.cache.enabled and not cfg.freeze.image_encoder:
            raise ConfigError("cache.enabled needs freeze.image_encoder: true (cached embeddings come from a frozen "
                              "encoder)")
        pp = model.config.preprocess
        if pp.fixed_input and cfg.data.crop != pp.input_size:
            raise ConfigError(f"model '{cfg.model.name}' takes fixed {pp.input_size}x{pp.input_size} inputs (ViT "
                              f"position embeddings); set data.crop={pp.input_size} (got {cfg.data.crop})")
        synonyms = load_synonyms(cfg.data.corpus)
        if cfg.data.separation and not getattr(model, "has_separation", False):
            raise ConfigError("data.separation needs a model with a separation head: set "
                              "model.overrides.mask_decoder.separation_channels=3 (or a model config that has one)")
        try:
            ds = PromptedCrops(corpus, cfg.data.train_split, cfg.data, model_mpp=pp.mpp, seed=cfg.train.seed,
                               synonyms=synonyms, structure_mpp=pp.structure_mpp,
                               separation_channels=model.config.mask_decoder.separation_channels or 3)
            weights = sampling_weights(corpus, cfg.data.train_split, cfg.data.balance, cfg.data.sources,
                                       cfg.data.source_weights)
        except ValueError as e:  # a bad data.balance / sources / source_weights / pigment / geometric kind: named
            raise ConfigError(str(e)) from None
        self.cache_build_s = 0.0
        if cfg.cache.enabled:
            from .embedding_cache import CachedViews, build_embedding_cache

            cache_dir = Path(cfg.cache.dir or Path(cfg.output_dir) / "embedding_cache")
            t_cache = time.time()
            if accelerator.is_main_process:
                build_embedding_cache(model, ds, weights, cache_dir, views=cfg.cache.views)
            accelerator.wait_for_everyone()
            self.cache_build_s = time.time() - t_cache
            ds = CachedViews(cache_dir, ds)
            weights = ds.view_weights(weights)  # each image's views share its sampling weight (source balance kept)
        model.train()
        if cfg.freeze.frozen_eval:
            frozen_to_eval(model)
        self.model = model
        return TrainingSetup(module=model, dataset=ds, weights=weights, collate=collate,
                             param_groups=param_groups(model, cfg.optim))

    def loss(self, module, batch: dict[str, Any], device) -> dict[str, Any]:
        from .embedding_cache import features_from_batch
        from .losses import (area_resize, fused_segmentation_loss, interior_weights, segmentation_loss, separation_loss,
                             to_grid)

        pixels = self.model.normalize(batch["pixels"].to(device))
        feats = features_from_batch(batch)
        if feats is not None:
            feats = feats.to(device)
        extra = {}
        if "boxes" in batch:  # geometric prompts (data.geometric_per_image > 0)
            extra.update(boxes=batch["boxes"].to(device), points=batch["points"].to(device))
        if "sep_target" in batch:  # separation-map targets (data.separation)
            extra["separation"] = batch["sep_valid"].to(device)  # the head runs only where there are instances
        on_grid = self.cfg.loss.grid == "decoder"
        outp = module(pixels, batch["prompts"], features=feats, full_resolution=not on_grid, **extra)
        target, valid, presence = (batch[k].to(device) for k in ("target", "valid", "presence"))
        sep_target = batch["sep_target"].to(device) if "sep_target" in batch else None
        sep_valid = batch["sep_valid"].to(device) if sep_target is not None else None
        if on_grid:  # targets to the decoder's grid instead of logits to the crop
            size = tuple(outp.mask_logits.shape[-2:])
            if sep_target is not None:
                sep_target = area_resize(sep_target, size)
            target, valid = to_grid(target, valid, size)
        weight = None
        if self.cfg.loss.interior_weight and sep_target is not None:  # object interiors weigh more (LossConfig)
            weight = interior_weights(sep_target[:, :, 2], sep_valid, self.cfg.loss.interior_weight)
        if getattr(outp, "branches", None):  # CellSAM fused mode: deep supervision of every branch
            return fused_segmentation_loss(outp, target, valid, presence, self.cfg.loss, pixel_weight=weight)
        out = segmentation_loss(outp.mask_logits, outp.presence_logits, target, valid, presence, self.cfg.loss,
                                pixel_weight=weight)
        if sep_target is not None and self.cfg.loss.separation:
            out["separation"] = separation_loss(outp.separation, sep_target, sep_valid, target, valid)
            out["loss"] = out["loss"] + self.cfg.loss.separation * out["separation"]
        return out

    def final_model(self):
        return self.model

    def summary(self, accelerator) -> dict[str, Any]:
        return {"cache_build_s": round(self.cache_build_s, 2)}


def run_training(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns the summary of :func:`~pathsegmentor.training.trainer.fit` (steps,
    first/last loss, processes, parameter checksums, output paths) plus ``cache_build_s``."""
    return fit(SegmentationObjective(cfg), resume=resume)


run, main = training_command("pathsegmentor train", __doc__, load_train_config, run_training)

if __name__ == "__main__":
    sys.exit(main())
