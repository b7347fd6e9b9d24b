"""``python -m pathsegmentor.training`` (torchrun / accelerate launch): segmentation training, as
``pathsegmentor train``. CellSAM distillation: ``python -m pathsegmentor.training.distillation``."""
import sys

from .segmentation import main

sys.exit(main())
