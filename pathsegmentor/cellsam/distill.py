"""CellSAM feature distillation: the light student learns to reproduce the frozen teacher's embedding.

    pathsegmentor distill --config configs/train/distill-test.yaml [key=value ...]
    accelerate launch -m pathsegmentor.cellsam.distill --config ...       # multi-GPU / multi-node

Unlabelled tiles come from image folders (each with its microns per pixel; images are rescaled to the
model's mpp and cut into a fixed grid of crops) or from a PathSeg corpus split. Whole images are held
out for validation. The loss on the 256-channel embedding map is ``mse * MSE + cosine * (1 - cos)``
(cosine over channels, averaged over positions). The teacher's embedding of every tile is cached on
disk (one safetensors file per tile, keyed by file + crop, under a folder named by the teacher's
weights), so the teacher runs once per tile, across steps and runs.

The loop follows :mod:`pathsegmentor.train` and reuses its pieces (recipe sections, LR schedule,
atomic ``save_state`` checkpoints, resume checks): ``set_seed``, one ``prepare``, ``accumulate``,
``clip_grad_norm_``, ``save_state`` + ``skip_first_batches`` for exact resume. Only the student is
prepared and trained; at the end the whole CellSAM model (teacher, distilled student, untouched
decoder) is written with ``save_pretrained`` to ``<output_dir>/model``.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import re
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from ..collectives import mean_across_ranks
from ..config import ConfigError, from_dict
from ..train import LoopConfig, ModelSection, OptimConfig

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class DistillData:
    """Where tiles come from. ``folders``: mappings ``{path, mpp, pattern}`` (``mpp`` 0: already at the
    model's mpp; ``pattern``: a glob, default every image file). ``corpus``/``split``: a PathSeg corpus.
    ``crop``: tile size (0: the model's input size, which a SAM teacher needs). ``stride``: grid step
    (0: ``crop``). ``holdout``: fraction of whole images (per folder) kept out of training for the
    validation figures. ``max_tiles``/``holdout_max_tiles``: subsample (0: all)."""

    folders: list[dict[str, Any]] = field(default_factory=list)
    corpus: str = ""
    split: str = "train"
    crop: int = 0
    stride: int = 0
    holdout: float = 0.1
    max_tiles: int = 0
    holdout_max_tiles: int = 0
    num_workers: int = 0


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
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Distillation config not found: '{path}'. See configs/train/distill-*.yaml.")
        data = yaml.safe_load(path.read_text()) or {}
        base = path.resolve().parent
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value (e.g. train.steps=100)")
        key, val = ov.split("=", 1)
        node = data
        for p in key.split(".")[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{ov}': '{p}' is not a section")
        node[key.split(".")[-1]] = yaml.safe_load(val)
    cfg = from_dict(DistillConfig, data, where=str(path or "overrides"))
    folders = []
    for i, f in enumerate(cfg.data.folders):
        if not isinstance(f, dict) or "path" not in f:
            raise ConfigError(f"data.folders[{i}] must be a mapping with 'path' (and optional 'mpp', 'pattern'), "
                              f"got {f!r}")
        unknown = sorted(set(f) - {"path", "mpp", "pattern"})
        if unknown:
            raise ConfigError(f"data.folders[{i}]: unknown key(s) {unknown}. Valid keys: ['mpp', 'path', 'pattern']")
        f = dict(f)
        if not Path(f["path"]).is_absolute() and not Path(f["path"]).exists():
            f["path"] = str((base / f["path"]).resolve())
        folders.append(f)
    cfg.data.folders = folders
    if cfg.data.corpus and not Path(cfg.data.corpus).is_absolute() and not Path(cfg.data.corpus).exists():
        cfg.data.corpus = str((base / cfg.data.corpus).resolve())
    return cfg


# ---------------------------------------------------------------------------------------------------
# tiles


@dataclass(frozen=True)
class Tile:
    """A crop of one image after rescaling: ``image`` (index into the image list), ``y0, x0``, size."""

    image: int
    y0: int
    x0: int
    size: int


@dataclass
class ImageRef:
    """One source image: a file (``path``) or a corpus sample (``corpus_index``); ``scale`` = its mpp /
    the model's mpp; ``key`` identifies its content (path, size, mtime) for the teacher cache."""

    name: str
    key: str
    scale: float
    group: str
    path: str = ""
    corpus_index: int = -1
    size_hw: tuple[int, int] = (0, 0)


def _grid(n: int, crop: int, stride: int) -> list[int]:
    if n <= crop:
        return [0]
    pos = list(range(0, n - crop + 1, stride))
    if pos[-1] != n - crop:
        pos.append(n - crop)
    return pos


def list_images(data: DistillData, model_mpp: float) -> list[ImageRef]:
    """The images of ``data.folders`` (sorted per folder) with their rescale factor and cache key."""
    from PIL import Image

    refs: list[ImageRef] = []
    for f in data.folders:
        folder = Path(f["path"])
        if not folder.is_dir():
            raise FileNotFoundError(f"data.folders: '{folder}' is not a directory")
        pattern = f.get("pattern") or "*"
        files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"data.folders: no images ({', '.join(IMAGE_SUFFIXES)}) matching '{pattern}' in "
                                    f"'{folder}'")
        mpp = float(f.get("mpp") or 0.0)
        scale = mpp / model_mpp if mpp > 0 else 1.0
        for p in files:
            st = p.stat()
            with Image.open(p) as im:
                w, h = im.size
            refs.append(ImageRef(name=p.name, key=f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}", scale=scale,
                                 group=str(folder), path=str(p), size_hw=(h, w)))
    return refs


