"""The networks: config, registry, plug-ins, image encoders, text towers, prompt adapter, SAM mask decoder,
building, weights I/O and the :class:`~pathsegmentor.modeling.model.PathSegmentorNetwork` module
(see ARCHITECTURE.md)."""
