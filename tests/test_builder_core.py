"""PathSeg builder on small synthetic sources written in real formats: tiling, ancestors, negatives, splits,
output layout, rejects, refusal, resume, idempotence, CLI, corpus loading."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from data_builders import BuildError, build, load_pathseg
from data_builders.cli import main
from data_builders.splits import assign_groups
from data_builders.tiling import tile_boxes, tile_starts

CONSEP_MAP = {1: "other nuclei", 2: "inflammatory nuclei", 3: "healthy epithelial nuclei", 4: "tumor nuclei",
              5: "fibroblast nuclei", 6: "muscle nuclei", 7: "endothelial nuclei"}


def make_folder(root, n=4, size=(96, 128), seed=0, codes=(2, 4, 5)):
    """CoNSeP-like type maps: a few rectangles of the given codes per image."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    for i in range(n):
        img = rng.integers(0, 200, (*size, 3), np.uint8)
        m = np.zeros(size, np.uint8)
        for k, c in enumerate(codes):
            y, x = rng.integers(0, size[0] - 12), rng.integers(0, size[1] - 12)
            m[y:y + 10, x:x + 10] = c
        Image.fromarray(img).save(root / "images" / f"P{i // 2}_img{i}.png")
        Image.fromarray(m).save(root / "masks" / f"P{i // 2}_img{i}.png")
    return {"adapter": "folder", "root": str(root), "label_map": CONSEP_MAP, "mpp": 0.25, "region": "colon",
            "patient_regex": r"^(P\d+)_", "exhaustive": ["nuclei", *CONSEP_MAP.values()]}


def test_tiling_and_splits():
    assert tile_starts(100, 64) == [0, 36] and tile_starts(64, 64) == [0] and tile_starts(10, 64) == [0]
    assert tile_starts(200, 64, 16) == [0, 48, 96, 136]
    boxes = tile_boxes(100, 130, 64, 8)
    cover = np.zeros((100, 130), int)
    for x0, y0, x1, y1 in boxes:
        assert x1 - x0 == 64 and y1 - y0 == 64
        cover[y0:y1, x0:x1] += 1
    assert cover.min() >= 1
    groups = [f"TCGA-{i:02d}-{i:04d}" for i in range(30)]
    a, b = assign_groups(groups, seed=0), assign_groups(list(reversed(groups)), seed=0)
    assert a == b and sum(v == "validation" for v in a.values()) == 6
    assert assign_groups(groups, seed=1) != a
    t = assign_groups(groups, val_fraction=0.2, test_fraction=0.1)
    assert sum(v == "test" for v in t.values()) == 3


def test_build_tiles_ancestors_negatives_roundtrip(tmp_path):
    spec = make_folder(tmp_path / "src", n=4, size=(96, 128))
    out = build({"consep_like": spec}, tmp_path / "out", tile=64, overlap=0, progress=False)
    c = load_pathseg(out)
    assert set(c.splits) <= {"train", "validation"} and "train" in c.splits
    assert sorted(p.name for p in out.iterdir()) == ["images", "manifest.json", "ontology.yaml", "report", "triples"]
    for f in ("counts.csv", "report.md", "counts.png", "rejects.csv"):
        assert (out / "report" / f).is_file()
    n_images = sum(len(c.images[s]) for s in c.splits)
    assert 4 <= n_images <= 4 * 4  # 2x2 tiles per image, empty ones without negatives dropped (none here)
    src = np.asarray(Image.open(tmp_path / "src" / "images" / "P0_img0.png"))
    msk = np.asarray(Image.open(tmp_path / "src" / "masks" / "P0_img0.png"))
    found = 0
    for sp in c.splits:
        for i in range(len(c.images[sp])):
            s = c.sample(sp, i)
            assert s["image_id"].startswith("consep_like/")
            if not s["image_id"].startswith("consep_like/P0_img0/"):
                continue
            found += 1
            x0, y0, x1, y1 = s["tile_box"]
            assert np.array_equal(s["image"], src[y0:y1, x0:x1])  # bit-exact
            tile = msk[y0:y1, x0:x1]
            for code, cat in CONSEP_MAP.items():
                if (tile == code).any():
                    assert np.array_equal(s["targets"][cat], tile == code)
                    assert s["instances"][cat] is None  # semantic source
                    assert cat not in s["negatives"]
                else:
                    assert cat not in s["targets"] and cat in s["negatives"]
            if tile.any():
                assert np.array_equal(s["targets"]["nuclei"], tile > 0)  # ancestor = union of descendants
            else:  # an empty tile is kept for its true negatives
                assert "nuclei" in s["negatives"] and not s["targets"]
            if "tumor nuclei" in s["targets"]:
                assert np.array_equal(s["targets"]["colon tumor nuclei"], tile == 4)  # organ variant
                assert np.array_equal(s["targets"]["epithelial nuclei"], np.isin(tile, [3, 4]))
            if (tile == 5).any():
                assert np.array_equal(s["targets"]["spindle-shaped nuclei"], np.isin(tile, [5, 6, 7]))
            assert set(s["targets"]).isdisjoint(s["negatives"])
    assert found == 4
    # patients never straddle splits
    pats = {sp: set(c.images[sp]["patient_id"]) for sp in c.splits}
    assert not (pats.get("train", set()) & pats.get("validation", set()))
    rows = list(csv.DictReader(open(out / "report" / "counts.csv")))
    assert {"source", "category", "split", "tiles", "triples", "negatives", "pixel_fraction"} <= set(rows[0])
    m = json.loads((out / "manifest.json").read_text())
    assert m["complete"] and m["sources"]["consep_like"]["status"] == "done" and "datasets" in m["versions"]


