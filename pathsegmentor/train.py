"""Training with Accelerate: one CPU to many GPUs/nodes, exact resume, embedding-cache mode.

    pathsegmentor train --config configs/train/tiny-cpu.yaml [key=value ...]
    accelerate launch -m pathsegmentor.train --config ...          # multi-GPU / multi-node (DDP, FSDP, DeepSpeed)
    torchrun --nproc_per_node 2 -m pathsegmentor.train --config ...

Idioms as in the accelerate examples: ``set_seed`` before building the model, one ``prepare``,
``accumulate``, ``clip_grad_norm_``, ``save_state``/``load_state`` + ``skip_first_batches`` for
exact resume. Checkpoints are written to a temporary folder and renamed, so a run killed during a
save resumes from the previous good checkpoint.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import yaml

from .collectives import all_gather_objects, mean_across_ranks
from .config import ConfigError, from_dict
from .data import DataConfig
from .losses import LossConfig

PARTS = ("image_encoder", "text_encoder", "prompt_adapter", "mask_decoder", "prompt_encoder")


@dataclass
class ModelSection:
    name: str = "pathsegmentor-test"  # registered name or a model dir
    init_from: str = ""  # weights to start from: a model dir / registered name with weights / SAM .pth
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scale: dict[str, float] = field(default_factory=dict)  # part (or "other") -> multiplier of lr
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0


@dataclass
class FreezeConfig:
    image_encoder: bool = False
    text_encoder: bool = True
    prompt_adapter: bool = False
    mask_decoder: bool = False
    prompt_encoder: bool = True  # point/box embeddings: unused by text-only training


@dataclass
class LoopConfig:
    steps: int = 100
    batch_size: int = 4  # per process
    grad_accum: int = 1
    seed: int = 0
    mixed_precision: str = "no"  # no | bf16 | fp16 (GPU); fp32 on CPU
    save_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    stop_after: int = 0  # testing aid: exit abruptly after this step's checkpoint (simulates a kill)
    threads: int = 0  # torch.set_num_threads on CPU (0: leave default)


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


def _parse_value(text: str) -> Any:
    return yaml.safe_load(text)


def load_train_config(path: str | Path | None, overrides: Sequence[str] = ()) -> TrainConfig:
    """Read a YAML recipe and apply ``key.sub=value`` overrides; unknown keys raise ConfigError."""
    data: dict[str, Any] = {}
    base = Path.cwd()
    if path:
        path = Path(path)
        if not path.is_file():
            from .registry import configs_dir

            shipped = sorted(str(f) for f in (configs_dir() / "train").glob("*.yaml"))
            raise FileNotFoundError(f"Training config not found: '{path}'. Recipes shipped with the package: "
                                    f"{shipped}; copy one and edit it, or pass key=value overrides.")
        data = yaml.safe_load(path.read_text()) or {}
        base = path.resolve().parent
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value (e.g. train.steps=100)")
        key, val = ov.split("=", 1)
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{ov}': '{p}' is not a section")
        node[parts[-1]] = _parse_value(val)
    cfg = from_dict(TrainConfig, data, where=str(path or "overrides"))
    # relative corpus paths in a recipe are relative to the recipe's folder
    if cfg.data.corpus and not Path(cfg.data.corpus).is_absolute() and path and not (Path.cwd() / cfg.data.corpus).exists():
        cfg.data.corpus = str((base / cfg.data.corpus).resolve())
    return cfg


def _lr_lambda(cfg: OptimConfig, total: int):
    def f(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        if cfg.schedule == "constant":
            return 1.0
        t = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
    if cfg.schedule not in ("cosine", "constant"):
        raise ConfigError(f"optim.schedule '{cfg.schedule}' unknown. Available: ['cosine', 'constant']")
    return f


def build_model_for_training(cfg: TrainConfig):
    from .registry import create_model
    from .weights import from_pretrained, load_sam_checkpoint

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
    return model


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


def _latest_checkpoint(ckpt_root: Path) -> Path | None:
    if not ckpt_root.is_dir():
        return None
    done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
    return done[-1] if done else None


def _check_resume_compatible(ckpt: Path, cfg: TrainConfig) -> dict[str, Any]:
    state = json.loads((ckpt / "trainer_state.json").read_text())
    if state.get("model") != cfg.model.name or state.get("model_overrides", {}) != cfg.model.overrides:
        raise ConfigError(
            f"Cannot resume from '{ckpt}': it was trained with model '{state.get('model')}' "
            f"(overrides {state.get('model_overrides')}), this run uses '{cfg.model.name}' "
            f"(overrides {cfg.model.overrides}). Use a new output_dir or the same model.")
    return state


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


def _write_loss_plot(csv_path: Path, png_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "dice", "bce", "presence"):
        if key in rows[0] and rows[0][key] != "":
            ax.plot(steps, [float(r[key]) for r in rows], label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    ax.set_title(png_path.parent.name)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


def run_training(cfg: TrainConfig, *, resume: bool = False) -> dict[str, Any]:
    """Train per ``cfg``; returns a summary dict (steps, final loss, output paths, num_processes)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from ._compat import ensure_torchvision
    from .data import PositionSampler, PromptedCrops, collate, load_synonyms, sampling_weights

    ensure_torchvision()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),  # cpu=True makes torchrun/launch use gloo (MULTI_CPU)
                              gradient_accumulation_steps=cfg.train.grad_accum,
                              mixed_precision=cfg.train.mixed_precision if torch.cuda.is_available() else "no")
    corpus = open_corpus(cfg, [cfg.data.train_split])
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
    model = build_model_for_training(cfg)
    if cfg.cache.enabled and not cfg.freeze.image_encoder:
        raise ConfigError("cache.enabled needs freeze.image_encoder: true (cached embeddings come from a frozen encoder)")
    mpp = model.config.preprocess.mpp
    pp = model.config.preprocess
    if pp.fixed_input and cfg.data.crop != pp.input_size:
        raise ConfigError(f"model '{cfg.model.name}' takes fixed {pp.input_size}x{pp.input_size} inputs (ViT position "
                          f"embeddings); set data.crop={pp.input_size} (got {cfg.data.crop})")
    synonyms = load_synonyms(cfg.data.corpus)
    ds = PromptedCrops(corpus, cfg.data.train_split, cfg.data, model_mpp=mpp, seed=cfg.train.seed, synonyms=synonyms)
    weights = sampling_weights(corpus, cfg.data.train_split, cfg.data.balance, cfg.data.sources)
    global_batch = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    total_positions = cfg.train.steps * global_batch

    if cfg.cache.enabled:
        from .embedding_cache import CachedViews, build_embedding_cache

        cache_dir = Path(cfg.cache.dir or out / "embedding_cache")
        t_cache = time.time()
        if accelerator.is_main_process:
            build_embedding_cache(model, ds, weights, cache_dir, views=cfg.cache.views)
        accelerator.wait_for_everyone()
        cache_build_s = time.time() - t_cache
        train_ds = CachedViews(cache_dir, ds)
        weights = np.full(len(train_ds), 1.0 / len(train_ds))
    else:
        train_ds = ds
        cache_build_s = 0.0
    sampler = PositionSampler(weights, total_positions, cfg.train.seed)
    loader = torch.utils.data.DataLoader(train_ds, batch_size=cfg.train.batch_size, sampler=sampler,
                                         collate_fn=collate, num_workers=cfg.data.num_workers, drop_last=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim), weight_decay=cfg.optim.weight_decay,
                                  betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg.optim, cfg.train.steps))
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    unwrapped = accelerator.unwrap_model(model)

    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    start_step = step
    batches = accelerator.skip_first_batches(loader, step * cfg.train.grad_accum) if step else loader

    log_path = out / "train_log.csv"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / "train_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        if not resume_from and log_path.exists():
            log_path.unlink()
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=step, desc="train", unit="step",
               disable=not accelerator.is_local_main_process)
    sums: dict[str, float] = {}
    n_acc = 0
    t0 = time.time()
    samples_since = 0
    micro = 0
    first_loss = last_loss = None
    model.train()
    from .embedding_cache import features_from_batch
    from .losses import segmentation_loss

    for batch in batches:
        with accelerator.accumulate(model):
            pixels = unwrapped.normalize(batch["pixels"].to(accelerator.device))
            feats = features_from_batch(batch)
            if feats is not None:
                feats = feats.to(pixels.device)
            outp = model(pixels, batch["prompts"], features=feats)
            loss_fn = segmentation_loss
            if getattr(outp, "branches", None):  # CellSAM fused mode: deep supervision of every branch
                from .cellsam.fusion import fused_segmentation_loss

                loss_fn = fused_segmentation_loss
                losses = loss_fn(outp, batch["target"].to(pixels.device), batch["valid"].to(pixels.device),
                                 batch["presence"].to(pixels.device), cfg.loss)
            else:
                losses = loss_fn(outp.mask_logits, outp.presence_logits, batch["target"].to(pixels.device),
                                 batch["valid"].to(pixels.device), batch["presence"].to(pixels.device), cfg.loss)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and cfg.optim.grad_clip:
                accelerator.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n_acc += 1
        samples_since += pixels.shape[0] * accelerator.num_processes
        micro += 1
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            means = mean_across_ranks({k: v / n_acc for k, v in sums.items()}, accelerator.device)
            dt = time.time() - t0
            row = {"step": step, **{k: round(v, 6) for k, v in means.items()},
                   "lr": scheduler.get_last_lr()[0], "samples_per_s": round(samples_since / max(dt, 1e-9), 3),
                   "elapsed_s": round(dt, 2)}
            if first_loss is None:
                first_loss = means["loss"]
            last_loss = means["loss"]
            if accelerator.is_main_process:
                new = not log_path.exists()
                with log_path.open("a", newline="") as f:
                    w = csv.DictWriter(f, fieldnames=list(row))
                    if new:
                        w.writeheader()
                    w.writerow(row)
            bar.set_postfix(loss=f"{means['loss']:.4f}")
            sums, n_acc = {}, 0
        if step % cfg.train.save_every == 0 or step == cfg.train.steps:
            save_checkpoint(accelerator, ckpt_root, step, cfg)
            if cfg.train.stop_after and step >= cfg.train.stop_after:
                accelerator.wait_for_everyone()
                bar.close()
                sys.stdout.flush()
                os._exit(3)  # simulate a kill right after a checkpoint
        if step >= cfg.train.steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    # per-rank parameter checksums: identical across ranks when DDP kept the replicas in sync
    with torch.no_grad():
        checksum = float(sum(p.double().sum() + (p.double() ** 2).sum() for p in unwrapped.parameters()))
    import resource

    per_rank = all_gather_objects((checksum, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
                                  accelerator.device)
    checksums, peak_mb = [c for c, _ in per_rank], [m for _, m in per_rank]
    samples = (step - start_step) * global_batch
    result = {"steps": step, "num_processes": accelerator.num_processes, "param_checksums": checksums,
              "samples_per_s": round(samples / max(time.time() - t0, 1e-9), 3), "peak_rss_mb_per_rank": peak_mb,
              "cache_build_s": round(cache_build_s, 2),
              "first_loss": first_loss,
              "last_loss": last_loss, "output_dir": str(out), "wall_s": round(time.time() - t0, 2)}
    if accelerator.is_main_process:
        unwrapped.save_pretrained(out / "model")
        if log_path.exists():
            _write_loss_plot(log_path, out / "loss_curve.png")
        (out / "train_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.end_training()
    return result


def save_checkpoint(accelerator, ckpt_root: Path, step: int, cfg: TrainConfig) -> Path:
    """``save_state`` into a temporary folder, then rename: a kill during a save leaves the previous
    checkpoint as the latest complete one."""
    final = ckpt_root / f"step_{step:07d}"
    tmp = ckpt_root / f".tmp_step_{step:07d}"
    if accelerator.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(
            {"step": step, "model": cfg.model.name, "model_overrides": cfg.model.overrides}, indent=2))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        done = sorted(p for p in ckpt_root.glob("step_*") if (p / "trainer_state.json").is_file())
        for old in done[:-max(1, cfg.train.keep_checkpoints)]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training recipe YAML (configs/train/*.yaml)")
    parser.add_argument("--output-dir", help="overrides output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 data.crop=256")


def run_config_command(args: argparse.Namespace, load_config, runner) -> int:
    """Shared body of the ``train`` and ``distill`` commands: recipe + overrides -> run -> JSON summary.
    Config and input errors exit 2 with the message (nothing has been trained yet)."""
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    try:
        cfg = load_config(args.config, overrides)
        result = runner(cfg, resume=args.resume)
    except (ConfigError, FileNotFoundError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def run(args: argparse.Namespace) -> int:
    return run_config_command(args, load_train_config, run_training)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathsegmentor train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
