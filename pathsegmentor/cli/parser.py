"""The top-level argument parser: the built-in subcommands ``segment``, ``demo``, ``list-models`` and
``info`` with their options, plus a pass-through entry for each subcommand in
:data:`~pathsegmentor.cli.external.SUBCOMMANDS` (its own module parses the rest)."""
from __future__ import annotations

import argparse
from typing import Callable

from .demo import DEMO_PROMPTS, cmd_demo
from .external import SUBCOMMANDS
from .info import cmd_info, cmd_list_models
from .vocabulary import cmd_vocabulary
from .loading import DEFAULT_MODEL
from .segment import cmd_segment


def _mpp_or_auto(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    return _float_range(0.0, 100.0, "--mpp")(text)


def _float_range(lo: float | None = None, hi: float | None = None, name: str = "value") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if v != v or (lo is not None and v <= lo) or (hi is not None and v > hi):
            rng = f"({lo}, {hi}]" if hi is not None else f"> {lo}"
            raise argparse.ArgumentTypeError(f"{name} must be in {rng}, got {text}")
        return v

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathsegmentor",
        description="Text-prompted segmentation of pathology images.",
        epilog="Example: pathsegmentor segment tile.png --prompt 'tumor nuclei' --prompt gland --mpp 0.25 --out results/",
    )
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"pathsegmentor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="segment image files for one or more text prompts",
                       description="Per image: one mask PNG per prompt (0/255), an overlay PNG and a JSON summary.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, TIFF, ...)")
    p.add_argument("--prompt", "-p", action="append", metavar="P",
                   help="a text prompt such as 'tumor nuclei'; repeat for several")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME_OR_DIR",
                   help=f"registered model name, model directory or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--mpp", type=_mpp_or_auto, default=None,
                   help="microns per pixel of the images (e.g. 0.25 at 40x), or 'auto' to estimate it from each "
                        "image (reported); images are rescaled to each prompt's working mpp")
    p.add_argument("--mask-threshold", type=_float_range(0.0, 1.0, "--mask-threshold"), default=None,
                   help="probability above which a pixel is in the mask (default: the model's)")
    p.add_argument("--presence-threshold", type=float, default=None,
                   help="presence probability below which a prompt's mask is left empty (default: the model's)")
    p.add_argument("--no-hires", dest="hires", action="store_const", const=False, default=None,
                   help="switch off the high-resolution mask path")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="a box prompt in image pixels (XYXY), combined with every text prompt")
    p.add_argument("--vocabulary", choices=["model", "open"], default="model",
                   help="model (default): ground prompts in the ontology, refuse what the model was not trained "
                        "on; open: send raw text to the text tower, unchecked (research)")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment the bundled real sample tiles (the README's main job)",
                       description=f"Segments the bundled tiles (pathsegmentor/samples) for {list(DEMO_PROMPTS)} at "
                                   f"each tile's mpp; writes overlays, masks and summaries.")
    p.add_argument("--out", "-o", default="outputs/demo", metavar="DIR", help="output directory (default: outputs/demo)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME_OR_DIR",
                   help=f"model name, directory or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--prompt", "-p", action="append", metavar="P", help="replace the demo prompts")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list-models", help="list the registered model variants")
    p.set_defaults(func=cmd_list_models)

    p = sub.add_parser("info", help="configuration, parameter counts and weight locations of a model")
    p.add_argument("model", metavar="MODEL", help="registered model name or model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("vocabulary", help="what a model can be asked for (trained concepts, validation Dice)")
    p.add_argument("model", nargs="?", default=None, metavar="MODEL",
                   help=f"registered model name or model directory (default: {DEFAULT_MODEL})")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_vocabulary)

    for name, cmd in SUBCOMMANDS.items():
        # arguments are defined by the module itself, parsed once it is imported (see _run_external)
        p = sub.add_parser(name, help=cmd.help, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, external=name)
    return parser

