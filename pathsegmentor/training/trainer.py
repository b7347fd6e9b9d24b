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

import json
import time
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from ..modeling.config import ConfigError
from .checkpoints import check_resume_compatible, latest_checkpoint, save_checkpoint
from .collectives import all_gather_objects, mean_across_ranks
from .ema import WeightAverage, check_ema_decay
from .command import add_arguments, run_config_command, training_command  # noqa: F401 - re-exported
from .recipe import lr_lambda
from .run_log import append_row, write_loss_plot

__all__ = ["Objective", "TrainingSetup", "fit", "add_arguments", "run_config_command", "training_command"]


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


@dataclass
class _Progress:
    """Where the loop stands: optimizer steps done (``step``; ``start_step`` when this leg began), the
    first and last logged mean loss, the names of the objective's losses and the loop's start time."""

    step: int
    start_step: int
    first_loss: float | None = None
    last_loss: float | None = None
    loss_keys: list[str] = field(default_factory=list)
    t0: float = 0.0


def _make_accelerator(loop):
    import torch
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available(),  # cpu=True makes torchrun/launch use gloo (MULTI_CPU)
                       gradient_accumulation_steps=loop.grad_accum,
                       mixed_precision=loop.mixed_precision if torch.cuda.is_available() else "no")


def _checkpoint_to_resume(accelerator, cfg, ckpt_root: Path, resume: bool) -> Path | None:
    """The checkpoint to resume from (``None``: from scratch); refuses to start over a run's checkpoints
    without ``resume``."""
    resume_from = None
    if resume:
        resume_from = latest_checkpoint(ckpt_root)
        if resume_from is None:
            accelerator.print(f"no checkpoint under {ckpt_root}; starting from scratch")
        else:
            check_resume_compatible(resume_from, cfg)
    elif latest_checkpoint(ckpt_root) is not None:
        raise ConfigError(f"'{Path(cfg.output_dir)}' already holds checkpoints of a run; pass --resume to continue "
                          f"it or choose another output_dir.")
    return resume_from


def _prepare(objective: Objective, accelerator) -> tuple[Any, Any, Any, Any, int]:
    """``set_seed``, the objective's setup, sampler, loader, AdamW and schedule, one ``prepare``;
    returns ``(module, optimizer, loader, scheduler, global_batch)``."""
    import numpy as np
    import torch
    from accelerate.utils import set_seed

    from .data import PositionSampler

    cfg = objective.cfg
    loop = cfg.train
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
    return module, optimizer, loader, scheduler, global_batch


def _restore(accelerator, resume_from: Path | None, loader, grad_accum: int) -> tuple[int, Any]:
    """``load_state`` from ``resume_from`` (if any); returns the step reached and the batches still to
    run (``skip_first_batches`` past those already seen)."""
    step = 0
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        step = json.loads((resume_from / "trainer_state.json").read_text())["step"]
        accelerator.print(f"resumed from {resume_from} at step {step}")
    batches = accelerator.skip_first_batches(loader, step * grad_accum) if step else loader
    return step, batches


def _start_outputs(accelerator, cfg, name: str, *, resumed: bool) -> Path:
    """Create ``output_dir``, write the resolved recipe, drop a stale log when not resuming (main process);
    returns the log's path."""
    out = Path(cfg.output_dir)
    log_path = out / f"{name}_log.csv"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}_config.yaml").write_text(yaml.safe_dump(asdict(cfg), sort_keys=False))
        if not resumed and log_path.exists():
            log_path.unlink()
    return log_path


def _train_loop(objective: Objective, accelerator, module, optimizer, scheduler, batches,
                progress: _Progress, log_path: Path, ema=None) -> None:
    """Run ``batches`` until ``train.steps`` (or a ``train.stop_after`` leg's checkpoint), logging every
    ``log_every`` steps and checkpointing every ``save_every``; updates ``progress`` (and ``ema``, the weight
    average, after every optimiser step)."""
    from tqdm.auto import tqdm

    cfg, loop = objective.cfg, objective.cfg.train
    ckpt_root = Path(cfg.output_dir) / "checkpoints"
    step = progress.step
    bar = tqdm(total=loop.steps, initial=step, desc=objective.name, unit="step",
               disable=not accelerator.is_local_main_process)
    trainable = [p for p in module.parameters() if p.requires_grad]
    sums: dict[str, float] = {}
    n_acc = 0
    progress.t0 = time.time()
    samples_since = 0
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
        progress.loss_keys = list(losses)
        n_acc += 1
        samples_since += len(batch["pixels"]) * accelerator.num_processes
        if not accelerator.sync_gradients:
            continue
        step += 1
        progress.step = step
        if ema is not None:
            ema.update(objective.final_model())
        bar.update(1)
        if step % loop.log_every == 0 or step == loop.steps:
            means = mean_across_ranks({k: v / n_acc for k, v in sums.items()}, accelerator.device)
            dt = time.time() - progress.t0
            row = {"step": step, **{k: round(v, 6) for k, v in means.items()},
                   "lr": scheduler.get_last_lr()[0], "samples_per_s": round(samples_since / max(dt, 1e-9), 3),
                   "elapsed_s": round(dt, 2)}
            progress.first_loss = means["loss"] if progress.first_loss is None else progress.first_loss
            progress.last_loss = means["loss"]
            if accelerator.is_main_process:
                append_row(log_path, row)
            bar.set_postfix(loss=f"{progress.last_loss:.4f}")
            sums, n_acc = {}, 0
        if step % loop.save_every == 0 or step == loop.steps:
            save_checkpoint(accelerator, ckpt_root, step, cfg)
            if loop.stop_after and step >= loop.stop_after:
                break  # the end of a leg: continue with --resume
        if step >= loop.steps:
            break
    bar.close()


