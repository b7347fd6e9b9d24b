"""Subcommands served by other modules (``train``, ``evaluate``, ``distill``, ``slide``, ``serve``, and any added
with :func:`register_subcommand`): the table, and the dispatcher that imports a command's module only
when it runs, builds its parser from ``add_arguments(parser)`` and calls ``run(args) -> int``."""
from __future__ import annotations

import argparse
from dataclasses import dataclass

from .errors import RunError


@dataclass(frozen=True)
class ExternalCommand:
    module: str
    help: str


SUBCOMMANDS: dict[str, ExternalCommand] = {
    "train": ExternalCommand("pathsegmentor.training.segmentation", "fine-tune or pre-train a model (Accelerate)"),
    "evaluate": ExternalCommand("pathsegmentor.evaluation.evaluate", "evaluate a model on labelled images"),
    "distill": ExternalCommand("pathsegmentor.training.distillation", "CellSAM: distil the large image encoder into a light one"),
    "slide": ExternalCommand("pathsegmentor.slide.cli", "segment a whole-slide image"),
    "serve": ExternalCommand("pathsegmentor.serve.cli", "local web viewer: segment tiles and slides by typing"),
}


def register_subcommand(name: str, module: str, help: str = "") -> None:
    """Add a subcommand served by ``module`` (which defines ``add_arguments(parser)`` and ``run(args)``)."""
    SUBCOMMANDS[name] = ExternalCommand(module, help)


def _run_external(name: str, argv: list[str]) -> int:
    import importlib

    cmd = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(cmd.module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if cmd.module == missing or cmd.module.startswith(missing + "."):
            raise RunError(f"'pathsegmentor {name}' is not available in this installation: its module "
                           f"'{cmd.module}' is missing. Update pathsegmentor (pip install -U pathsegmentor) "
                           f"or install from a source checkout that has it.") from None
        raise RunError(f"'pathsegmentor {name}' needs the package '{missing}', which is not installed: "
                       f"pip install {missing.split('.')[0]} (or pip install 'pathsegmentor[train]').") from None
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise RunError(f"'{cmd.module}' does not define {attr}(); it cannot serve 'pathsegmentor {name}'.")
    parser = argparse.ArgumentParser(prog=f"pathsegmentor {name}", description=cmd.help or None)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    return int(module.run(args) or 0)
