"""Write a model's inference settings from a YAML file into its ``config.json`` (the recipe's decisions, so the shipped
config is produced by a command, not by hand).

    python -m pathsegmentor.evaluation.settings MODEL_DIR configs/inference/tiny-v4.yaml

Every key must be a field of :class:`~pathsegmentor.modeling.config.InferenceConfig`; the merged section is
validated by building the config before anything is written, and the file is replaced atomically.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import yaml


def apply_settings(model_dir: str | Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Merge ``settings`` into ``model_dir/config.json``'s ``inference`` section; returns the new section.

    Raises:
        FileNotFoundError: ``model_dir`` holds no ``config.json``.
        ConfigError: a key is not an inference setting (the valid keys are listed) or a value has the wrong type.
    """
    from ..modeling.config import ConfigError, InferenceConfig, from_dict

    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"'{model_dir}' holds no config.json; pass a model directory (save_pretrained output)")
    valid = set(InferenceConfig.__dataclass_fields__)
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ConfigError(f"{unknown} are not inference settings. Valid keys: {sorted(valid)}")
    cfg = json.loads(path.read_text())
    section = {**cfg.get("inference", {}), **settings}
    from_dict(InferenceConfig, section, where=f"{path} inference")  # type check before writing
    cfg["inference"] = section
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(cfg, indent=2) + "\n")
    os.replace(tmp, path)
    return section


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="model directory (config.json + model.safetensors)")
    ap.add_argument("settings", help="YAML mapping of inference settings")
    args = ap.parse_args(argv)
    data = yaml.safe_load(Path(args.settings).read_text()) if Path(args.settings).is_file() else None
    if not isinstance(data, dict):
        print(f"error: '{args.settings}' is not a YAML mapping of inference settings", file=sys.stderr)
        return 2
    try:
        section = apply_settings(args.model, data)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(section, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
