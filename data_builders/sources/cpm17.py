"""CPM-17 (Vu et al., Front. Bioeng. Biotechnol. 2019; MICCAI 2017 Computational Precision Medicine challenge):
H&E tiles of TCGA brain/head-and-neck/lung tumours, every nucleus outlined.

Layout read (the HoVer-Net-distributed copy)::

    train/Images/image_00.png   train/Labels/image_00.mat   (``inst_map``: int [H, W] instance ids)
    test/Images/image_00.png    test/Labels/image_00.mat

The folder (train / test) is the official split. Images are 20x and 40x mixed; the source mpp is taken as
0.25 unless the ``mpp`` option says otherwise.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..base import SourceAdapter, SourceFormatError, SourceSample, register_source
from ..masks import check_size, read_rgb, relabel

IMAGE_EXTS = (".png", ".tif", ".tiff", ".jpg", ".bmp")


def load_mat(path: str | Path, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB ``.mat`` file (v5); ``SourceFormatError`` naming what is missing."""
    import scipy.io

    path = Path(path)
    try:
        data = scipy.io.loadmat(str(path))
    except NotImplementedError:
        raise SourceFormatError(path, "MATLAB v7.3 (HDF5) .mat files are not supported; re-save it with "
                                      "scipy.io.savemat or MATLAB `save -v7`") from None
    except Exception as e:
        raise SourceFormatError(path, f"cannot read .mat file ({type(e).__name__}: {e}); the file is truncated "
                                      f"or not a MATLAB file") from None
    missing = [k for k in keys if k not in data]
    if missing:
        have = sorted(k for k in data if not k.startswith("__"))
        raise SourceFormatError(path, f"missing variable(s) {missing} in the .mat file (it has {have}); "
                                      f"expected {list(keys)}")
    return {k: np.asarray(data[k]) for k in keys}


def instance_map(arr: np.ndarray, path: str | Path, key: str = "inst_map") -> np.ndarray:
    """A 2-D non-negative integer label array -> ``int32`` ids renumbered 1..K."""
    arr = np.asarray(arr)
    if arr.ndim != 2:
        raise SourceFormatError(path, f"`{key}` must be a 2-D [H, W] label map, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise SourceFormatError(path, f"`{key}` must be numeric, got dtype {arr.dtype}")
    if arr.size and arr.min() < 0:
        raise SourceFormatError(path, f"`{key}` has negative values (min {arr.min()}); expected 0 background, "
                                      f"1..K instances")
    return relabel(arr.astype(np.int64))[0]


def find_dirs(root: Path, name: str) -> list[Path]:
    """Every folder under ``root`` (itself included) whose name is ``name`` (case-insensitive)."""
    name = name.lower()
    out = [root] if root.name.lower() == name else []
    out += [p for p in root.rglob("*") if p.is_dir() and p.name.lower() == name]
    return sorted(out)


def split_from_path(parts, mapping: dict[str, str]) -> str | None:
    """The first path component found in ``mapping`` (case-insensitive) -> its split name."""
    for part in reversed([p.lower() for p in parts]):
        if part in mapping:
            return mapping[part]
    return None


@register_source
class CPM17(SourceAdapter):
    name = "cpm17"
    classes = ("nucleus",)
    default_mpp = 0.25
    licence = "research use; cite Vu et al. 2019"
    citation = ("Vu et al., Methods for Segmentation and Classification of Digital Microscopy Tissue Images, "
                "Front. Bioeng. Biotechnol. 2019")

    def list_items(self) -> list[str]:
        items = []
        for d in find_dirs(self.root, "Images"):
            items += [str(p.relative_to(self.root)) for p in d.iterdir()
                      if p.is_file() and p.suffix.lower() in IMAGE_EXTS]
        if not items:
            raise SourceFormatError(self.root, "no images found; expected train/Images/*.png + train/Labels/*.mat "
                                               "and test/Images/*.png + test/Labels/*.mat")
        return sorted(items)

    def load_item(self, item: str) -> Iterator[SourceSample]:
        img_path = self.root / item
        labels = [d for d in img_path.parent.parent.iterdir() if d.is_dir() and d.name.lower() == "labels"]
        mat = labels[0] / f"{img_path.stem}.mat" if labels else None
        if mat is None or not mat.is_file():
            raise SourceFormatError(img_path, f"no label file: expected {img_path.parent.parent / 'Labels' / (img_path.stem + '.mat')}")
        inst = instance_map(load_mat(mat, ("inst_map",))["inst_map"], mat)
        image = read_rgb(img_path)
        check_size(inst, image, mat)
        split = split_from_path(Path(item).parts[:-2], {"train": "train", "training": "train", "test": "test",
                                                        "testing": "test"})
        yield SourceSample(
            sample_id=f"{split or 'cpm17'}_{img_path.stem}", patient_id=f"{split or 'cpm17'}_{img_path.stem}",
            image=image, masks={"nucleus": inst} if inst.any() else {}, has_instances={"nucleus": True},
            mpp=float(self.options.get("mpp") or self.default_mpp), split=self.options.get("split", split),
            meta={"label_file": str(mat)})
