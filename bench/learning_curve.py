"""Learning curve of a training run: validation Dice and AJI (MoNuSeg nuclei, GlaS glands) against crops seen, for
the run's kept checkpoint weights, beside the plain U-Net baseline's curve.

    python bench/learning_curve.py --run runs/tiny-v4 [--baseline runs/baseline-unet/baseline_unet.json]

Weights: ``RUN/curve/step_*/model.safetensors`` (copies of each checkpoint's weights, kept while the run trains:
the loop itself keeps only the last two) and ``RUN/model`` (the end). Each is loaded into the run's architecture
(``RUN/train_config.yaml``: registered model + overrides) with the inference settings of the run's final model
(``RUN/model/config.json``, as calibrated and written after training; else the start weights' with the
architecture's own instance decoder, ``auto``), scored with ``segment()`` (no flips) through ``bench/objects.py``. Writes
``RUN/learning_curve.csv`` and ``RUN/learning_curve.png``; prints the table and a JSON last line.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from objects import model_counts, score_rows, validation_items  # noqa: E402

SOURCES = ("monuseg", "glas")


def _model_at(cfg, weights: Path, settings):
    from safetensors.torch import load_file

    from pathsegmentor import create_model

    model = create_model(cfg.model.name, overrides=cfg.model.overrides or None)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("text_encoder.")}
    missing, unexpected = model.load_state_dict(state, strict=False)
    bad = [k for k in missing if not k.startswith("text_encoder.")]
    if bad or unexpected:
        raise SystemExit(f"{weights}: does not match the run's architecture (missing {bad[:5]}, unexpected "
                         f"{unexpected[:5]})")
    model.config.inference = settings.inference
    model.config.vocabulary = settings.vocabulary
    return model.eval()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True)
    ap.add_argument("--data", default=str(REPO / "runs" / "pathseg-shared"))
    ap.add_argument("--baseline", default="", help="baseline_curve.json (or baseline_unet.json) of bench/baseline_unet.py")
    ap.add_argument("--every", type=int, default=1, help="score every n-th kept checkpoint")
    ap.add_argument("--limit", type=int, default=0, help="validation images per source (0: all)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--plot-only", action="store_true",
                    help="no scoring: redraw RUN/learning_curve.png from RUN/learning_curve.csv beside --baseline")
    args = ap.parse_args(argv)
    if args.plot_only:
        return _plot_only(Path(args.run), args.baseline)

    import torch
    import yaml

    from data_builders import load_pathseg
    from pathsegmentor import from_pretrained
    from pathsegmentor.training.segmentation import TrainConfig
    from pathsegmentor.modeling.config import from_dict

    torch.set_num_threads(args.threads)
    run = Path(args.run)
    cfg = from_dict(TrainConfig, yaml.safe_load((run / "train_config.yaml").read_text()), "train_config.yaml")
    init_cfg = from_pretrained(cfg.model.init_from).config if cfg.model.init_from else None
    if (run / "model" / "config.json").is_file():
        settings = from_pretrained(run / "model").config
    else:
        settings = dataclasses.replace(init_cfg, inference=dataclasses.replace(init_cfg.inference, instances="auto"))
    corpus = load_pathseg(args.data)
    items = list(validation_items(corpus, SOURCES, args.limit))
    per_step = cfg.train.batch_size * cfg.train.grad_accum
    points = sorted((int(d.name.split("_")[1]), d / "model.safetensors") for d in (run / "curve").glob("step_*"))
    points = points[::args.every]
    if (run / "model" / "model.safetensors").is_file():
        points.append((cfg.train.steps, run / "model" / "model.safetensors"))
    rows = []
    if init_cfg is not None:  # the start: the init weights as they are
        start = from_pretrained(cfg.model.init_from).eval()
        points.insert(0, (0, None))
    for step, weights in points:
        model = start if weights is None else _model_at(cfg, weights, settings)
        scored = score_rows(model_counts(model, items, name="model"))
        row = {"step": step, "crops": step * per_step}
        for r in scored:
            row[f"{r['source']}_dice"] = r["dice"]
            row[f"{r['source']}_aji"] = r.get("aji")
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(run / "learning_curve.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    base = json.loads(Path(args.baseline).read_text()).get("curve", []) if args.baseline else []
    _plot(rows, base, run / "learning_curve.png")
    print(json.dumps({"run": str(run), "curve": rows, "baseline_curve": base}))
    return 0


def _plot_only(run: Path, baseline: str) -> int:
    """Redraw the curve of an earlier scoring (``RUN/learning_curve.csv``) beside a (new) baseline curve."""
    with open(run / "learning_curve.csv", newline="") as f:
        rows = [{k: (float(v) if v not in ("", "None") else None) for k, v in r.items()} for r in csv.DictReader(f)]
    base = json.loads(Path(baseline).read_text()).get("curve", []) if baseline else []
    _plot(rows, base, run / "learning_curve.png")
    print(json.dumps({"run": str(run), "curve": rows, "baseline_curve": base}))
    return 0


def _plot(rows: list[dict], base: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("dice", "aji")):
        for src, colour in zip(SOURCES, ("tab:purple", "tab:green")):
            key = f"{src}_{metric}"
            ax.plot([r["crops"] for r in rows], [r.get(key) for r in rows], "-o", color=colour, label=f"model {src}")
            if base:
                ax.plot([r["crops"] for r in base], [r.get(key) for r in base], "--s", color=colour, alpha=0.6,
                        label=f"U-Net {src}")
        ax.set_xlabel("training crops seen (this run; the model started from earlier weights)")
        ax.set_ylabel(f"validation {metric.upper()}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
