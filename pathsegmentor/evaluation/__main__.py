"""``python -m pathsegmentor.evaluation`` (torchrun for several processes), as ``pathsegmentor evaluate``."""
import sys

from .evaluate import main

sys.exit(main())
