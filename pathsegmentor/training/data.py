"""Training samples from the PathSeg corpus: scaled crops, augmentations, positive and negative prompts.

Each item is a pure function of ``(seed, position, image index)``: the sampler fixes which image a
position uses and the augmentation RNG is seeded by the position, so runs are exactly reproducible
and resumable (``skip_first_batches``) and every process of a distributed run sees its own shard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import (brightness_contrast, check_haematoxylin_gain, flip_rotate, haematoxylin_gain, hed_jitter,
                      log_uniform_jitter, random_scaled_crop)
from .pigment import check_pigment, paste_pigment
from .vesicular import check_vesicular, vesicular_crop
from .prompt_rows import PromptRows, choose_text_labels
from .prompt_sampling import GEOMETRIC_KINDS, blank_image, choose_geometric, negative_phrases, other_organ_concepts
from .sampling import PositionSampler, sampling_weights

__all__ = ["DataConfig", "PositionSampler", "PromptedCrops", "collate", "load_synonyms", "sampling_weights"]


@dataclass
class DataConfig:
    """Where the corpus is and how samples are drawn.

    ``balance``: ``"source"`` (every source drawn equally often), ``"category"`` (images weighted by
    the rarity of their categories), or ``"none"`` (uniform over images); ``source_weights`` then multiplies a
    source's share (``{monuseg: 2}``: twice as often; others keep 1).
    ``negatives_per_image``: prompts for categories the source annotates exhaustively but that are
    absent from the crop (target empty, presence 0). Categories a source does not annotate
    exhaustively are never used as negatives (the corpus' ``negative_labels`` already excludes them).
    ``ood_negatives_per_image`` / ``organ_negatives_per_image``: prompts from outside pathology and
    concepts of another organ than the crop's (certain negatives, :mod:`.prompt_sampling`);
    ``blank_prob``: chance that a crop is replaced by a blank input (glass, uniform colour, black) on
    which every prompt is absent. ``geometric_per_image``: of the P prompts, how many are geometric
    (``geometric_kinds``: box / point alone, or text with a box), drawn from instance ground truth.
    ``separation``: also return the separation-map targets of instance labels (models with a separation
    head). ``native_prob``: chance that a crop of an image of ``native_sources`` is cut at the image's own pixels
    instead of the working µm/px (scale jitter kept): what ``segment()`` sees when a user does not know the pixel
    size (``mpp=None``: nothing rescaled). 0 (default) draws nothing, so other recipes' crops are unchanged.
    ``pigment_prob``: chance that dark pigment is pasted into a crop, covering a fraction drawn from
    ``pigment_coverage``, every target cleared under it (:mod:`.pigment`); 0 (default) draws nothing.
    ``vesicular_prob``: chance that a crop's nuclei are made vesicular (chromatin cleared from the centre, the rim
    kept, labels unchanged; :mod:`.vesicular`), each with chance ``vesicular_fraction``, keeping a share of their
    central haematoxylin drawn from ``vesicular_centre``; 0 (default) draws nothing. ``h_gain_prob``: chance
    of a log-uniform haematoxylin gain from ``h_gain`` (:func:`.augment.haematoxylin_gain`).
    """

    corpus: str = ""
    train_split: str = "train"
    val_split: str = "validation"
    sources: list[str] = field(default_factory=list)  # empty: all
    crop: int = 256
    scale_jitter: float = 0.15
    prompts_per_image: int = 4
    negatives_per_image: int = 1
    synonym_prob: float = 0.3
    hed_sigma: float = 0.05
    hed_bias: float = 0.02
    brightness_contrast: float = 0.1
    balance: str = "source"
    source_weights: dict[str, float] = field(default_factory=dict)
    ood_negatives_per_image: int = 0
    organ_negatives_per_image: int = 0
    blank_prob: float = 0.0
    geometric_per_image: int = 0
    geometric_kinds: list[str] = field(default_factory=lambda: list(GEOMETRIC_KINDS))
    separation: bool = False
    num_workers: int = 0
    cache_decoded: bool = True  # decoded samples kept in memory
    native_prob: float = 0.0
    native_sources: list[str] = field(default_factory=list)
    pigment_prob: float = 0.0
    pigment_coverage: tuple[float, float] = (0.05, 0.35)
    vesicular_prob: float = 0.0
    vesicular_fraction: float = 0.5
    vesicular_centre: tuple[float, float] = (0.2, 0.6)
    h_gain_prob: float = 0.0
    h_gain: tuple[float, float] = (0.4, 1.6)


def load_synonyms(corpus_dir: str | Path) -> dict[str, list[str]]:
    """Category -> synonyms from the corpus' ontology snapshot (``ontology.yaml``), if any."""
    import yaml

    path = Path(corpus_dir) / "ontology.yaml"
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text()) or {}
    cats = data.get("categories", data) if isinstance(data, dict) else data
    out: dict[str, list[str]] = {}
    items = cats.items() if isinstance(cats, dict) else ((c.get("name"), c) for c in cats if isinstance(c, dict))
    for name, c in items:
        if isinstance(c, dict) and name:
            out[str(name)] = [str(s) for s in (c.get("synonyms") or [])]
    return out


