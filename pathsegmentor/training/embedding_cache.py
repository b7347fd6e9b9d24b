"""Embedding-cache mode: encode augmented views once with a frozen image encoder, train on them.

Each view is one safetensors file holding the view's pixels (uint8), the image embedding and skip
features, the per-label target masks and instance maps (where the source has instance ground truth: the
geometric prompts of a cached view are drawn from them) and the labels/negatives as metadata. Building is idempotent:
existing view files are kept, so an interrupted build resumes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from ..modeling.image_encoder import ImageFeatures

_FORMAT = "pathsegmentor-embedding-cache-v2"  # v2: instance maps (v1 files still load, without them)


@torch.no_grad()
def build_embedding_cache(model, ds, weights: np.ndarray, cache_dir: Path, *, views: int) -> int:
    """Write ``views`` augmented views of every image with non-zero weight; returns the view count."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    cache_dir.mkdir(parents=True, exist_ok=True)
    images = [i for i in range(len(weights)) if weights[i] > 0]
    model.eval()
    n = 0
    for i in tqdm(images, desc="embedding cache", unit="image"):
        for v in range(views):
            f = cache_dir / f"view_{i:06d}_{v:02d}.safetensors"
            n += 1
            if f.exists():
                continue
            view = ds.view(10**9 + i * views + v, i)
            pixels = torch.from_numpy(np.ascontiguousarray(view["image"].transpose(2, 0, 1)))
            feats = model.encode_image(model.normalize(pixels[None].to(model.device)))
            labels = sorted(view["targets"])
            tensors = {"pixels": pixels.contiguous(), "embedding": feats.embedding[0].cpu().contiguous()}
            for s, t in feats.skips.items():
                tensors[f"skip{s}"] = t[0].cpu().contiguous()
            for j, lb in enumerate(labels):
                tensors[f"target{j}"] = torch.from_numpy(view["targets"][lb].astype(np.uint8))
                if view["ignore"].get(lb) is not None:
                    tensors[f"ignore{j}"] = torch.from_numpy(view["ignore"][lb].astype(np.uint8))
            inst_labels = sorted(view.get("instances") or {})
            for j, lb in enumerate(inst_labels):
                tensors[f"instances{j}"] = torch.from_numpy(view["instances"][lb].astype(np.int32))
            meta = {"format": _FORMAT, "labels": json.dumps(labels), "negatives": json.dumps(view["negatives"]),
                    "instance_labels": json.dumps(inst_labels),
                    "source": view["source"], "region": view.get("region", "")}
            tmp = f.with_suffix(".tmp")
            save_file(tensors, str(tmp), metadata=meta)
            tmp.replace(f)
    return n


class CachedViews(Dataset):
    """Views written by :func:`build_embedding_cache`; items carry precomputed ``features``."""

    def __init__(self, cache_dir: Path, prompt_source) -> None:
        self.files = sorted(Path(cache_dir).glob("view_*.safetensors"))
        if not self.files:
            raise FileNotFoundError(f"no cached views in '{cache_dir}'")
        self.prompt_source = prompt_source  # a PromptedCrops: prompt choice and synonyms

    def __len__(self) -> int:
        return len(self.files)

    def view_weights(self, image_weights: np.ndarray) -> np.ndarray:
        """Per-view sampling weights (sum 1): each image's weight shared by its cached views."""
        images = np.array([int(f.stem.split("_")[1]) for f in self.files])
        w = np.asarray(image_weights, np.float64)[images]
        w = w / np.bincount(images, minlength=len(image_weights))[images]
        return w / w.sum()

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Any]:
        from safetensors import safe_open

        position, index = key
        with safe_open(str(self.files[index]), "pt") as f:
            meta = f.metadata()
            t = {k: f.get_tensor(k) for k in f.keys()}
        labels = json.loads(meta["labels"])
        inst_labels = json.loads(meta.get("instance_labels", "[]"))
        view = {
            "image": t["pixels"].numpy().transpose(1, 2, 0),
            "targets": {lb: t[f"target{j}"].numpy() for j, lb in enumerate(labels)},
            "ignore": {lb: (t[f"ignore{j}"].numpy() if f"ignore{j}" in t else None) for j, lb in enumerate(labels)},
            "instances": {lb: t[f"instances{j}"].numpy() for j, lb in enumerate(inst_labels)},
            "negatives": json.loads(meta["negatives"]),
            "source": meta["source"],
            "region": meta.get("region", ""),
        }
        rng = np.random.default_rng([self.prompt_source.seed, int(position), 1])
        item = self.prompt_source.with_prompts(view, rng)
        item["embedding"] = t["embedding"]
        item["skips"] = {int(k[4:]): v for k, v in t.items() if k.startswith("skip")}
        return item


def features_from_batch(batch: dict[str, Any]) -> ImageFeatures | None:
    if "embedding" not in batch:
        return None
    skips = {}
    if batch.get("skips"):
        for s in batch["skips"][0]:
            skips[s] = torch.stack([d[s] for d in batch["skips"]])
    return ImageFeatures(batch["embedding"], skips)
