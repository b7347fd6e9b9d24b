"""Weight averaging of models of one lineage (a "model soup"): ``python -m pathsegmentor.training.average``.

    python -m pathsegmentor.training.average runs/tiny-v4-weights runs/tiny-v5/model --out runs/tiny-v45 \
        [--weights 0.5 0.5]

Two runs that continue one another (v5 continues v4) sit in one basin, so the average of their weights is a model of
its own, often better than either where one traded something for another. Every tensor of the same name and shape is
averaged with the given weights (buffers too: batch-norm statistics; integer buffers such as
``num_batches_tracked`` are taken from the last model). The config is the last model's, with its ``inference`` section
kept as is: recalibrate and rebuild it (``make calibrate-tiny settings-tiny MODEL=...``) before shipping.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch


def average_state_dicts(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """``sum_i weights[i] * states[i][k]`` for every key ``k`` (floating tensors; others from the last state).

    Raises ValueError naming the first key that is missing from a state or differs in shape, and when ``weights``
    does not match ``states`` or does not sum to 1."""
    if len(states) < 2 or len(weights) != len(states):
        raise ValueError(f"average needs >= 2 models and one weight each; got {len(states)} models, "
                         f"weights {weights}")
    if abs(sum(weights) - 1.0) > 1e-6 or min(weights) < 0:
        raise ValueError(f"weights {weights} must be >= 0 and sum to 1 (e.g. --weights 0.5 0.5)")
    keys = list(states[-1])
    for i, s in enumerate(states):
        missing = sorted(set(keys) ^ set(s))
        if missing:
            raise ValueError(f"model {i} does not have the same tensors as the last one (first difference: "
                             f"{missing[0]!r}); only models of one architecture can be averaged")
        for k in keys:
            if s[k].shape != states[-1][k].shape:
                raise ValueError(f"tensor {k!r} has shape {tuple(s[k].shape)} in model {i} but "
                                 f"{tuple(states[-1][k].shape)} in the last model")
    out = {}
    for k in keys:
        if states[-1][k].is_floating_point():
            out[k] = sum(w * s[k].double() for w, s in zip(weights, states)).to(states[-1][k].dtype)
        else:
            out[k] = states[-1][k].clone()
    return out


def average_models(dirs: list[str | Path], out: str | Path, weights: list[float] | None = None) -> Path:
    """Average the ``model.safetensors`` of model directories ``dirs`` into ``out`` (config.json from the last).
    Writes nothing when a directory or a tensor does not match (the error names it)."""
    from safetensors.torch import load_file, save_file

    dirs = [Path(d) for d in dirs]
    for d in dirs:
        if not (d / "model.safetensors").is_file() or not (d / "config.json").is_file():
            raise FileNotFoundError(f"'{d}' holds no config.json + model.safetensors; pass model directories "
                                    "(save_pretrained output)")
    weights = weights or [1.0 / len(dirs)] * len(dirs)
    avg = average_state_dicts([load_file(str(d / "model.safetensors")) for d in dirs], weights)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(avg, str(out / "model.safetensors"), metadata={"averaged_from": json.dumps(
        [{"model": str(d), "weight": w} for d, w in zip(dirs, weights)])})
    shutil.copyfile(dirs[-1] / "config.json", out / "config.json")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="model directories of one architecture (config.json + model.safetensors)")
    ap.add_argument("--out", required=True, help="directory for the averaged model")
    ap.add_argument("--weights", nargs="*", type=float, default=None,
                    help="one per model, summing to 1 (default equal)")
    args = ap.parse_args(argv)
    try:
        path = average_models(args.models, args.out, args.weights)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"averaged {len(args.models)} models into {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
