"""Every rule of inference in one place: :class:`InferenceConfig`, the ``inference`` section of a model's config.json.

``segment()``, whole slides (:func:`pathsegmentor.slide.segment_slide`), the web viewer and evaluation all read their
rules from here through one :class:`~pathsegmentor.inference.predictor.Predictor`; nothing in the inference layer
keeps a threshold, a size or a decoder parameter of its own. A shipped model's values are written by its recipe and
calibration commands (``python -m pathsegmentor.evaluation.settings``), which also record where each value came
from (``ModelConfig.provenance``; ``pathsegmentor info MODEL`` prints both).

Sizes are in microns where they are physical; a pixel value is in *working* pixels, i.e. at the µm/px the prompt's
concept is segmented at (``preprocess.structure_mpp``: nuclei at 0.25, glands and tissue at 0.5), so it too is a
fixed physical size per structure, rescaled wherever a mask is decoded at another µm/px (whole slides).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

INSTANCE_DECODERS = ("auto", "hv", "distance", "border", "watershed")
GEOMETRIC_MODES = ("learned", "instances")
GEOMETRIC_BOX_RULES = ("best_instance", "contained_instances", "component", "mask")


@dataclass
class InferenceConfig:
    """The inference rules of one model (field docstrings below; ``pathsegmentor info`` prints them all)."""

    mask_threshold: float = 0.5
    """Probability above which a pixel is in the mask, in (0, 1)."""
    presence_threshold: float = 0.5
    """Presence gate, in [0, 1]: a prompt whose presence is below it gets an empty mask, and each window (tile, slide
    band window, viewer view) contributes no mask pixels for a prompt whose presence in that window is below it."""
    tile_overlap: int = 128
    """Overlap (model input pixels) between the windows of an image larger than one input, and of whole slides."""
    prompt_similarity: float = 0.0
    """Cosine threshold of the nearest-concept step of prompt resolution; 0: calibrated on the ontology itself."""
    instances: str = "auto"
    """Instance decoder of instance concepts: ``"auto"`` (the separation maps when the model predicts them, else
    ``"watershed"``), ``"hv"`` (centre offsets), ``"distance"`` (border distance), ``"border"`` (thick-border map,
    models with 4 separation maps) or ``"watershed"`` (of the binary mask)."""
    instance_min_area_px: int = 4
    """Smallest instance kept by the decoders, in working pixels (4 px at 0.25 µm/px = 0.25 µm² for nuclei)."""
    instance_distance_core: dict[str, float] = field(default_factory=lambda: {"default": 0.45})
    """Core threshold, in [0, 1], of the ``"distance"`` decoder per ontology object type (``"nucleus"``, ``"gland"``,
    ...; ``"default"`` for the others): connected pixels whose predicted border distance exceeds it seed one object
    each. Lower splits less (large glands with a narrow neck stay whole), higher splits more."""
    instance_min_object_um2: dict[str, float] = field(default_factory=lambda: {"default": 0.0})
    """Smallest object (µm², >= 0) reported as an instance, per ontology object type (``"default"`` for the others):
    smaller pieces the decoder leaves (fragments of a gland cut off by its cores, specks) are not counted as objects,
    while the mask keeps their pixels. 0: only :attr:`instance_min_area_px` applies."""
    instance_watershed_h_px: float = 1.5
    """Seed height (h-maxima of the distance transform, working pixels) of the ``"watershed"`` decoder."""
    instance_object_types: tuple[str, ...] = ("nucleus", "cell", "gland")
    """Ontology object types whose prompts are separated into instances (``res.instances``, slide object tables)."""
    max_cell_component_um2: float = 0.0
    """Largest connected part (µm²) a nucleus/cell mask keeps; larger ones are ink, pigment or debris, not a cluster
    of nuclei. Applied to masks and instances in ``segment()``, to slide mask TIFFs and object tables. 0: no limit."""
    size_limit_object_types: tuple[str, ...] = ("nucleus", "cell")
    """Ontology object types :attr:`max_cell_component_um2` applies to."""
    geometric_window: int = 0
    """Side (working pixels) of the one window a point/box prompt runs in, centred on it (the crop size prompts were
    trained at); 0: the whole image when it fits in one input window."""
    geometric_mode: str = "learned"
    """How a point/box prompt is answered: ``"learned"`` (the prompt encoder's point/box tokens through the decoder)
    or ``"instances"`` (the model's text-prompted instance under the point / filling the box)."""
    geometric_box: str = "best_instance"
    """With ``geometric_mode="instances"``, how a box alone picks its object: ``"best_instance"`` (the instance whose
    bounding box best overlaps it), ``"contained_instances"``, ``"component"`` (the largest part of the mask inside
    it, holes filled) or ``"mask"`` (the mask inside it)."""
    geometric_concepts: tuple[str, ...] = ("nuclei", "gland")
    """Concepts a point or box alone is answered as, finest first: a point takes the first the model answers, a box
    of at most :attr:`geometric_cell_box_um` the first, a larger box the second."""
    geometric_cell_box_um: float = 25.0
    """A box alone whose longer side is at most this many µm frames a cell (it runs at the cells' µm/px)."""
    geometric_near_um: float = 3.0
    """A point this close (µm) to an object counts as on it (a click on a rim the predicted mask misses)."""
    geometric_contained_fraction: float = 0.5
    """``geometric_box="contained_instances"``: an instance with at least this fraction of its area inside the box."""
    tissue_min_saturation: float = 0.05
    """Whole slides: the tissue filter's lowest saturation threshold (Otsu on the thumbnail's saturation, never
    below this, so an all-glass slide has no tissue); windows without tissue are not run."""
    tissue_dark: int = 40
    """Whole slides: thumbnail pixels darker than this (0-255; pen marks, scanner borders) are not tissue."""
    tissue_min_um2: float = 2500.0
    """Whole slides: tissue pieces smaller than this (µm², on the thumbnail) are dust or specks, not tissue."""

    def check(self, where: str = "inference") -> None:
        """Raise :class:`ValueError` naming the field, its value and the valid range, for a value out of range."""
        def bad(name: str, valid: str) -> None:
            raise ValueError(f"{where}.{name} is {getattr(self, name)!r}; {valid} (set it in the model's config.json "
                             f"'inference' section, or pass it to segment())")

        for name in ("mask_threshold", "presence_threshold", "geometric_contained_fraction"):
            if not 0.0 <= float(getattr(self, name)) <= 1.0:
                bad(name, "it must be in [0, 1]")
        if self.instances not in INSTANCE_DECODERS:
            bad("instances", f"available: {list(INSTANCE_DECODERS)}")
        if self.geometric_mode not in GEOMETRIC_MODES:
            bad("geometric_mode", f"available: {list(GEOMETRIC_MODES)}")
        if self.geometric_box not in GEOMETRIC_BOX_RULES:
            bad("geometric_box", f"available: {list(GEOMETRIC_BOX_RULES)}")
        if len(self.geometric_concepts) != 2:
            bad("geometric_concepts", "it must name two concepts, e.g. ['nuclei', 'gland'] (cell-sized, larger)")
        core = self.instance_distance_core
        if not isinstance(core, dict) or "default" not in core or \
                not all(isinstance(v, (int, float)) and 0.0 <= float(v) <= 1.0 for v in core.values()):
            bad("instance_distance_core", "it must map object types (and 'default') to values in [0, 1], "
                "e.g. {'default': 0.45, 'gland': 0.35}")
        small = self.instance_min_object_um2
        if not isinstance(small, dict) or "default" not in small or \
                not all(isinstance(v, (int, float)) and float(v) >= 0.0 for v in small.values()):
            bad("instance_min_object_um2", "it must map object types (and 'default') to areas >= 0 in µm², "
                "e.g. {'default': 0.0, 'gland': 1000.0}")
        for name in ("tile_overlap", "geometric_window", "instance_min_area_px", "tissue_dark"):
            if int(getattr(self, name)) < 0:
                bad(name, "it must be >= 0")
        for name in ("instance_watershed_h_px", "max_cell_component_um2", "geometric_cell_box_um", "geometric_near_um",
                     "tissue_min_saturation", "tissue_min_um2", "prompt_similarity"):
            if float(getattr(self, name)) < 0:
                bad(name, "it must be >= 0")


def inference_field_docs() -> dict[str, str]:
    """``{field: its docstring's first sentence}`` of :class:`InferenceConfig`, read from this module's source."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(InferenceConfig))
    body = tree.body[0].body
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            text = " ".join(str(nxt.value.value).split())
            docs[node.target.id] = text.split(". ")[0].rstrip(".") + "."
    missing = [f.name for f in fields(InferenceConfig) if f.name not in docs]
    if missing:
        raise RuntimeError(f"InferenceConfig fields without a docstring: {missing}")
    return docs


__all__ = ["InferenceConfig", "inference_field_docs", "INSTANCE_DECODERS", "GEOMETRIC_MODES", "GEOMETRIC_BOX_RULES"]
