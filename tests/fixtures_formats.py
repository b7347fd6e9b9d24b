"""Writers of tiny fixtures in each public source's real on-disk format (file names, dtypes, array shapes,
.mat / .npy / .csv / .tsv / XML layouts), for the adapter tests.

Shapes are drawn as axis-aligned rectangles ``(y, x, h, w)`` so that pixel counts are known exactly. Every writer
returns what the test needs to check (ids, per-class pixel counts, instance counts).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

Rect = tuple[int, int, int, int]  # y, x, h, w


# ---------------------------------------------------------------------------------------------- primitives
def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """``uint8 [h, w, 3]`` random tissue-coloured image."""
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    return img


def instances(shape: tuple[int, int], rects: list[Rect], start: int = 1, dtype=np.int32) -> np.ndarray:
    """Label map with instance ``start + i`` in rectangle ``i`` (later ones overwrite earlier)."""
    out = np.zeros(shape, dtype)
    for i, (y, x, h, w) in enumerate(rects):
        out[y:y + h, x:x + w] = start + i
    return out


def area(rects: list[Rect]) -> int:
    return int(sum(h * w for _, _, h, w in rects))


def write_png(path: Path, arr: np.ndarray, mode: str | None = None, palette: list[int] | None = None) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(arr, mode) if mode else Image.fromarray(arr)
    if palette is not None:
        im.putpalette(palette)
    im.save(path)
    return path


def write_jpg(path: Path, arr: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path, quality=95)
    return path


def write_tif(path: Path, arr: np.ndarray, **kw) -> Path:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(str(path), arr, **kw)
    return path


def write_mat(path: Path, **arrays) -> Path:
    import scipy.io

    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(str(path), arrays)
    return path


def aperio_xml(annotations: list[tuple[str, list[Rect]]], mpp: float = 0.252) -> str:
    """Aperio ImageScope XML: one ``<Annotation>`` per (class name, rectangles), one ``<Region>`` per rectangle."""
    out = [f'<?xml version="1.0"?>\n<Annotations MicronsPerPixel="{mpp:.6f}">']
    rid = 0
    for aid, (name, rects) in enumerate(annotations, 1):
        out.append(f'<Annotation Id="{aid}" Name="" ReadOnly="0" NameReadOnly="0" LineColorReadOnly="0" '
                   f'Incremental="0" Type="4" LineColor="65280" Visible="1" Selected="1" MarkupImagePath="" '
                   f'MacroName="">\n<Attributes>\n<Attribute Name="{name}" Id="0" Value=""/>\n</Attributes>\n'
                   f'<Regions>\n<RegionAttributeHeaders>\n<AttributeHeader Id="9999" Name="Region" '
                   f'ColumnWidth="-1"/>\n</RegionAttributeHeaders>')
        for y, x, h, w in rects:
            rid += 1
            # pixel-edge polygon: skimage.draw.polygon fills the pixels whose centres lie inside
            pts = [(x - 0.5, y - 0.5), (x + w - 0.5, y - 0.5), (x + w - 0.5, y + h - 0.5), (x - 0.5, y + h - 0.5)]
            verts = "".join(f'<Vertex X="{px:.3f}" Y="{py:.3f}" Z="0"/>' for px, py in pts)
            out.append(f'<Region Id="{rid}" Type="0" Zoom="1" Selected="0" ImageLocation="" ImageFocus="-1" '
                       f'Length="1" Area="{w * h}" LengthMicrons="0" AreaMicrons="0" Text="" NegativeROA="0" '
                       f'InputRegionId="0" Analyze="1" DisplayId="{rid}">\n<Attributes/>\n<Vertices>{verts}'
                       f'</Vertices>\n</Region>')
        out.append('</Regions>\n<Plots/>\n</Annotation>')
    out.append("</Annotations>\n")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- nuclei sources
PANNUKE_CHANNELS = ("neoplastic", "inflammatory", "connective", "dead", "epithelial")


def write_pannuke(root: Path, *, fold: int = 1, layout: str = "official", size: int = 256,
                  tissues: tuple[str, ...] = ("Breast", "Colon", "Adrenal_gland")) -> dict:
    """One PanNuke fold: images.npy float64 [N, 256, 256, 3], masks.npy float64 [N, 256, 256, 6], types.npy [N].

    Row ``i``: channel ``i % 5`` holds two nuclei, channel ``(i + 1) % 5`` one; instance ids are unique over the row
    (as in PanNuke); the background channel is 1 where no nucleus is.
    Returns {"dir", "expected": [ {class: (n_instances, pixels)} per row ]}.
    """
    n = len(tissues)
    if layout == "official":
        img_dir = root / f"Fold {fold}" / "images" / f"fold{fold}"
        mask_dir = root / f"Fold {fold}" / "masks" / f"fold{fold}"
    else:
        img_dir = mask_dir = root / f"fold{fold}"
    img_dir.mkdir(parents=True, exist_ok=True)
    mask_dir.mkdir(parents=True, exist_ok=True)
    images = np.stack([rgb(size, size, seed=fold * 10 + i) for i in range(n)]).astype(np.float64)
    masks = np.zeros((n, size, size, 6), np.float64)
    expected = []
    for i in range(n):
        a, b = i % 5, (i + 1) % 5
        two = [(10, 10, 6, 8), (40, 40, 5, 5)]
        one = [(100, 100, 7, 3)]
        masks[i, ..., a] = instances((size, size), two, start=3 + i * 10)
        masks[i, ..., b] = instances((size, size), one, start=20 + i * 10)
        masks[i, ..., 5] = (masks[i, ..., :5].sum(-1) == 0).astype(np.float64)
        expected.append({PANNUKE_CHANNELS[a]: (2, area(two)), PANNUKE_CHANNELS[b]: (1, area(one))})
    np.save(img_dir / "images.npy", images)
    np.save(mask_dir / "masks.npy", masks)
    np.save(img_dir / "types.npy", np.array(tissues))
    return {"dir": img_dir, "mask_dir": mask_dir, "expected": expected, "tissues": list(tissues)}


def write_cpm17(root: Path, size: int = 48) -> dict:
    """train/ and test/ with Images/image_NN.png + Labels/image_NN.mat (``inst_map`` double [H, W])."""
    spec = {"train": {"image_00": [(2, 2, 5, 5), (20, 20, 4, 6), (30, 5, 3, 3)], "image_01": [(0, 0, 10, 10)]},
            "test": {"image_00": [(10, 10, 8, 8), (30, 30, 2, 9)]}}
    for split, imgs in spec.items():
        for k, (stem, rects) in enumerate(imgs.items()):
            write_png(root / split / "Images" / f"{stem}.png", rgb(size, size, seed=k))
            inst = instances((size, size), rects, start=5).astype(np.float64)  # ids need not start at 1
            write_mat(root / split / "Labels" / f"{stem}.mat", inst_map=inst)
    return spec


def write_tnbc(root: Path, size: int = 64) -> dict:
    """Slide_XX/XX_N.png (RGBA as in the archive) + GT_XX/XX_N.png (0 / 255)."""
    spec = {("01", "01_1"): [(2, 2, 6, 6), (30, 30, 5, 5)], ("01", "01_2"): [(10, 10, 3, 3)],
            ("02", "02_1"): [(0, 0, 4, 4), (20, 40, 4, 4), (50, 50, 8, 8)]}
    for (pat, stem), rects in spec.items():
        rgba = np.concatenate([rgb(size, size, seed=len(stem)), np.full((size, size, 1), 255, np.uint8)], -1)
        write_png(root / f"Slide_{pat}" / f"{stem}.png", rgba, mode="RGBA")
        gt = (instances((size, size), rects) > 0).astype(np.uint8) * 255
        write_png(root / f"GT_{pat}" / f"{stem}.png", gt)
    return spec


CRYO_A1 = "Annotator 1 (biologist second round of manual marks up)"
CRYO_A2 = "Annotator 2 (bioinformatician)"


def write_cryonuseg(root: Path, size: int = 64) -> dict:
    """tissue images/Human_<Organ>_NN.tif + <annotator>/<annotator>/label masks modify/*.tif (uint16 ids)."""
    spec = {"Human_AdrenalGland_01": [(2, 2, 6, 6), (30, 30, 5, 5)], "Human_LymphNode_02": [(10, 10, 3, 3)]}
    for k, (stem, rects) in enumerate(spec.items()):
        write_tif(root / "tissue images" / f"{stem}.tif", rgb(size, size, seed=k), photometric="rgb")
        write_tif(root / CRYO_A1 / CRYO_A1 / "label masks modify" / f"{stem}.tif",
                  instances((size, size), rects, start=1, dtype=np.uint16))
        # annotator 2 outlines one more nucleus
        write_tif(root / CRYO_A2 / CRYO_A2 / "label masks modify" / f"{stem}.tif",
                  instances((size, size), rects + [(50, 50, 4, 4)], start=1, dtype=np.uint16))
    return spec


def write_nuinsseg(root: Path, size: int = 64) -> dict:
    """<species organ>/tissue images/*.png, label masks modify/*.tif, vague areas/mask binary/*.png."""
    spec = {("human bladder", "human_bladder_01"): ([(2, 2, 6, 6), (30, 30, 5, 5)], (40, 0, 10, 20)),
            ("mouse muscle", "mouse_muscle_01"): ([(10, 10, 3, 3)], None)}
    for k, ((organ, stem), (rects, vague)) in enumerate(spec.items()):
        write_png(root / organ / "tissue images" / f"{stem}.png", rgb(size, size, seed=k))
        write_tif(root / organ / "label masks modify" / f"{stem}.tif", instances((size, size), rects, dtype=np.uint16))
        write_tif(root / organ / "label masks" / f"{stem}.tif", instances((size, size), rects, dtype=np.uint16))
        if vague is not None:
            v = (instances((size, size), [vague]) > 0).astype(np.uint8) * 255
            write_png(root / organ / "vague areas" / "mask binary" / f"{stem}.png", v)
    return spec


MONUSAC_PATIENT = "TCGA-55-1594-01Z-00-DX1"


def write_svs(path: Path, img: np.ndarray, *, mpp: float = 0.252, levels: int = 1, tile: int = 64) -> Path:
    """A tiled pyramidal TIFF with an Aperio-style description (what tifffile and OpenSlide read as SVS)."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = img.shape[:2]
    desc = f"Aperio Image Library v12.0.15 \r\n{w}x{h} [0,0 {w}x{h}] ({tile}x{tile}) JPEG/RGB Q=70|AppMag = 20|MPP = {mpp}"
    with tifffile.TiffWriter(str(path)) as tw:
        tw.write(img, tile=(tile, tile), photometric="rgb", compression="zlib", description=desc,
                 subifds=levels - 1 if levels > 1 else None)
        for lv in range(1, levels):
            f = 4 ** lv
            tw.write(np.ascontiguousarray(img[::f, ::f]), tile=(16, 16), photometric="rgb", compression="zlib",
                     subfiletype=1)
    return path


def write_monusac(root: Path, size: int = 64) -> dict:
    """<patient>/<patient>_NNN.svs (+ .tif) + .xml with Epithelial/Lymphocyte/Neutrophil/Macrophage/Ambiguous."""
    d = root / "MoNuSAC_images_and_annotations" / MONUSAC_PATIENT
    spec = {
        f"{MONUSAC_PATIENT}_001": [("Epithelial", [(2, 2, 6, 6), (30, 30, 5, 5)]), ("Lymphocyte", [(50, 50, 4, 4)]),
                                   ("Neutrophil", []), ("Macrophage", [(10, 40, 3, 7)])],
        f"{MONUSAC_PATIENT}_002": [("Lymphocyte", [(5, 5, 4, 4), (20, 5, 4, 4), (40, 5, 4, 4)]),
                                   ("Ambiguous", [(30, 30, 10, 10)])],
    }
    for k, (stem, anns) in enumerate(spec.items()):
        img = rgb(size, size, seed=k)
        if k == 0:
            write_svs(d / f"{stem}.svs", img)
        else:
            write_tif(d / f"{stem}.tif", img, photometric="rgb")
        (d / f"{stem}.xml").write_text(aperio_xml(anns))
    return spec


LIZARD_CODES = {1: "neutrophil", 2: "epithelial", 3: "lymphocyte", 4: "plasma", 5: "eosinophil", 6: "connective"}


def write_lizard(root: Path, size: int = 64) -> dict:
    """Lizard_Images1/2/*.png + Lizard_Labels/Labels/*.mat (inst_map, id, classes, bbox, centroid) + info.csv."""
    spec = {"consep_1": ("Lizard_Images1", [((2, 2, 6, 6), 2), ((30, 30, 5, 5), 2), ((50, 50, 4, 4), 3)]),
            "glas_1": ("Lizard_Images2", [((5, 5, 4, 4), 6), ((20, 20, 3, 3), 4), ((40, 40, 5, 5), 1),
                                          ((10, 40, 2, 2), 5)])}
    labels = root / "Lizard_Labels" / "Labels"
    for k, (stem, (folder, objs)) in enumerate(spec.items()):
        write_png(root / folder / f"{stem}.png", rgb(size, size, seed=k))
        rects = [r for r, _ in objs]
        ids = np.arange(1, len(objs) + 1) * 2  # non-consecutive ids, as after Lizard's curation
        inst = np.zeros((size, size), np.int32)
        for iid, (y, x, h, w) in zip(ids, rects):
            inst[y:y + h, x:x + w] = iid
        bbox = np.array([[y, y + h, x, x + w] for y, x, h, w in rects], np.int32)
        cent = np.array([[x + w / 2, y + h / 2] for y, x, h, w in rects], np.float64)
        write_mat(labels / f"{stem}.mat", inst_map=inst, id=ids.reshape(-1, 1).astype(np.int32),
                  classes=np.array([c for _, c in objs], np.int32).reshape(-1, 1), bbox=bbox, centroid=cent)
    info = root / "Lizard_Labels" / "info.csv"
    info.write_text("Filename,Source,Split\nconsep_1,consep,1\nglas_1,glas,3\n")
    return spec


def write_conic(root: Path, size: int = 256) -> dict:
    """data/images.npy uint8 [N, 256, 256, 3], data/labels.npy int32 [N, 256, 256, 2], data/patch_info.csv."""
    d = root / "data"
    d.mkdir(parents=True, exist_ok=True)
    names = ["consep_1-0000", "consep_1-0001", "crag_3-0000"]
    objs = [[((2, 2, 6, 6), 2), ((30, 30, 5, 5), 3)], [((10, 10, 4, 4), 6)], [((0, 0, 3, 3), 1), ((9, 9, 3, 3), 1),
                                                                             ((20, 20, 8, 2), 5)]]
    images = np.stack([rgb(size, size, seed=i) for i in range(len(names))])
    labels = np.zeros((len(names), size, size, 2), np.int32)
    for i, row in enumerate(objs):
        for k, ((y, x, h, w), c) in enumerate(row, 1):
            labels[i, y:y + h, x:x + w, 0] = k
            labels[i, y:y + h, x:x + w, 1] = c
    np.save(d / "images.npy", images)
    np.save(d / "labels.npy", labels)
    (d / "patch_info.csv").write_text("patch_info\n" + "\n".join(names) + "\n")
    (d / "counts.csv").write_text("neutrophil,epithelial,lymphocyte,plasma,eosinophil,connective\n"
                                  "0,1,1,0,0,0\n0,0,0,0,0,1\n2,0,0,0,1,0\n")
    return {"names": names, "objs": objs}


# ---------------------------------------------------------------------------------------------- tissue sources
def write_crag(root: Path, size: int = 64) -> dict:
    """train/Images/train_N.png + train/Annotation/train_N.png (grey instance ids); valid/... test_N."""
    spec = {"train": {"train_1": [(2, 2, 20, 20), (30, 30, 10, 25)], "train_2": [(0, 0, 64, 10)]},
            "valid": {"test_1": [(5, 5, 30, 30)]}}
    for folder, imgs in spec.items():
        for k, (stem, rects) in enumerate(imgs.items()):
            write_png(root / folder / "Images" / f"{stem}.png", rgb(size, size, seed=k))
            write_png(root / folder / "Annotation" / f"{stem}.png", instances((size, size), rects, dtype=np.uint8))
    return spec


BCSS_TSV = ("label\tGT_code\noutside_roi\t0\ntumor\t1\nstroma\t2\nlymphocytic_infiltrate\t3\nnecrosis_or_debris\t4\n"
            "glandular_secretions\t5\nblood\t6\nexclude\t7\nmetaplasia_NOS\t8\nfat\t9\nplasma_cells\t10\n"
            "other_immune_infiltrate\t11\nmucoid_material\t12\nnormal_acinus_or_duct\t13\nlymphatics\t14\n"
            "undetermined\t15\nnerve\t16\nskin_adnexa\t17\nblood_vessel\t18\nangioinvasion\t19\ndcis\t20\nother\t21\n")


def write_bcss(root: Path, size: int = 64) -> dict:
    """images/<TCGA ROI>.png + masks/<same>.png (grey codes 0-21) + gtruth_codes.tsv."""
    spec = {"TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500": {0: (0, 0, 64, 8), 1: (8, 0, 20, 64), 2: (28, 0, 36, 30),
                                                                9: (28, 30, 36, 34)},
            "TCGA-A2-A0CM-DX1_xmin18562_ymin56852_MPP-0.2500": {3: (0, 0, 64, 64), 20: (10, 10, 5, 5)},
            "TCGA-A2-A0CM-DX1_xmin1_ymin2_MPP-0.2500": {7: (0, 0, 32, 64), 18: (32, 0, 32, 64)}}
    for k, (stem, codes) in enumerate(spec.items()):
        write_png(root / "images" / f"{stem}.png", rgb(size, size, seed=k))
        m = np.zeros((size, size), np.uint8)
        for c, (y, x, h, w) in codes.items():
            m[y:y + h, x:x + w] = c
        write_png(root / "masks" / f"{stem}.png", m)
    (root / "gtruth_codes.tsv").write_text(BCSS_TSV)
    return spec


def write_segpath(root: Path, size: int = 64) -> dict:
    """<Antibody_Class>/<Antibody_Class>_<id>_HE.png + _mask.png (0 / 1) + a fileinfo csv with the split."""
    spec = {("PanCK_Epithelium", "PanCK_Epithelium_0001"): [(0, 0, 20, 30)],
            ("PanCK_Epithelium", "PanCK_Epithelium_0002"): [],
            ("CD235a_RBC", "CD235a_RBC_0001"): [(5, 5, 4, 4), (20, 20, 3, 3)]}
    for k, ((folder, stem), rects) in enumerate(spec.items()):
        write_png(root / folder / f"{stem}_HE.png", rgb(size, size, seed=k))
        write_png(root / folder / f"{stem}_mask.png", (instances((size, size), rects) > 0).astype(np.uint8))
    (root / "PanCK_Epithelium" / "PanCK_Epithelium_fileinfo.csv").write_text(
        "filename,organ,train_val_test\nPanCK_Epithelium_0001_HE.png,Colon,train\n"
        "PanCK_Epithelium_0002_HE.png,Lung,test\n")
    return spec


WSSS_PALETTE = [0, 64, 128, 64, 128, 0, 243, 152, 0, 255, 255, 255] + [0] * (256 * 3 - 12)


def write_wsss4luad(root: Path, size: int = 48) -> dict:
    """2.validation/{img,mask,background-mask}/NN.png, 3.testing/...; mask = palette PNG (0 tumour, 1 stroma,
    2 normal, 3 background)."""
    spec = {("2.validation", "00"): {0: (0, 0, 48, 20), 1: (0, 20, 48, 20), 3: (0, 40, 48, 8)},
            ("2.validation", "01"): {2: (0, 0, 48, 48)},
            ("3.testing", "00"): {0: (0, 0, 24, 48), 2: (24, 0, 24, 48)}}
    for k, ((folder, stem), codes) in enumerate(spec.items()):
        write_png(root / folder / "img" / f"{stem}.png", rgb(size, size, seed=k))
        m = np.zeros((size, size), np.uint8)
        for c, (y, x, h, w) in codes.items():
            m[y:y + h, x:x + w] = c
        write_png(root / folder / "mask" / f"{stem}.png", m, mode="P", palette=WSSS_PALETTE)
        bg = np.zeros((size, size), np.uint8)
        if stem == "01":
            bg[:4, :] = 255  # white background strip
        write_png(root / folder / "background-mask" / f"{stem}.png", bg)
    return spec


DIGEST_POS = "18-00530A_2019-05-07 21_52_25-lv1-13176-14321-5297-5598"
DIGEST_NEG = "D20190441101_2019-07-11 09_32_22-lv1-34505-18110-3326-3120"


def write_digestpath(root: Path, size: int = 64) -> dict:
    """tissue-train-pos-v1/<name>.jpg + <name>_mask.jpg (JPEG 0/255), tissue-train-neg/<name>.jpg."""
    rect = (8, 8, 32, 40)
    write_jpg(root / "tissue-train-pos-v1" / f"{DIGEST_POS}.jpg", rgb(size, size, 1))
    write_jpg(root / "tissue-train-pos-v1" / f"{DIGEST_POS}_mask.jpg",
              (instances((size, size), [rect]) > 0).astype(np.uint8) * 255)
    write_jpg(root / "tissue-train-neg" / f"{DIGEST_NEG}.jpg", rgb(size, size, 2))
    return {"pos": DIGEST_POS, "neg": DIGEST_NEG, "rect": rect}


def write_paip2019(root: Path, *, h: int = 320, w: int = 288, tile: int = 128) -> dict:
    """<case>.svs (tiled pyramidal TIFF, Aperio description) + <case>_whole.tif + <case>_viable.tif (uint8 0/1).

    Tissue (a pink block) covers rows 0-199, columns 0-159; the rest is white glass. Whole tumour: rows 20-119,
    columns 20-139; viable tumour: rows 40-79, columns 30-99.
    """
    case = "01_01_0083"
    d = root / "Training_phase_1" / case
    img = np.full((h, w, 3), 245, np.uint8)
    pink = np.array([200, 120, 170], np.uint8)
    img[0:200, 0:160] = pink
    img[0:200, 0:160] += rgb(200, 160, 3) // 16
    write_svs(d / f"{case}.svs", img, mpp=0.5021, levels=2, tile=64)
    whole = np.zeros((h, w), np.uint8)
    whole[20:120, 20:140] = 1
    viable = np.zeros((h, w), np.uint8)
    viable[40:80, 30:100] = 1
    write_tif(d / f"{case}_whole.tif", whole, tile=(64, 64), compression="zlib")   # tiled
    write_tif(d / f"{case}_viable.tif", viable, rowsperstrip=16, compression="zlib")  # stripped
    return {"case": case, "dir": d, "image": img, "whole": whole, "viable": viable, "tile": tile}
