"""``pathsegmentor-launch``: the ``accelerate`` CLI, made to work beside a CPU-only torch.

``accelerate``'s CLI imports timm at start-up, and timm imports torchvision, whose compiled ops do not
load beside a CPU torch build from the package registry. This entry point applies
:func:`pathsegmentor._compat.ensure_torchvision` first and then runs the unchanged accelerate CLI,
so ``pathsegmentor-launch launch --multi_gpu --num_processes 2 -m pathsegmentor.training ...`` works
everywhere ``accelerate launch ...`` does.
"""
from __future__ import annotations

import sys


def main() -> int:
    from .._compat import ensure_torchvision

    ensure_torchvision()
    from accelerate.commands.accelerate_cli import main as accelerate_main

    sys.argv[0] = "accelerate"
    return accelerate_main() or 0


if __name__ == "__main__":
    sys.exit(main())
