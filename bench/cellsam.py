"""CellSAM on this machine: deployment-mode speed and a short distillation run.

1. Time per 1024x1024 tile of ``model.segment(tile, "nuclei")`` for ``cellsam-vit-b`` (SAM ViT-B
   teacher with fast attention, resnet18 student; random weights) in student, teacher and fused
   mode, reported as ratios to student mode measured in the same run.
2. A short distillation (``pathsegmentor.training.distillation``) on the shared real data: resnet18 student,
   random ViT-B teacher built at ``--crop`` px (the teacher's cost at 1024 px would not fit a few
   minutes on a CPU), whole images held out; the student's embedding cosine similarity to the teacher's
   on held-out tiles before and after, beside a constant predictor (the mean teacher embedding of
   the training tiles), which tells how much of the similarity is just the teacher's mean.

    python bench/cellsam.py [--reps 1] [--steps 40] [--tiles 80] [--holdout-tiles 20] [--crop 224]

Prints a table and a last line of figures; never asserts times.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
FOLDERS = [("monuseg/MoNuSegTrainingData/Tissue_Images", 0.25), ("glas/images", 0.5), ("consep/images", 0.25)]


def time_modes(reps: int) -> dict[str, float]:
    import numpy as np
    import torch

    from pathsegmentor import create_model

    torch.manual_seed(0)
    model = create_model("cellsam-vit-b").eval()
    tile = np.random.default_rng(0).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    model.set_mode("student").segment(tile[:64, :64], "nuclei")  # warm-up (text cache, allocator)
    model.predictor.cache.max_bytes = 0  # no image-encoding cache: every timed call encodes the tile
    times = {}
    for mode in ("student", "teacher", "fused"):
        model.set_mode(mode)
        n = reps * 3 if mode == "student" else reps
        t0 = time.perf_counter()
        for _ in range(n):
            res = model.segment(tile, "nuclei")
        times[mode] = (time.perf_counter() - t0) / n
        assert res.masks.shape == (1, 1024, 1024)
    return times


def distill(args, out: Path) -> dict:
    import torch
    from safetensors import safe_open

    from pathsegmentor.training.distillation import load_distill_config, run_distillation

    overrides = [f"output_dir={out}", "model.name=cellsam-vit-b",
                 f"model.overrides={{'preprocess.input_size': {args.crop}}}",
                 "data.folders=" + json.dumps([{"path": str(SHARED / f), "mpp": m} for f, m in FOLDERS]),
                 f"data.crop={args.crop}", "data.holdout=0.15", f"data.max_tiles={args.tiles}",
                 f"data.holdout_max_tiles={args.holdout_tiles}", "optim.lr=0.001", "optim.warmup_steps=5",
                 "optim.schedule=cosine", f"train.steps={args.steps}", "train.batch_size=8",
                 f"train.save_every={args.steps}", "train.log_every=5"]
    cfg = load_distill_config(None, overrides)
    summary = run_distillation(cfg)
    # constant predictor: the mean teacher embedding of the training tiles, scored on the held-out ones
    held = set(summary["holdout_images"])
    train_emb, hold_emb = [], []
    for f in sorted((out / "teacher_cache").glob("*/*.safetensors")):
        with safe_open(str(f), "pt") as h:
            key = h.metadata()["key"]
            emb = h.get_tensor("embedding").float()
        (hold_emb if Path(key.split("|")[0]).name in held else train_emb).append(emb)
    mean = torch.stack(train_emb).mean(0, keepdim=True)
    hold = torch.stack(hold_emb)
    summary["holdout_mean_predictor_cosine"] = float(torch.nn.functional.cosine_similarity(
        mean.expand_as(hold), hold, dim=1).mean())
    summary["loss_curve"] = [float(r.split(",")[3]) for r in (out / "distill_log.csv").read_text().splitlines()[1:]]
    return summary


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reps", type=int, default=1, help="timed 1024² tiles per mode (student: 3x)")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--tiles", type=int, default=80, help="training tiles (subsampled from the grid)")
    p.add_argument("--holdout-tiles", type=int, default=20)
    p.add_argument("--crop", type=int, default=224, help="distillation tile size = teacher input size")
    p.add_argument("--skip-speed", action="store_true")
    p.add_argument("--skip-distill", action="store_true")
    args = p.parse_args(argv)
    from pathsegmentor._compat import ensure_torchvision

    ensure_torchvision()
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device cpu")
    figures = []
    t_start = time.perf_counter()
    if not args.skip_speed:
        t = time_modes(args.reps)
        print("\n| mode    | s / 1024² tile | x student |\n|---------|---------------:|----------:|")
        for mode in ("student", "teacher", "fused"):
            print(f"| {mode:<7} | {t[mode]:14.2f} | {t[mode] / t['student']:9.1f} |")
        figures += [f"student {t['student']:.2f}s/tile", f"teacher/student {t['teacher'] / t['student']:.1f}x",
                    f"fused/student {t['fused'] / t['student']:.1f}x"]
    if not args.skip_distill:
        if not all((SHARED / f).is_dir() for f, _ in FOLDERS):
            print(f"\nshared data not found under {SHARED}: distillation part skipped")
        else:
            with tempfile.TemporaryDirectory() as d:
                s = distill(args, Path(d) / "distill")
            b, a = s["holdout_before"], s["holdout_after"]
            print(f"\nDistillation: random SAM ViT-B teacher at {args.crop}px -> resnet18 student, {s['steps']} steps x 8 "
                  f"tiles, {s['train_tiles']} training tiles, {s['holdout_tiles']} held-out tiles from "
                  f"{len(s['holdout_images'])} held-out images; {s['teacher_calls']} teacher forwards for "
                  f"{s['cache_misses']} tiles ({s['cache_hits']} cache hits), {s['wall_s']:.0f}s")
            print("\n| held-out tiles                  | cosine sim | MSE    |\n|---------------------------------|-----------:|-------:|")
            print(f"| student before distillation     | {b['cosine_similarity']:10.3f} | {b['mse']:.4f} |")
            print(f"| student after distillation      | {a['cosine_similarity']:10.3f} | {a['mse']:.4f} |")
            print(f"| constant: mean train embedding  | {s['holdout_mean_predictor_cosine']:10.3f} |        |")
            curve = s["loss_curve"]
            print(f"train loss (every 5 steps): {', '.join(f'{x:.3f}' for x in curve)}")
            figures += [f"holdout cosine {b['cosine_similarity']:.3f}->{a['cosine_similarity']:.3f}",
                        f"mean-predictor {s['holdout_mean_predictor_cosine']:.3f}"]
    figures.append(f"total {time.perf_counter() - t_start:.0f}s")
    print("\n" + "; ".join(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