def list_corpus_images(data: DistillData, model_mpp: float):
    """Images of a PathSeg corpus split (decoded once to learn their size). Returns (refs, corpus)."""
    from data_builders import load_pathseg

    corpus_dir = Path(data.corpus)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"Corpus directory not found: '{corpus_dir}'")
    corpus = load_pathseg(corpus_dir)
    if data.split not in corpus.images:
        raise ConfigError(f"Corpus '{corpus_dir}' has no split '{data.split}'. Available: {sorted(corpus.images)}")
    refs = []
    for i in range(len(corpus.images[data.split])):
        s = corpus.sample(data.split, i)
        h, w = s["image"].shape[:2]
        mpp = float(s.get("mpp") or model_mpp)
        refs.append(ImageRef(name=f"{data.split}_{i}", key=f"{corpus_dir.resolve()}|{data.split}|{i}",
                             scale=mpp / model_mpp, group=str(s.get("source", "corpus")), corpus_index=i,
                             size_hw=(h, w)))
    return refs, corpus


def split_tiles(refs: list[ImageRef], data: DistillData, crop: int, seed: int) -> tuple[list[Tile], list[Tile]]:
    """Grid tiles of every image; whole images held out (``holdout`` fraction per group, at least one
    when ``holdout > 0`` and the group has two or more images). Returns (train, holdout)."""
    import numpy as np

    stride = data.stride or crop
    rng = np.random.default_rng([seed, 4242])
    held: set[int] = set()
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(r.group, []).append(i)
    for g in sorted(groups):
        idx = groups[g]
        n = int(round(data.holdout * len(idx)))
        if data.holdout > 0 and len(idx) > 1:
            n = min(max(1, n), len(idx) - 1)
        held.update(idx[j] for j in rng.permutation(len(idx))[:n])
    train, hold = [], []
    for i, r in enumerate(refs):
        h, w = (max(1, round(d * r.scale)) for d in r.size_hw)
        tiles = [Tile(i, y, x, crop) for y in _grid(h, crop, stride) for x in _grid(w, crop, stride)]
        (hold if i in held else train).extend(tiles)

    def sub(tiles: list[Tile], n: int, salt: int) -> list[Tile]:
        if n and len(tiles) > n:
            keep = sorted(np.random.default_rng([seed, salt]).permutation(len(tiles))[:n])
            tiles = [tiles[k] for k in keep]
        return tiles

    return sub(train, data.max_tiles, 1), sub(hold, data.holdout_max_tiles, 2)