def test_instances_and_resampling(tmp_path):
    from tests.test_source_consep import seven_nuclei, write_item

    write_item(tmp_path / "consep", "Train", "train_1", seven_nuclei(64, 64), [1, 2, 3, 4, 4, 5, 7])
    out = build({"consep": tmp_path / "consep"}, tmp_path / "out", progress=False)
    c = load_pathseg(out)
    assert c.splits == ["train"]  # official split
    s = c.sample("train", 0)
    assert s["instances"]["tumor nuclei"].max() == 2 and s["instances"]["nuclei"].max() == 7
    tri = c.triples["train"]
    counts = dict(zip(tri["label"], tri["instance_count"]))
    assert counts["tumor nuclei"] == 2 and counts["epithelial nuclei"] == 3 and counts["nuclei"] == 7
    assert dict(zip(tri["label"], tri["source_label"]))["epithelial nuclei"] == "healthy epithelial+malignant epithelial"
    out2 = build({"consep": tmp_path / "consep"}, tmp_path / "out2", mpp=0.5, progress=False)
    s2 = load_pathseg(out2).sample("train", 0)
    assert s2["image"].shape == (32, 32, 3) and s2["mpp"] == pytest.approx(0.5)
    assert s2["tile_box"] == [0, 0, 64, 64]
    assert set(np.unique(s2["instances"]["nuclei"])) <= set(range(8))


def test_rejects_are_listed_and_build_continues(tmp_path):
    spec = make_folder(tmp_path / "src", n=4)
    bad = tmp_path / "src" / "images" / "P0_img0.png"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated
    m = np.asarray(Image.open(tmp_path / "src" / "masks" / "P0_img1.png")).copy()
    m[0, 0] = 9
    Image.fromarray(m).save(tmp_path / "src" / "masks" / "P0_img1.png")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "src" / "masks" / "P1_img2.png")
    out = build({"s": spec}, tmp_path / "out", progress=False)
    rej = {r["file"].split("/")[-1]: r["reason"] for r in csv.DictReader(open(out / "report" / "rejects.csv"))}
    assert set(rej) == {"P0_img0.png", "P0_img1.png", "P1_img2.png"}
    assert "truncated" in rej["P0_img0.png"] and "[9]" in rej["P0_img1.png"] and "does not match" in rej["P1_img2.png"]
    c = load_pathseg(out)
    assert {r for sp in c.splits for r in c.images[sp]["sample_id"]} == {"P1_img3"}


