"""``python -m pathsegmentor.cli``: the same as the ``pathsegmentor`` console script."""
import sys

from . import main

sys.exit(main())