class TileDataset:
    """Map-style dataset of tiles; items ``{"pixels": uint8 [3, c, c], "key": str}``. Accepts an int
    index or a ``(position, index)`` key from :class:`~pathsegmentor.data.PositionSampler`. Decoded,
    rescaled images are kept in memory (small corpora)."""

    def __init__(self, refs: list[ImageRef], tiles: list[Tile], corpus=None, split: str = "train") -> None:
        self.refs, self.tiles, self.corpus, self.split = refs, tiles, corpus, split
        self._images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def image(self, i: int):
        if i not in self._images:
            from ..image_io import read_image, resize_rgb, to_rgb_uint8

            r = self.refs[i]
            img = read_image(r.path) if r.path else self.corpus.sample(self.split, r.corpus_index)["image"]
            img = to_rgb_uint8(img)
            if abs(r.scale - 1.0) > 1e-3:
                h, w = img.shape[:2]
                img = resize_rgb(img, (max(1, round(h * r.scale)), max(1, round(w * r.scale))))
            self._images[i] = img
        return self._images[i]

    def key(self, t: Tile) -> str:
        r = self.refs[t.image]
        return f"{r.key}|scale={r.scale:.6g}|crop={t.y0},{t.x0},{t.size}"

    def __getitem__(self, key) -> dict[str, Any]:
        import numpy as np
        import torch

        index = key[1] if isinstance(key, tuple) else key
        t = self.tiles[int(index)]
        img = self.image(t.image)
        out = np.zeros((t.size, t.size, 3), np.uint8)  # zero padding where the image is smaller than a tile
        crop = img[t.y0:t.y0 + t.size, t.x0:t.x0 + t.size]
        out[:crop.shape[0], :crop.shape[1]] = crop
        return {"pixels": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), "key": self.key(t)}


