"""Training with Accelerate: recipes, data and augmentation, losses, checkpoints, the one loop
(:mod:`.trainer`) and its objectives (:mod:`.segmentation`, :mod:`.distillation`)."""
