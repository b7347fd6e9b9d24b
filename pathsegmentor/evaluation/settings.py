"""Write a model's whole ``inference`` section from its recipe's decisions and its calibrations, with where each value
came from, so the shipped config is produced by a command and can be rebuilt and compared (tests/test_settings.py).

    python -m pathsegmentor.evaluation.settings MODEL_DIR configs/inference/tiny-v10.yaml \\
        --calibration MODEL_DIR/presence_calibration_train.json

The section is rebuilt from scratch: :class:`~pathsegmentor.modeling.inference_config.InferenceConfig`'s defaults, then
every key of the settings YAML (each line's ``# comment`` is kept as its reason), then the calibrated values
(``presence_threshold`` from ``python -m pathsegmentor.evaluation.presence --out``). Whatever the section held before
is replaced, so no hand edit survives. ``config.json``'s ``provenance`` records the source of every value that is not
a default (``pathsegmentor info MODEL`` prints them). The config is validated before anything is written, and the
file is replaced atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

import yaml


def recipe_settings(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A settings YAML -> (values, ``{key: "recipe: PATH: its comment"}``). ValueError if it is not a mapping."""
    text = Path(path).read_text()
    data = yaml.safe_load(text)
    if not isinstance(data, dict):
        raise ValueError(f"'{path}' is not a YAML mapping of inference settings (key: value per line)")
    comments = {m.group(1): m.group(2).strip() for m in re.finditer(r"^(\w+)\s*:[^#\n]*#\s*(.*)$", text, re.M)}
    sources = {k: f"recipe: {Path(path).as_posix()}" + (f": {comments[k]}" if k in comments else "") for k in data}
    return data, sources


def calibration_settings(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A presence calibration JSON (``evaluation.presence --out``) -> (``{"presence_threshold": t}``, its source)."""
    data = json.loads(Path(path).read_text())
    return calibrated_threshold(data.get("summary", data) if isinstance(data, dict) else None, Path(path).name)


def calibrated_threshold(data: dict | None, name: str) -> tuple[dict[str, Any], dict[str, str]]:
    """A presence calibration summary (``{"split", "calibrated": {"threshold", "mcc"}}``) from the file ``name`` ->
    (``{"presence_threshold": t}``, its source)."""
    path = name
    cal = data.get("calibrated") if isinstance(data, dict) else None
    if not isinstance(cal, dict) or "threshold" not in cal:
        raise ValueError(f"'{path}' holds no 'calibrated.threshold'; write it with python -m "
                         f"pathsegmentor.evaluation.presence MODEL --data CORPUS --split train --out {path}")
    how = f"calibration: {name}: maximises presence MCC on the '{data.get('split', '?')}' split"
    if "mcc" in cal:
        how += f" (MCC {cal['mcc']})"
    return {"presence_threshold": round(float(cal["threshold"]), 4)}, {"presence_threshold": how}


def build_inference(recipe: str | Path | None = None,
                    calibration: str | Path | None = None) -> tuple[dict[str, Any], dict[str, str]]:
    """(the whole ``inference`` section, ``provenance``) from the defaults, the recipe's settings YAML and the
    calibration file (each optional). ConfigError names a key that is not an inference setting, or a bad value."""
    from ..modeling.config import ConfigError, InferenceConfig, from_dict

    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for path, read in ((recipe, recipe_settings), (calibration, calibration_settings)):
        if path is None:
            continue
        v, s = read(path)
        unknown = sorted(set(v) - set(InferenceConfig.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"{unknown} in '{path}' are not inference settings. Valid keys: "
                              f"{sorted(InferenceConfig.__dataclass_fields__)}")
        values.update(v)
        sources.update(s)
    cfg = from_dict(InferenceConfig, values, where="inference")
    cfg.check()
    section = json.loads(json.dumps(asdict(cfg)))  # tuples as lists, as config.json holds them
    return section, {f"inference.{k}": sources[k] for k in sorted(sources)}


def write_inference(model_dir: str | Path, recipe: str | Path | None = None,
                    calibration: str | Path | None = None) -> dict[str, Any]:
    """Replace ``model_dir/config.json``'s ``inference`` section and its ``provenance`` entries with
    :func:`build_inference`'s; returns the new section. FileNotFoundError if there is no config.json."""
    section, provenance = build_inference(recipe, calibration)
    _write_config(model_dir, section, provenance, replace=True)
    return section


def merge_inference(model_dir: str | Path, values: dict[str, Any], sources: dict[str, str]) -> dict[str, Any]:
    """Set some inference ``values`` (with their ``sources``) in ``model_dir/config.json``, keeping the others (a
    user calibrating a model that has no recipe file: ``evaluation.presence --write``); returns the new section."""
    from ..modeling.config import InferenceConfig, from_dict

    cfg = json.loads(_config_path(model_dir).read_text())
    merged = from_dict(InferenceConfig, {**cfg.get("inference", {}), **values}, where="inference")
    merged.check()
    section = json.loads(json.dumps(asdict(merged)))
    _write_config(model_dir, section, {f"inference.{k}": v for k, v in sources.items()}, replace=False)
    return section


def _config_path(model_dir: str | Path) -> Path:
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{model_dir}' holds no config.json; pass a model directory (save_pretrained output)")
    return path


def _write_config(model_dir: str | Path, section: dict[str, Any], provenance: dict[str, str], *,
                  replace: bool) -> None:
    """``section`` as the config's ``inference``; ``provenance`` replaces every ``inference.*`` entry (``replace``)
    or the given keys only. Validated as a whole before the atomic write."""
    from ..modeling.config import ModelConfig

    path = _config_path(model_dir)
    cfg = json.loads(path.read_text())
    cfg["inference"] = section
    kept = {k: v for k, v in (cfg.get("provenance") or {}).items()
            if not (k.startswith("inference.") if replace else k in provenance)}
    cfg["provenance"] = dict(sorted({**kept, **provenance}.items()))
    ModelConfig.from_dict(cfg, where=str(path))  # the whole config still loads
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model directory (config.json + model.safetensors)")
    ap.add_argument("settings", help="YAML mapping of the recipe's inference settings (configs/inference/*.yaml)")
    ap.add_argument("--calibration", help="presence calibration JSON (python -m pathsegmentor.evaluation.presence "
                                          "... --out FILE)")
    args = ap.parse_args(argv)
    for f in (args.settings, args.calibration):
        if f is not None and not Path(f).is_file():
            print(f"error: '{f}' does not exist", file=sys.stderr)
            return 2
    try:
        section = write_inference(args.model, args.settings, args.calibration)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(section, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