def collate_tiles(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {"pixels": torch.stack([it["pixels"] for it in items]), "key": [it["key"] for it in items]}


# ---------------------------------------------------------------------------------------------------
# teacher embeddings, cached


def teacher_fingerprint(teacher, input_size: int) -> str:
    """A hash of the teacher's weights and input size: names the cache folder, so embeddings of another
    teacher (other weights, other variant) are never mixed in."""
    h = hashlib.blake2b(digest_size=12)
    h.update(f"input={input_size}".encode())
    for name, t in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class TeacherCache:
    """Teacher embeddings on disk, one safetensors file per tile (``embedding [C, h, w]`` + the tile key
    in the metadata), under ``root/<teacher fingerprint>/``. Writes are atomic (tmp + rename).

    :meth:`embeddings` returns the batch's embeddings, running ``teacher_fn`` only on the tiles not yet
    cached; ``hits``/``misses`` count distinct tiles per batch, ``teacher_calls`` teacher forwards.
    """

    def __init__(self, root: str | Path | None, fingerprint: str, dtype: str = "float32") -> None:
        import torch

        if dtype not in ("float32", "float16"):
            raise ConfigError(f"cache.dtype '{dtype}' unknown. Available: ['float16', 'float32']")
        self.dir = Path(root) / fingerprint if root else None
        self.dtype = getattr(torch, dtype)
        self.hits = self.misses = self.teacher_calls = 0

    def path(self, key: str) -> Path:
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        stem = re.sub(r"[^A-Za-z0-9]+", "-", Path(key.split("|")[0]).stem)[-40:].strip("-") or "tile"
        return self.dir / f"{stem}_{digest}.safetensors"

    def get(self, key: str):
        from safetensors.torch import load_file

        if self.dir is None:
            return None
        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["embedding"]
        except Exception:  # noqa: BLE001 - a corrupt entry (killed mid-write elsewhere) is recomputed
            return None

    def put(self, key: str, embedding) -> None:
        import os

        from safetensors.torch import save_file

        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self.path(key)
        tmp = p.with_name(f"{p.stem}.{os.getpid()}.tmp")
        save_file({"embedding": embedding.detach().to("cpu", self.dtype).contiguous()}, str(tmp),
                  metadata={"key": key})
        os.replace(tmp, p)

    def embeddings(self, keys: Sequence[str], pixels, teacher_fn):
        """``pixels [B, 3, S, S]`` normalised; returns float ``[B, C, h, w]`` on ``pixels.device``."""
        import torch

        found: dict[str, Any] = {}
        for k in keys:
            if k not in found:
                found[k] = self.get(k)
        missing = [k for k, e in found.items() if e is None]  # unique tiles: a repeat in the batch runs once
        self.hits += len(found) - len(missing)
        self.misses += len(missing)
        if missing:
            rows = [list(keys).index(k) for k in missing]
            with torch.no_grad():
                emb = teacher_fn(pixels[rows])
            self.teacher_calls += 1
            for j, k in enumerate(missing):
                found[k] = emb[j]
                self.put(k, emb[j])
        return torch.stack([found[k].to(pixels.device, torch.float32) for k in keys])


# ---------------------------------------------------------------------------------------------------
# loss and model pieces


def distillation_loss(student, teacher, cfg: DistillLoss | None = None) -> dict[str, Any]:
    """``student``/``teacher`` ``[B, C, h, w]``. Returns ``mse`` (mean squared error over the map),
    ``cosine`` (mean over positions of 1 - channel cosine similarity) and the weighted ``loss``."""
    import torch.nn.functional as F

    cfg = cfg or DistillLoss()
    mse = F.mse_loss(student, teacher)
    cos = 1.0 - F.cosine_similarity(student, teacher, dim=1, eps=1e-6).mean()
    return {"mse": mse, "cosine": cos, "loss": cfg.mse * mse + cfg.cosine * cos}


def _student_module():
    from torch import nn

    class StudentModule(nn.Module):
        """The CellSAM student alone (what distillation trains and prepares): pixels -> embedding."""

        def __init__(self, student: nn.Module) -> None:
            super().__init__()
            self.student = student

        def forward(self, pixels):
            return self.student.forward_features(pixels).embedding

    return StudentModule


def build_distill_model(cfg: DistillConfig):
    """The CellSAM model to distil: a registered name or model dir, optionally initialised from an
    official SAM ``.pth`` (teacher + SAM decoder) or from another model dir."""
    from ..registry import create_model
    from ..weights import from_pretrained, load_sam_checkpoint
    from .model import CellSAM

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


# ---------------------------------------------------------------------------------------------------
# the loop


def run_distillation(cfg: DistillConfig, *, resume: bool = False) -> dict[str, Any]:
    """Distil per ``cfg``; returns a summary (steps, first/last loss, held-out cosine similarity before
    and after, cache hits/misses, teacher calls, output paths)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from .._compat import ensure_torchvision
    from ..data import PositionSampler
    from ..train import _check_resume_compatible, _latest_checkpoint, _lr_lambda, save_checkpoint

    ensure_torchvision()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    if not cfg.data.folders and not cfg.data.corpus:
        raise ConfigError("no tiles: set data.folders (image folders with their mpp) or data.corpus")
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), gradient_accumulation_steps=cfg.train.grad_accum,
                              mixed_precision=cfg.train.mixed_precision if torch.cuda.is_available() else "no")
    resume_from = None
    if resume:
        resume_from = _latest_checkpoint(ckpt_root)
        if resume_from is None:
            accelerator.print(f"no checkpoint under {ckpt_root}; starting from scratch")
        else:
            _check_resume_compatible(resume_from, cfg)
    elif _latest_checkpoint(ckpt_root) is not None:
        raise ConfigError(f"'{out}' already holds checkpoints of a run; pass --resume to continue it or choose "
                          f"another output_dir.")

    set_seed(cfg.train.seed)
    model = build_distill_model(cfg).to(accelerator.device).eval()
    size = model.config.preprocess.input_size
    crop = cfg.data.crop or size
    if crop != size:
        raise ConfigError(f"data.crop ({crop}) must equal the model's input size ({size}): the SAM teacher takes "
                          f"fixed {size}x{size} inputs. Change the crop, or build the model at the crop size with "
                          f"model.overrides: {{preprocess.input_size: {crop}}} (random or re-initialised teacher).")
    mpp = model.config.preprocess.mpp
    refs, corpus = (list_images(cfg.data, mpp), None) if cfg.data.folders else list_corpus_images(cfg.data, mpp)
    train_tiles, hold_tiles = split_tiles(refs, cfg.data, crop, cfg.train.seed)
    if not train_tiles:
        raise ConfigError("no training tiles (every image held out?): lower data.holdout or add images")
    train_ds = TileDataset(refs, train_tiles, corpus, cfg.data.split)
    hold_ds = TileDataset(refs, hold_tiles, corpus, cfg.data.split)
    enc = model.image_encoder
    cache = TeacherCache((cfg.cache.dir or out / "teacher_cache") if cfg.cache.enabled else None,
                         teacher_fingerprint(enc.teacher, size), cfg.cache.dtype)

    global_batch = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    sampler = PositionSampler(np.full(len(train_ds), 1.0 / len(train_ds)), cfg.train.steps * global_batch,
                              cfg.train.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler,
                                         collate_fn=collate_tiles, num_workers=cfg.data.num_workers, drop_last=True)
    student = _student_module()(enc.student)
    student.train()
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.optim.lr,
                                  weight_decay=cfg.optim.weight_decay, betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.optim, cfg.train.steps))
    student, optimizer, loader, scheduler = accelerator.prepare(student, optimizer, loader, scheduler)

    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    batches = accelerator.skip_first_batches(loader, step * cfg.train.grad_accum) if step else loader

    log_path = out / "distill_log.csv"
    before = None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "distill_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        if not resume_from and log_path.exists():
            log_path.unlink()
        if len(hold_ds) and not resume_from:
            before = evaluate_distillation(model, hold_ds, cache, batch_size=cfg.train.batch_size, loss_cfg=cfg.loss)
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=step, desc="distill", unit="step",
               disable=not accelerator.is_local_main_process)
    sums: dict[str, float] = {}
    n_acc = 0
    t0 = time.time()
    first_loss = last_loss = None
    for batch in batches:
        with accelerator.accumulate(student):
            pixels = model.normalize(batch["pixels"].to(accelerator.device))
            target = cache.embeddings(batch["key"], pixels, enc.encode_teacher)
            losses = distillation_loss(student(pixels), target, cfg.loss)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(student.parameters(), cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n_acc += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            means = mean_across_ranks({k: v / n_acc for k, v in sums.items()}, accelerator.device)
            row = {"step": step, **{k: round(v, 6) for k, v in means.items()}, "lr": scheduler.get_last_lr()[0],
                   "elapsed_s": round(time.time() - t0, 2)}
            first_loss = means["loss"] if first_loss is None else first_loss
            last_loss = means["loss"]
            if accelerator.is_main_process:
                new = not log_path.exists()
                with log_path.open("a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(row))
                    if new:
                        w.writeheader()
                    w.writerow(row)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            sums, n_acc = {}, 0
        if step % cfg.train.save_every == 0 or step == cfg.train.steps:
            save_checkpoint(accelerator, ckpt_root, step, cfg)
        if step >= cfg.train.steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    result: dict[str, Any] = {
        "steps": step, "num_processes": accelerator.num_processes, "first_loss": first_loss, "last_loss": last_loss,
        "train_tiles": len(train_ds), "holdout_tiles": len(hold_ds),
        "holdout_images": sorted({refs[t.image].name for t in hold_tiles}),
        "cache_hits": cache.hits, "cache_misses": cache.misses, "teacher_calls": cache.teacher_calls,
        "output_dir": str(out), "wall_s": round(time.time() - t0, 2)}
    if accelerator.is_main_process:
        if len(hold_ds):
            result["holdout_before"] = before
            result["holdout_after"] = evaluate_distillation(model, hold_ds, cache, batch_size=cfg.train.batch_size,
                                                            loss_cfg=cfg.loss)
        model.save_pretrained(out / "model")
        (out / "distill_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.end_training()
    return result


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="distillation recipe YAML (configs/train/distill-*.yaml)")
    parser.add_argument("--output-dir", help="overrides output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 data.holdout=0.2")


def run(args: argparse.Namespace) -> int:
    from ..train import run_config_command

    return run_config_command(args, load_distill_config, run_distillation)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathsegmentor distill", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
