"""Training samples from the PathSeg corpus: scaled crops, augmentations, positive and negative prompts.

Each item is a pure function of ``(seed, position, image index)``: the sampler fixes which image a
position uses and the augmentation RNG is seeded by the position, so runs are exactly reproducible
and resumable (``skip_first_batches``) and every process of a distributed run sees its own shard.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from ..inference.separation import separation_targets
from .augment import brightness_contrast, flip_rotate, hed_jitter, log_uniform_jitter, random_scaled_crop
from .prompt_sampling import (GEOMETRIC_KINDS, blank_image, choose_geometric, geometric_prompt, negative_phrases,
                              other_organ_concepts)


@dataclass
class DataConfig:
    """Where the corpus is and how samples are drawn.

    ``balance``: ``"source"`` (every source drawn equally often), ``"category"`` (images weighted by
    the rarity of their categories), or ``"none"`` (uniform over images).
    ``negatives_per_image``: prompts for categories the source annotates exhaustively but that are
    absent from the crop (target empty, presence 0). Categories a source does not annotate
    exhaustively are never used as negatives (the corpus' ``negative_labels`` already excludes them).
    ``ood_negatives_per_image`` / ``organ_negatives_per_image``: prompts from outside pathology and
    concepts of another organ than the crop's (certain negatives, :mod:`.prompt_sampling`);
    ``blank_prob``: chance that a crop is replaced by a blank input (glass, uniform colour, black) on
    which every prompt is absent. ``geometric_per_image``: of the P prompts, how many are geometric
    (``geometric_kinds``: box / point alone, or text with a box), drawn from instance ground truth.
    ``separation``: also return the separation-map targets of instance labels (models with a separation
    head).
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
    ood_negatives_per_image: int = 0
    organ_negatives_per_image: int = 0
    blank_prob: float = 0.0
    geometric_per_image: int = 0
    geometric_kinds: list[str] = field(default_factory=lambda: list(GEOMETRIC_KINDS))
    separation: bool = False
    num_workers: int = 0
    cache_decoded: bool = True  # keep decoded corpus samples in memory (small corpora; saves PNG decoding)


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
        img, ms = random_scaled_crop(s["image"], masks, crop=self.cfg.crop, scale=scale, rng=rng)
        arrays = flip_rotate([img] + ms, rng)
        img, ms = arrays[0], arrays[1:]
        img = hed_jitter(img, rng, self.cfg.hed_sigma, self.cfg.hed_bias)
        img = brightness_contrast(img, rng, self.cfg.brightness_contrast)
        n_lab, n_ign = len(labels), sum(has_ignore)
        targets = dict(zip(labels, ms[:n_lab]))
        instances = dict(zip(inst_labels, ms[n_lab + n_ign:]))
        if self.cfg.blank_prob > 0 and np.random.default_rng([self.seed, int(position), 2]).random() < self.cfg.blank_prob:
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
        separation targets."""
        tgt, ign, negatives = view["targets"], view["ignore"], view["negatives"]
        instances = view.get("instances") or {}
        labels = sorted(tgt)
        P = self.cfg.prompts_per_image
        c = view["image"].shape[0]
        target = np.zeros((P, c, c), np.float32)
        valid = np.ones((P, c, c), bool)
        presence = np.zeros(P, np.float32)
        boxes = np.full((P, 4), np.nan, np.float32)
        points = np.full((P, 2), np.nan, np.float32)
        texts: list[str] = []
        names: list[str] = []
        geo = choose_geometric(self.cfg.geometric_kinds, [lb for lb in labels if lb in instances],
                               min(self.cfg.geometric_per_image, P - 1), rng)
        for kind, lb in geo:
            got = geometric_prompt(kind, tgt[lb], instances[lb], rng)
            if got is None:
                continue
            j = len(names)
            target[j], box, point = got
            if box is not None:
                boxes[j] = box
            if point is not None:
                points[j] = point
            if ign.get(lb) is not None:
                valid[j] = ign[lb] == 0
            presence[j] = 1.0
            texts.append(self._prompt_text(lb, rng) if kind == "text+box" else "")
            names.append(f"<{kind}> {lb}")
        room = P - len(names)
        extra = self._certain_negatives(view, rng)[:max(room - 1, 0)] if labels or negatives else []
        n_neg = min(self.cfg.negatives_per_image, len(negatives), room - len(extra)) if negatives else 0
        pos_pool = labels or negatives
        chosen: list[str] = []
        n_pos = room - n_neg - len(extra)
        if pos_pool and n_pos > 0:
            order = rng.permutation(len(pos_pool))
            chosen = [pos_pool[order[j % len(order)]] for j in range(n_pos)]
        if n_neg:
            chosen += [negatives[j] for j in rng.choice(len(negatives), n_neg, replace=False)]
        if not chosen and not names:
            raise ValueError(f"a {view['source']} sample has neither labels nor negatives; rebuild the corpus")
        sep_valid = np.zeros(P, bool)
        sep_target = np.zeros((P, self.separation_channels, c, c), np.float32) if self.cfg.separation else None
        sep_cache: dict[str, np.ndarray] = {}
        for lb in chosen + extra:
            j = len(names)
            if lb in tgt:
                target[j] = tgt[lb] > 0
                if ign.get(lb) is not None:
                    valid[j] = ign[lb] == 0
                presence[j] = float(target[j].any())
                if sep_target is not None and lb in instances:
                    if lb not in sep_cache:
                        sep_cache[lb] = separation_targets(instances[lb], self.separation_channels)
                    sep_target[j] = sep_cache[lb]
                    sep_valid[j] = True
            texts.append(self._prompt_text(lb, rng))
            names.append(lb)
        while len(names) < P:  # too few objects for the geometric rows asked for: repeat a text row
            k = len(names)
            src = next(i for i, t in enumerate(texts) if t) if any(texts) else 0
            for arr in (target, valid, presence, boxes, points, sep_valid):
                arr[k] = arr[src]
            if sep_target is not None:
                sep_target[k] = sep_target[src]
            texts.append(texts[src])
            names.append(names[src])
        item = {
            "pixels": torch.from_numpy(np.ascontiguousarray(view["image"].transpose(2, 0, 1))),
            "target": torch.from_numpy(target),
            "valid": torch.from_numpy(valid),
            "presence": torch.from_numpy(presence),
            "prompts": texts,
            "labels": names,
            "source": view["source"],
        }
        if self.cfg.geometric_per_image:
            item["boxes"] = torch.from_numpy(boxes)
            item["points"] = torch.from_numpy(points)
        if sep_target is not None:
            item["sep_target"] = torch.from_numpy(sep_target)
            item["sep_valid"] = torch.from_numpy(sep_valid)
        return item

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


def sampling_weights(corpus, split: str, balance: str, sources: list[str] | None = None) -> np.ndarray:
    """Per-image sampling weights (sum 1) for the chosen balancing; images of excluded sources get 0."""
    table = corpus.images[split]
    src = np.asarray(table["source"])
    keep = np.ones(len(src), bool) if not sources else np.isin(src, sources)
    if not keep.any():
        raise ValueError(f"no images of sources {sources} in split '{split}' (sources there: {sorted(set(src))})")
    w = keep.astype(np.float64)
    if balance == "source":
        for s in set(src[keep]):
            sel = keep & (src == s)
            w[sel] = 1.0 / sel.sum()
    elif balance == "category":
        labels = table["labels"]
        counts: dict[str, int] = {}
        for ls in labels:
            for lb in ls:
                counts[lb] = counts.get(lb, 0) + 1
        for i, ls in enumerate(labels):
            if keep[i]:
                w[i] = np.mean([1.0 / counts[lb] for lb in ls]) if ls else min(1.0 / c for c in counts.values())
    elif balance != "none":
        raise ValueError(f"Unknown data.balance '{balance}'. Available: ['source', 'category', 'none']")
    return w / w.sum()


class PositionSampler(Sampler):
    """Yields ``(position, image_index)`` for positions ``0..total-1``: image indices drawn i.i.d.
    from ``weights`` with a generator seeded by ``seed``. Deterministic, so a resumed run skips the
    first batches and continues with exactly the same stream."""

    def __init__(self, weights: np.ndarray, total: int, seed: int) -> None:
        self.weights = weights
        self.total = total
        self.seed = seed

    def __len__(self) -> int:
        return self.total

    def __iter__(self) -> Iterator[tuple[int, int]]:
        rng = np.random.default_rng([self.seed, 7919])
        idx = rng.choice(len(self.weights), size=self.total, p=self.weights)
        return iter([(i, int(j)) for i, j in enumerate(idx)])