def _finish(objective: Objective, accelerator, progress: _Progress, global_batch: int, log_path: Path,
            ema=None) -> dict:
    """After the loop: the summary (checksums and peak RSS per rank, throughput, losses, the objective's
    entries) and, on the main process, the final model, the loss curve and ``<name>_summary.json``."""
    import resource

    import torch

    out, step = Path(objective.cfg.output_dir), progress.step
    final = objective.final_model()
    if ema is not None:  # the saved model is the moving average; the checkpoints keep the raw weights
        ema.copy_to(final)
    # per-rank parameter checksums: identical across ranks when DDP kept the replicas in sync
    with torch.no_grad():
        checksum = float(sum(p.double().sum() + (p.double() ** 2).sum() for p in final.parameters()))
    per_rank = all_gather_objects((checksum, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0),
                                  accelerator.device)
    samples = (step - progress.start_step) * global_batch
    result: dict[str, Any] = {
        "steps": step, "num_processes": accelerator.num_processes, "param_checksums": [c for c, _ in per_rank],
        "samples_per_s": round(samples / max(time.time() - progress.t0, 1e-9), 3),
        "peak_rss_mb_per_rank": [m for _, m in per_rank], "first_loss": progress.first_loss,
        "last_loss": progress.last_loss, "output_dir": str(out), "wall_s": round(time.time() - progress.t0, 2)}
    result.update(objective.summary(accelerator))
    if accelerator.is_main_process:
        final.save_pretrained(out / "model")
        if log_path.exists():
            write_loss_plot(log_path, out / "loss_curve.png", progress.loss_keys or ["loss"])
        (out / f"{objective.name}_summary.json").write_text(json.dumps(result, indent=2) + "\n")
    accelerator.end_training()
    return result


def fit(objective: Objective, *, resume: bool = False) -> dict[str, Any]:
    """Run ``objective`` to ``cfg.train.steps``; returns the summary (steps, first/last loss, processes,
    per-rank parameter checksums and peak RSS, throughput, output paths, and the objective's entries)."""
    import torch

    from .._compat import ensure_torchvision

    ensure_torchvision()
    cfg, name = objective.cfg, objective.name
    loop = cfg.train
    check_ema_decay(loop.ema_decay)  # before any output
    if loop.threads:
        torch.set_num_threads(loop.threads)
    out = Path(cfg.output_dir)
    accelerator = _make_accelerator(loop)
    resume_from = _checkpoint_to_resume(accelerator, cfg, out / "checkpoints", resume)
    module, optimizer, loader, scheduler, global_batch = _prepare(objective, accelerator)
    ema = None
    if check_ema_decay(loop.ema_decay):
        ema = WeightAverage(objective.final_model(), loop.ema_decay)
        accelerator.register_for_checkpointing(ema)  # saved and restored with every checkpoint
    step, batches = _restore(accelerator, resume_from, loader, loop.grad_accum)
    log_path = _start_outputs(accelerator, cfg, name, resumed=resume_from is not None)
    objective.before_loop(accelerator, resumed=resume_from is not None)

    progress = _Progress(step=step, start_step=step)
    _train_loop(objective, accelerator, module, optimizer, scheduler, batches, progress, log_path, ema)
    accelerator.wait_for_everyone()
    if progress.step < loop.steps:  # a leg ended by train.stop_after: the checkpoint is the output, no final model
        accelerator.print(f"stopped after step {progress.step}'s checkpoint (train.stop_after); "
                          f"continue with --resume")
        accelerator.end_training()
        return {"steps": progress.step, "stopped_after": progress.step, "output_dir": str(out)}
    return _finish(objective, accelerator, progress, global_batch, log_path, ema)
