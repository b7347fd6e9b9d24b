"""From an image and phrases to full-resolution masks: image reading, prompt grounding, windows and tiles,
the result, overlays, instances. Takes the model as an argument; imports nothing of :mod:`pathsegmentor.modeling`."""
