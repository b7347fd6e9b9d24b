"""The ``pathsegmentor`` command line (console script ``pathsegmentor = pathsegmentor.cli:main``).

Subcommands: ``segment`` (:mod:`.segment`), ``demo`` (:mod:`.demo`), ``list-models`` and ``info``
(:mod:`.info`), ``vocabulary`` (:mod:`.vocabulary`), with the parser in :mod:`.parser`; ``train``,
``evaluate``, ``distill``, ``slide`` (and any added with :func:`register_subcommand`) live in their
own modules, each exposing ``add_arguments(parser)`` and ``run(args) -> int``, imported only when
their command runs (:mod:`.external`). Model loading is in :mod:`.loading`, the shared output
staging in :mod:`.outputs`. Nothing heavy (torch, segment_anything, transformers) is imported at
module level, so ``pathsegmentor --help`` answers at once.

Exit codes: 0 success, 1 runtime failure (weights, checkpoint, model errors), 2 bad usage or input
(:mod:`.errors`). Outputs are written into a staging folder beside ``--out`` and moved in only after
every image succeeded, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import sys
from typing import Sequence

from ..resources import SAMPLES_DIR
from .demo import DEMO_PROMPTS, cmd_demo, load_samples
from .errors import RunError, UsageError
from .external import SUBCOMMANDS, ExternalCommand, _run_external, register_subcommand
from .info import cmd_info, cmd_list_models, parameter_counts, weight_sources
from .loading import DEFAULT_MODEL, load_model
from .outputs import slugify
from .parser import build_parser
from .segment import cmd_segment

__all__ = ["DEFAULT_MODEL", "DEMO_PROMPTS", "SAMPLES_DIR", "SUBCOMMANDS", "ExternalCommand", "RunError",
           "UsageError", "build_parser", "cmd_demo", "cmd_info", "cmd_list_models", "cmd_segment",
           "load_model", "load_samples", "main", "parameter_counts", "register_subcommand", "slugify",
           "weight_sources"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (``sys.exit(main())``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "external", None):
            return _run_external(args.external, list(args.rest))
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"pathsegmentor {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"pathsegmentor {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130