class PromptedCrops(Dataset):
    """Map-style dataset over ``(position, image_index)`` keys produced by :class:`PositionSampler`.

    Returns a dict: ``pixels uint8 [3, c, c]``, ``target float [P, c, c]`` (0/1), ``valid bool
    [P, c, c]`` (False on ignored pixels), ``presence float [P]``, ``prompts`` list of P strings
    (``""`` for a geometric prompt without text), ``labels`` (canonical), ``source``; ``boxes float
    [P, 4]`` XYXY and ``points float [P, 2]`` XY in crop pixels (NaN where a row has none); with
    ``cfg.separation`` also ``sep_target float [P, K, c, c]`` and ``sep_valid bool [P]``.

    ``separation_channels``: 3 (centre offsets, border distance) or 4 (also the thick-border class), as the
    model's ``mask_decoder.separation_channels``.

    ``structure_mpp``: working µm/px per ontology structure (the model config's); a crop whose labels are
    all of one such structure is cut at that structure's µm/px, others at ``model_mpp``.
    """

    def __init__(self, corpus, split: str, cfg: DataConfig, *, model_mpp: float, seed: int,
                 synonyms: dict[str, list[str]] | None = None,
                 structure_mpp: dict[str, float] | None = None, separation_channels: int = 3) -> None:
        self.corpus = corpus
        self.separation_channels = separation_channels
        self.split = split
        self.cfg = cfg
        self.model_mpp = model_mpp
        self.seed = seed
        self.synonyms = synonyms or {}
        self.structure_mpp = dict(structure_mpp or {})
        self.ontology = getattr(corpus, "ontology", None)
        unknown = sorted(set(cfg.geometric_kinds) - set(GEOMETRIC_KINDS))
        if unknown:
            raise ValueError(f"data.geometric_kinds has unknown kind(s) {unknown}. Available: {list(GEOMETRIC_KINDS)}")
        self._pigment_coverage = check_pigment(cfg.pigment_prob, cfg.pigment_coverage)
        self._vesicular_centre = check_vesicular(cfg.vesicular_prob, cfg.vesicular_fraction, cfg.vesicular_centre)
        self._h_gain = check_haematoxylin_gain(cfg.h_gain_prob, cfg.h_gain)
        self._decoded: dict[int, dict[str, Any]] = {}

    def _sample(self, index: int) -> dict[str, Any]:
        if not self.cfg.cache_decoded:
            return self.corpus.sample(self.split, index)
        if index not in self._decoded:
            self._decoded[index] = self.corpus.sample(self.split, index)
        return self._decoded[index]

    def __len__(self) -> int:
        return len(self.corpus.images[self.split])

    def _prompt_text(self, label: str, rng: np.random.Generator) -> str:
        syn = self.synonyms.get(label) or []
        if syn and rng.random() < self.cfg.synonym_prob:
            return str(syn[int(rng.integers(0, len(syn)))])
        return label

    def working_mpp(self, labels: list[str]) -> float:
        """The µm/px a crop with these labels is cut at (see the class docstring)."""
        if not self.structure_mpp or self.ontology is None or not labels:
            return self.model_mpp
        structs = {self.ontology.categories[lb].structure for lb in labels if lb in self.ontology.categories}
        if len(structs) == 1 and next(iter(structs)) in self.structure_mpp:
            return float(self.structure_mpp[next(iter(structs))])
        return self.model_mpp

    def view(self, position: int, index: int) -> dict[str, Any]:
        """The augmented crop of image ``index`` for sample ``position``: image, per-label targets, ignore
        masks and instance maps, negatives, source and region (no prompts yet)."""
        rng = np.random.default_rng([self.seed, int(position)])
        s = self._sample(int(index))
        labels = sorted(s["targets"])
        masks = [np.asarray(s["targets"][lb], dtype=np.uint8) for lb in labels]
        ignores = [(s.get("ignore") or {}).get(lb) for lb in labels]
        has_ignore = [ig is not None for ig in ignores]
        masks += [np.asarray(ig, dtype=np.uint8) for ig in ignores if ig is not None]
        want_inst = self.cfg.separation or self.cfg.geometric_per_image > 0
        inst_src = s.get("instances") or {}
        inst_labels = [lb for lb in labels if want_inst and inst_src.get(lb) is not None]
        masks += [np.asarray(inst_src[lb], dtype=np.int32) for lb in inst_labels]
        mpp = float(s.get("mpp") or self.model_mpp)
        scale = mpp / self.working_mpp(labels) * log_uniform_jitter(rng, self.cfg.scale_jitter)
        if self.cfg.native_prob > 0 and s.get("source") in self.cfg.native_sources and \
                np.random.default_rng([self.seed, int(position), 4]).random() < self.cfg.native_prob:
            scale /= mpp / self.working_mpp(labels)  # the image's own pixels, as segment(mpp=None) reads them
        img, ms = random_scaled_crop(s["image"], masks, crop=self.cfg.crop, scale=scale, rng=rng)
        arrays = flip_rotate([img] + ms, rng)
        img, ms = arrays[0], arrays[1:]
        n_lab, n_ign = len(labels), sum(has_ignore)
        targets = dict(zip(labels, ms[:n_lab]))
        instances = dict(zip(inst_labels, ms[n_lab + n_ign:]))
        if self.cfg.pigment_prob > 0:
            pig_rng = np.random.default_rng([self.seed, int(position), 5])
            if pig_rng.random() < self.cfg.pigment_prob:
                img, targets, instances = paste_pigment(img, targets, instances, pig_rng, self._pigment_coverage)
        if self.cfg.vesicular_prob > 0:
            img = vesicular_crop(img, instances, self.ontology, np.random.default_rng([self.seed, int(position), 6]),
                                 self.cfg.vesicular_prob, self.cfg.vesicular_fraction, self._vesicular_centre)
        img = haematoxylin_gain(img, np.random.default_rng([self.seed, int(position), 7]), self.cfg.h_gain_prob,
                                self._h_gain)
        img = hed_jitter(img, rng, self.cfg.hed_sigma, self.cfg.hed_bias)
        img = brightness_contrast(img, rng, self.cfg.brightness_contrast)
        if self.cfg.blank_prob > 0 and \
                np.random.default_rng([self.seed, int(position), 2]).random() < self.cfg.blank_prob:
            img = blank_image(np.random.default_rng([self.seed, int(position), 3]), img.shape[0])
            targets = {lb: np.zeros_like(m) for lb, m in targets.items()}
            instances = {}
        ign_iter = iter(ms[n_lab:n_lab + n_ign])
        return {
            "image": img,
            "targets": targets,
            "ignore": {lb: (next(ign_iter) if h else None) for lb, h in zip(labels, has_ignore)},
            "instances": instances,
            "negatives": [n for n in s.get("negatives", []) if n not in s["targets"]],
            "source": s.get("source", ""),
            "region": s.get("region", ""),
        }

    def _certain_negatives(self, view: dict[str, Any], rng: np.random.Generator) -> list[str]:
        """Out-of-pathology phrases and other-organ concepts for this crop (never the crop's own labels)."""
        out: list[str] = []
        phrases = negative_phrases()["train"] if self.cfg.ood_negatives_per_image else ()
        for _ in range(self.cfg.ood_negatives_per_image if phrases else 0):
            out.append(str(phrases[int(rng.integers(0, len(phrases)))]))
        if self.cfg.organ_negatives_per_image and self.ontology is not None:
            pool = [c for c in other_organ_concepts(self.ontology, view.get("region", "")) if c not in view["targets"]]
            for _ in range(self.cfg.organ_negatives_per_image if pool else 0):
                out.append(pool[int(rng.integers(0, len(pool)))])
        return out

    def with_prompts(self, view: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        """Choose P prompts for a view: geometric prompts from instance ground truth, certain negatives
        (exhaustive-absent categories, out-of-pathology phrases, other-organ concepts), and annotated
        labels (empty in this crop -> presence 0); build targets, valid masks, presence, boxes/points and
        separation targets (:mod:`.prompt_rows`)."""
        negatives, instances = view["negatives"], view.get("instances") or {}
        labels = sorted(view["targets"])
        P = self.cfg.prompts_per_image
        rows = PromptRows.empty(P, view["image"].shape[0], self.separation_channels if self.cfg.separation else None)
        geo = choose_geometric(self.cfg.geometric_kinds, [lb for lb in labels if lb in instances],
                               min(self.cfg.geometric_per_image, P - 1), rng)
        rows.add_geometric(geo, view, rng, self._prompt_text)
        room = P - len(rows.names)
        extra = self._certain_negatives(view, rng)[:max(room - 1, 0)] if labels or negatives else []
        chosen = choose_text_labels(labels, negatives, room=room, n_extra=len(extra),
                                    negatives_per_image=self.cfg.negatives_per_image, rng=rng)
        if not chosen and not rows.names:
            raise ValueError(f"a {view['source']} sample has neither labels nor negatives; rebuild the corpus")
        rows.add_text(chosen + extra, view, rng, self._prompt_text)
        rows.fill()
        return rows.item(view, geometry=bool(self.cfg.geometric_per_image))

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        position, index = key
        rng = np.random.default_rng([self.seed, int(position), 1])
        return self.with_prompts(self.view(position, index), rng)


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out