def test_refusals(tmp_path):
    spec = make_folder(tmp_path / "src", n=2)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(BuildError, match="holds other content"):
        build({"s": spec}, other, progress=False)
    assert sorted(p.name for p in other.iterdir()) == ["notes.txt"]
    (tmp_path / "empty" / "images").mkdir(parents=True)
    with pytest.raises(BuildError, match="(?s)build refused.*no images matching"):
        build({"s": spec, "e": {**spec, "root": str(tmp_path / "empty")}}, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()  # refused before anything is written
    with pytest.raises(BuildError, match="(?s)build refused.*does not exist"):
        build({"monuseg": tmp_path / "nope"}, tmp_path / "out3", progress=False)
    with pytest.raises(BuildError, match="unknown build option"):
        build({"s": spec}, tmp_path / "out4", tiles=3)


def _rows(out):
    c = load_pathseg(out)
    return {sp: (c.images[sp].data.drop(["split"]).to_pylist(), c.triples[sp].data.to_pylist()) for sp in c.splits}


def test_interrupted_build_resumes_and_rebuild_is_idempotent(tmp_path, monkeypatch):
    from data_builders.sources.folder import Folder

    a = make_folder(tmp_path / "a", n=3, seed=1)
    b = make_folder(tmp_path / "b", n=3, seed=2)
    calls = []
    orig = Folder.load_item

    def flaky(self, item):
        calls.append((self.root.name, item))
        if self.root.name == "b" and item.endswith("img1.png"):
            raise RuntimeError("simulated crash")
        return orig(self, item)

    monkeypatch.setattr(Folder, "load_item", flaky)
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="simulated crash"):
        build({"a": a, "b": b}, out, progress=False)
    assert [p.name for p in out.iterdir()] == [next(out.glob(".tmp-*")).name]  # nothing half-written in OUT
    with pytest.raises(ValueError, match="not a PathSeg corpus"):
        load_pathseg(out)
    assert [c[0] for c in calls] == ["a", "a", "a", "b", "b"]
    calls.clear()
    monkeypatch.setattr(Folder, "load_item", lambda self, item: (calls.append((self.root.name, item)),
                                                                 *orig(self, item))[1:])
    build({"a": a, "b": b}, out, progress=False)
    assert calls == [("b", "images/P0_img1.png"), ("b", "images/P1_img2.png")]  # finished work not redone
    assert not list(out.glob(".tmp-*"))
    ref = build({"a": a, "b": b}, tmp_path / "ref", progress=False)
    assert _rows(out) == _rows(ref)
    calls.clear()
    before = (out / "manifest.json").read_text()
    build({"a": a, "b": b}, out, progress=False)  # up to date: nothing redone
    assert calls == [] and (out / "manifest.json").read_text() == before
    build({"a": a, "b": b}, out, progress=False, force=True)
    assert _rows(out) == _rows(ref)


def test_num_proc_matches_serial(tmp_path):
    spec = make_folder(tmp_path / "src", n=4)
    r1 = build({"s": spec}, tmp_path / "o1", progress=False)
    r2 = build({"s": spec}, tmp_path / "o2", num_proc=2, progress=False)
    assert _rows(r1) == _rows(r2)


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_pathseg(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a PathSeg corpus"):
        load_pathseg(tmp_path)
    out = build({"s": make_folder(tmp_path / "src", n=2)}, tmp_path / "out", progress=False)
    c = load_pathseg(out)
    with pytest.raises(KeyError, match=r"no split 'test'. Available: \['train'"):
        c.sample("test", 0)
    with pytest.raises(IndexError):
        c.sample("train", 10_000)
    assert len(list(c.samples("train"))) == len(c.images["train"])


def test_cli(tmp_path, capsys):
    spec = make_folder(tmp_path / "src", n=2)
    recipe = tmp_path / "recipe.yaml"
    import yaml

    recipe.write_text(yaml.safe_dump({"options": {"tile": 64}, "sources": {"s": {**spec, "root": "src"}}}))
    assert main(["--config", str(recipe), "--out", str(tmp_path / "out"), "-q"]) == 0
    assert main(["stats", str(tmp_path / "out")]) == 0
    assert "categories with triples" in capsys.readouterr().out
    assert main(["--source", f"monuseg={tmp_path / 'nope'}", "--out", str(tmp_path / "o2"), "-q"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--source", "bad", "--out", str(tmp_path / "o3")]) == 2
    assert main(["stats", str(tmp_path / "nope")]) == 2
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "a.txt").write_text("")
    assert main(["--config", str(recipe), "--out", str(tmp_path / "x"), "-q"]) == 2
    assert "other content" in capsys.readouterr().err
