"""The command line shared by ``pathsegmentor train`` and ``pathsegmentor distill``: the arguments
(``--config``, ``--output-dir``, ``--resume``, ``key=value`` overrides), recipe + overrides -> run ->
JSON summary, and the ``(run, main)`` pair of a training command."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence

from ..modeling.config import ConfigError


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
