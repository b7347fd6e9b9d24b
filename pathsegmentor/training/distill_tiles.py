"""Unlabelled tiles for CellSAM distillation: images from folders (each with its µm/px) or a PathSeg
corpus split, rescaled to the model's µm/px, cut into a fixed grid, whole images held out.

``list_images`` / ``list_corpus_images`` -> :class:`ImageRef` per image -> ``split_tiles`` ->
:class:`TileDataset` (``{"pixels": uint8 [3, c, c], "key": str}``; the key names the tile's content
for the teacher cache).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..modeling.config import ConfigError

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


@dataclass
class DistillData:
    """Where tiles come from. ``folders``: mappings ``{path, mpp, pattern}`` (``mpp`` 0: already at the
    model's mpp; ``pattern``: a glob, default every image file). ``corpus``/``split``: a PathSeg corpus.
    ``crop``: tile size (0: the model's input size, which a SAM teacher needs). ``stride``: grid step
    (0: ``crop``). ``holdout``: fraction of whole images (per folder) kept out of training for the
    validation figures. ``max_tiles``/``holdout_max_tiles``: subsample (0: all)."""

    folders: list[dict[str, Any]] = field(default_factory=list)
    corpus: str = ""
    split: str = "train"
    crop: int = 0
    stride: int = 0
    holdout: float = 0.1
    max_tiles: int = 0
    holdout_max_tiles: int = 0
    num_workers: int = 0


@dataclass(frozen=True)
class Tile:
    """A crop of one image after rescaling: ``image`` (index into the image list), ``y0, x0``, size."""

    image: int
    y0: int
    x0: int
    size: int


@dataclass
class ImageRef:
    """One source image: a file (``path``) or a corpus sample (``corpus_index``); ``scale`` = its mpp /
    the model's mpp; ``key`` identifies its content (path, size, mtime) for the teacher cache."""

    name: str
    key: str
    scale: float
    group: str
    path: str = ""
    corpus_index: int = -1
    size_hw: tuple[int, int] = (0, 0)


def _grid(n: int, crop: int, stride: int) -> list[int]:
    if n <= crop:
        return [0]
    pos = list(range(0, n - crop + 1, stride))
    if pos[-1] != n - crop:
        pos.append(n - crop)
    return pos


def list_images(data: DistillData, model_mpp: float) -> list[ImageRef]:
    """The images of ``data.folders`` (sorted per folder) with their rescale factor and cache key."""
    from PIL import Image

    refs: list[ImageRef] = []
    for f in data.folders:
        folder = Path(f["path"])
        if not folder.is_dir():
            raise FileNotFoundError(f"data.folders: '{folder}' is not a directory")
        pattern = f.get("pattern") or "*"
        files = sorted(p for p in folder.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"data.folders: no images ({', '.join(IMAGE_SUFFIXES)}) matching '{pattern}' in "
                                    f"'{folder}'")
        mpp = float(f.get("mpp") or 0.0)
        scale = mpp / model_mpp if mpp > 0 else 1.0
        for p in files:
            st = p.stat()
            with Image.open(p) as im:
                w, h = im.size
            refs.append(ImageRef(name=p.name, key=f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}", scale=scale,
                                 group=str(folder), path=str(p), size_hw=(h, w)))
    return refs


def list_corpus_images(data: DistillData, model_mpp: float):
    """Images of a PathSeg corpus split (decoded once to learn their size). Returns (refs, corpus)."""
    from data_builders import load_pathseg

    corpus_dir = Path(data.corpus)
    if not corpus_dir.is_dir():
        raise FileNotFoundError(f"Corpus directory not found: '{corpus_dir}'")
    corpus = load_pathseg(corpus_dir)
    if data.split not in corpus.images:
        raise ConfigError(f"Corpus '{corpus_dir}' has no split '{data.split}'. Available: {sorted(corpus.images)}")
    refs = []
    for i in range(len(corpus.images[data.split])):
        s = corpus.sample(data.split, i)
        h, w = s["image"].shape[:2]
        mpp = float(s.get("mpp") or model_mpp)
        refs.append(ImageRef(name=f"{data.split}_{i}", key=f"{corpus_dir.resolve()}|{data.split}|{i}",
                             scale=mpp / model_mpp, group=str(s.get("source", "corpus")), corpus_index=i,
                             size_hw=(h, w)))
    return refs, corpus


def split_tiles(refs: list[ImageRef], data: DistillData, crop: int, seed: int) -> tuple[list[Tile], list[Tile]]:
    """Grid tiles of every image; whole images held out (``holdout`` fraction per group, at least one
    when ``holdout > 0`` and the group has two or more images). Returns (train, holdout)."""
    import numpy as np

    stride = data.stride or crop
    rng = np.random.default_rng([seed, 4242])
    held: set[int] = set()
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(refs):
        groups.setdefault(r.group, []).append(i)
    for g in sorted(groups):
        idx = groups[g]
        n = int(round(data.holdout * len(idx)))
        if data.holdout > 0 and len(idx) > 1:
            n = min(max(1, n), len(idx) - 1)
        held.update(idx[j] for j in rng.permutation(len(idx))[:n])
    train, hold = [], []
    for i, r in enumerate(refs):
        h, w = (max(1, round(d * r.scale)) for d in r.size_hw)
        tiles = [Tile(i, y, x, crop) for y in _grid(h, crop, stride) for x in _grid(w, crop, stride)]
        (hold if i in held else train).extend(tiles)

    def sub(tiles: list[Tile], n: int, salt: int) -> list[Tile]:
        if n and len(tiles) > n:
            keep = sorted(np.random.default_rng([seed, salt]).permutation(len(tiles))[:n])
            tiles = [tiles[k] for k in keep]
        return tiles

    return sub(train, data.max_tiles, 1), sub(hold, data.holdout_max_tiles, 2)


class TileDataset:
    """Map-style dataset of tiles; items ``{"pixels": uint8 [3, c, c], "key": str}``. Accepts an int
    index or a ``(position, index)`` key from :class:`~pathsegmentor.training.data.PositionSampler`. Decoded,
    rescaled images are kept in memory (small corpora)."""

    def __init__(self, refs: list[ImageRef], tiles: list[Tile], corpus=None, split: str = "train") -> None:
        self.refs, self.tiles, self.corpus, self.split = refs, tiles, corpus, split
        self._images: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.tiles)

    def image(self, i: int):
        if i not in self._images:
            from ..inference.image_io import read_image, resize_rgb, to_rgb_uint8

            r = self.refs[i]
            img = read_image(r.path) if r.path else self.corpus.sample(self.split, r.corpus_index)["image"]
            img = to_rgb_uint8(img)
            if abs(r.scale - 1.0) > 1e-3:
                h, w = img.shape[:2]
                img = resize_rgb(img, (max(1, round(h * r.scale)), max(1, round(w * r.scale))))
            self._images[i] = img
        return self._images[i]

    def key(self, t: Tile) -> str:
        r = self.refs[t.image]
        return f"{r.key}|scale={r.scale:.6g}|crop={t.y0},{t.x0},{t.size}"

    def __getitem__(self, key) -> dict[str, Any]:
        import numpy as np
        import torch

        index = key[1] if isinstance(key, tuple) else key
        t = self.tiles[int(index)]
        img = self.image(t.image)
        out = np.zeros((t.size, t.size, 3), np.uint8)  # zero padding where the image is smaller than a tile
        crop = img[t.y0:t.y0 + t.size, t.x0:t.x0 + t.size]
        out[:crop.shape[0], :crop.shape[1]] = crop
        return {"pixels": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))), "key": self.key(t)}


def collate_tiles(items: list[dict[str, Any]]) -> dict[str, Any]:
    import torch

    return {"pixels": torch.stack([it["pixels"] for it in items]), "key": [it["key"] for it in items]}
