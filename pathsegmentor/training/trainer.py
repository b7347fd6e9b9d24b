"""The one training loop, with Accelerate: one CPU to many GPUs/nodes, exact resume.

What is trained, on what data and with which loss is an :class:`Objective`
(:class:`~pathsegmentor.training.segmentation.SegmentationObjective` for text-prompted segmentation,
:class:`~pathsegmentor.training.distillation.DistillationObjective` for CellSAM's student); the loop
is the same for both. Idioms as in the accelerate examples: ``set_seed`` before building the model,
one ``prepare``, ``accumulate``, ``clip_grad_norm_``, ``save_state``/``load_state`` +
``skip_first_batches`` for exact resume. Checkpoints are written atomically
(:mod:`~pathsegmentor.training.checkpoints`), so a run killed during a save resumes from the previous one.

Files in ``output_dir`` (``<name>`` is the objective's, ``train`` or ``distill``): ``<name>_config.yaml``
(the resolved recipe), ``<name>_log.csv``, ``loss_curve.png``, ``checkpoints/step_*``, ``model/`` (the
final model, ``save_pretrained``) and ``<name>_summary.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from ..modeling.config import ConfigError
from .checkpoints import check_resume_compatible, latest_checkpoint, save_checkpoint
from .collectives import all_gather_objects, mean_across_ranks
from .recipe import lr_lambda


@dataclass
class TrainingSetup:
    """What an objective hands the loop.

    Attributes:
        module: the ``nn.Module`` that is prepared (DDP-wrapped) and trained; its forward is called by
            :meth:`Objective.loss`.
        dataset: map-style dataset indexed by :class:`~pathsegmentor.training.data.PositionSampler` keys.
        weights: ``float [len(dataset)]`` sampling probabilities (sum 1).
        collate: batch collation function.
        param_groups: AdamW parameter groups (each with its ``lr``).
    """

    module: Any
    dataset: Any
    weights: Any
    collate: Callable[[list], dict[str, Any]]
    param_groups: list[dict[str, Any]] = field(default_factory=list)


class Objective(ABC):
    """One kind of training: builds model and data, computes the loss of a batch, adds to the summary.

    ``cfg`` needs the shared recipe sections ``output_dir``, ``model``
    (:class:`~pathsegmentor.training.recipe.ModelSection`), ``optim`` and ``train``
    (:class:`~pathsegmentor.training.recipe.LoopConfig`), plus ``data.num_workers``.
    """

    name: str = "train"

    def __init__(self, cfg) -> None:
        self.cfg = cfg

    @abstractmethod
    def setup(self, accelerator) -> TrainingSetup:
        """Build model and data (called after ``set_seed``, once per run)."""

    @abstractmethod
    def loss(self, module, batch: dict[str, Any], device) -> dict[str, Any]:
        """Losses of one batch through the prepared ``module``; must hold ``"loss"`` (the one backpropagated)."""

    @abstractmethod
    def final_model(self):
        """The model written with ``save_pretrained`` to ``output_dir/model`` at the end."""

    def before_loop(self, accelerator, *, resumed: bool) -> None:
        """Hook after ``prepare`` and resume (e.g. held-out figures before training)."""

    def summary(self, accelerator) -> dict[str, Any]:
        """Objective-specific entries of the run summary (called on every rank after the loop)."""
        return {}


def _write_loss_plot(csv_path: Path, png_path: Path, keys: Sequence[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(csv_path.open()))
    if not rows:
        return
    steps = [int(r["step"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
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


def _append_row(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def fit(objective: Objective, *, resume: bool = False) -> dict[str, Any]:
    """Run ``objective`` to ``cfg.train.steps``; returns the summary (steps, first/last loss, processes,
    per-rank parameter checksums and peak RSS, throughput, output paths, and the objective's entries)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm

    from .._compat import ensure_torchvision
    from .data import PositionSampler

    ensure_torchvision()
    cfg, name = objective.cfg, objective.name
    loop = cfg.train
    if loop.threads:
        torch.set_num_threads(loop.threads)
    out = Path(cfg.output_dir)
    ckpt_root = out / "checkpoints"
    accelerator = Accelerator(cpu=not torch.cuda.is_available(),  # cpu=True makes torchrun/launch use gloo (MULTI_CPU)
                              gradient_accumulation_steps=loop.grad_accum,
                              mixed_precision=loop.mixed_precision if torch.cuda.is_available() else "no")
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            accelerator.print(f"no checkpoint under {ckpt_root}; starting from scratch")
        else:
            check_resume_compatible(resume_from, cfg)
    elif latest_checkpoint(ckpt_root) is not None:
        raise ConfigError(f"'{out}' already holds checkpoints of a run; pass --resume to continue it or choose "
                          f"another output_dir.")

    set_seed(loop.seed)
    setup = objective.setup(accelerator)
    global_batch = loop.batch_size * loop.grad_accum * accelerator.num_processes
    sampler = PositionSampler(np.asarray(setup.weights), loop.steps * global_batch, loop.seed)
    loader = torch.utils.data.DataLoader(setup.dataset, batch_size=loop.batch_size, sampler=sampler,
                                         collate_fn=setup.collate, num_workers=cfg.data.num_workers, drop_last=True)
    optimizer = torch.optim.AdamW(setup.param_groups, weight_decay=cfg.optim.weight_decay,
                                  betas=tuple(cfg.optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim, loop.steps))
    module, optimizer, loader, scheduler = accelerator.prepare(setup.module, optimizer, loader, scheduler)

    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    start_step = step
    batches = accelerator.skip_first_batches(loader, step * loop.grad_accum) if step else loader

    log_path = out / f"{name}_log.csv"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        if not resume_from and log_path.exists():
            log_path.unlink()
    objective.before_loop(accelerator, resumed=resume_from is not None)

    bar = tqdm(total=loop.steps, initial=step, desc=name, unit="step", disable=not accelerator.is_local_main_process)
    trainable = [p for p in module.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    n_acc = 0
    t0 = time.time()
    samples_since = 0
    first_loss = last_loss = None
    loss_keys: list[str] = []
    for batch in batches:
        with accelerator.accumulate(module):
            losses = objective.loss(module, batch, accelerator.device)
            accelerator.backward(losses["loss"])
            if accelerator.sync_gradients and cfg.optim.grad_clip:
                accelerator.clip_grad_norm_(trainable, cfg.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        loss_keys = list(losses)
        n_acc += 1
        samples_since += len(batch["pixels"]) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update(1)
        if step % loop.log_every == 0 or step == loop.steps:
            means = mean_across_ranks({k: v / n_acc for k, v in sums.items()}, accelerator.device)
            dt = time.time() - t0
            row = {"step": step, **{k: round(v, 6) for k, v in means.items()},
                   "lr": scheduler.get_last_lr()[0], "samples_per_s": round(samples_since / max(dt, 1e-9), 3),
                   "elapsed_s": round(dt, 2)}
            first_loss = means["loss"] if first_loss is None else first_loss
            last_loss = means["loss"]
            if accelerator.is_main_process:
                _append_row(log_path, row)
            bar.set_postfix(loss=f"{last_loss:.4f}")
            sums, n_acc = {}, 0
        if step % loop.save_every == 0 or step == loop.steps:
            save_checkpoint(accelerator, ckpt_root, step, cfg)
            if loop.stop_after and step >= loop.stop_after:
                break  # the end of a leg: continue with --resume
        if step >= loop.steps:
            break
    bar.close()
    accelerator.wait_for_everyone()
    if step < loop.steps:  # a leg ended by train.stop_after: the checkpoint is the output, no final model
        accelerator.print(f"stopped after step {step}'s checkpoint (train.stop_after); continue with --resume")
        accelerator.end_training()
        return {"steps": step, "stopped_after": step, "output_dir": str(out)}
    final = objective.final_model()
    # per-rank parameter checksums: identical across ranks when DDP kept the replicas in sync
    with torch.no_grad():
        checksum = float(sum(p.double().sum() + (p.double() ** 2).sum() for p in final.parameters()))
    import resource

    per_rank = all_gather_objects((checksum, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
                                  accelerator.device)
    samples = (step - start_step) * global_batch
    result: dict[str, Any] = {
        "steps": step, "num_processes": accelerator.num_processes, "param_checksums": [c for c, _ in per_rank],
        "samples_per_s": round(samples / max(time.time() - t0, 1e-9), 3),
        "peak_rss_mb_per_rank": [m for _, m in per_rank], "first_loss": first_loss, "last_loss": last_loss,
        "output_dir": str(out), "wall_s": round(time.time() - t0, 2)}
    result.update(objective.summary(accelerator))
    if accelerator.is_main_process:
        final.save_pretrained(out / "model")
        if log_path.exists():
            _write_loss_plot(log_path, out / "loss_curve.png", loss_keys or ["loss"])
        (out / f"{name}_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.end_training()
    return result


# ---------------------------------------------------------------------------------------------------
# the command line shared by `pathsegmentor train` and `pathsegmentor distill`


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="training recipe YAML (configs/train/*.yaml)")
    parser.add_argument("--output-dir", help="overrides output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in output_dir")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.steps=200 data.crop=256")


def run_config_command(args: argparse.Namespace, load_config, runner) -> int:
    """Recipe + overrides -> run -> JSON summary on stdout. Config and input errors exit 2 with the
    message (nothing has been trained yet)."""
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


def training_command(prog: str, doc: str, load_config, runner):
    """``(run, main)`` of a training command: ``run(args)`` for ``pathsegmentor <command>`` (with
    :func:`add_arguments`), ``main(argv=None)`` for ``python -m`` / torchrun / accelerate launch."""

    def run(args: argparse.Namespace) -> int:
        return run_config_command(args, load_config, runner)

    def main(argv: Sequence[str] | None = None) -> int:
        parser = argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0])
        add_arguments(parser)
        return run(parser.parse_args(argv))

    return run, main
