"""``pathsegmentor serve``: every endpoint through Starlette's ASGI test client, with the random
``pathsegmentor-test`` model (128 px windows at 0.5 µm/px), a bundled tile and a synthetic pyramidal
slide; each refusal (traversal, symlink out of the root, non-image, corrupt file, bad requests, a
crashed job) gives a 4xx JSON message and the server keeps serving."""
from __future__ import annotations

import io
import json
import os
import shutil
import time
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from pathsegmentor.resources import SAMPLES_DIR  # noqa: E402
from pathsegmentor.serve.app import create_app  # noqa: E402
from pathsegmentor.serve.cache import EmbeddingCache  # noqa: E402
from pathsegmentor.serve.dzi import max_level  # noqa: E402
from pathsegmentor.serve.files import FileRegistry, ServeError  # noqa: E402

TILE = "monuseg_TCGA-18-5592-01Z-00-DX1.png"


@pytest.fixture(scope="module")
def served(tmp_path_factory, slide):
    root = tmp_path_factory.mktemp("root")
    shutil.copy(slide, root / "case.tif")
    (root / "sub").mkdir()
    Image.new("RGB", (64, 48), (200, 100, 150)).save(root / "sub" / "small.jpg")
    (root / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (root / "notes.txt").write_text("not an image")
    outside = tmp_path_factory.mktemp("outside")
    Image.new("RGB", (8, 8)).save(outside / "secret.png")
    os.symlink(outside / "secret.png", root / "link.png")
    os.symlink(outside, root / "linkdir")
    return root


@pytest.fixture(scope="module")
def client(test_model, served, one_thread, tmp_path_factory):
    app = create_app(test_model, FileRegistry([SAMPLES_DIR / "glas_train_1.png", SAMPLES_DIR / TILE], root=served),
                     workdir=tmp_path_factory.mktemp("jobs"))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def _open(client, name):
    r = client.post("/api/open", json={"file": name})
    assert r.status_code == 200, r.text
    return r.json()


def test_page_and_static(client):
    r = client.get("/")
    assert r.status_code == 200 and "openseadragon" in r.text.lower()
    assert client.get("/static/app.js").status_code == 200
    r = client.get("/static/vendor/openseadragon/openseadragon.min.js")
    assert r.status_code == 200 and "OpenSeadragon" in r.text
    assert client.get("/static/vendor/openseadragon/LICENSE.txt").status_code == 200


def test_files_lists_only_images_inside_the_root(client):
    data = client.get("/api/files").json()
    names = {f["name"]: f["kind"] for f in data["files"]}
    assert names["glas_train_1.png"] == "tile" and names[TILE] == "tile" and names["case.tif"] == "slide"
    assert "sub/small.jpg" in names and "notes.txt" not in names
    assert "link.png" not in names and not any(n.startswith("linkdir") for n in names)
    assert data["model"]["name"] == "pathsegmentor-test" and data["model"]["mpp"] == 0.5


@pytest.mark.parametrize("name, status, words", [
    ("../outside/secret.png", 403, "outside the served folder"),
    ("/etc/passwd", 403, "outside the served folder"),
    ("link.png", 403, "symlink"),
    ("linkdir/secret.png", 403, "symlink"),
    ("notes.txt", 415, "Supported"),
    ("missing.png", 404, "does not exist"),
    ("sub", 400, "folder"),
    ("corrupt.png", 422, "corrupt"),
    ("", 400, "No file"),
])
def test_open_refusals(client, name, status, words):
    r = client.post("/api/open", json={"file": name})
    assert r.status_code == status, r.text
    assert words in r.json()["error"]
    assert client.get("/api/files").status_code == 200  # still serving


def test_registry_without_root_serves_only_given_files(tmp_path):
    (tmp_path / "a.png").write_bytes((SAMPLES_DIR / TILE).read_bytes())
    reg = FileRegistry([tmp_path / "a.png"])
    assert reg.resolve("a.png").path == (tmp_path / "a.png").resolve()
    with pytest.raises(ServeError, match="not one of the files") as e:
        reg.resolve("../a.png")
    assert e.value.status == 404
    with pytest.raises(ServeError, match="not an image"):
        FileRegistry([tmp_path / "x.txt"]) if (tmp_path / "x.txt").write_text("x") else None


def test_the_first_file_given_is_the_one_the_page_opens_at_once(client, served, tmp_path):
    """``pathsegmentor serve FILE``: /api/files names FILE as ``initial`` (the page opens it on load, app.js);
    with only --root there is none, and the page waits for a choice."""
    data = client.get("/api/files").json()
    assert data["initial"] == "glas_train_1.png" == data["files"][0]["name"]
    assert client.post("/api/open", json={"file": data["initial"]}).status_code == 200
    assert FileRegistry(root=served).initial is None
    (tmp_path / "b.png").write_bytes((SAMPLES_DIR / TILE).read_bytes())
    assert FileRegistry([tmp_path / "b.png", SAMPLES_DIR / TILE]).initial == "b.png"
    page = client.get("/static/app.js").text
    assert "data.initial" in page and "openFile()" in page


def test_prompt_resolver_is_built_once_per_model_not_per_request(client, monkeypatch):
    from pathsegmentor.inference import prompts as prompts_mod

    from pathsegmentor.inference.predictor import as_predictor

    state = client.app.state.serve
    resolver = as_predictor(state.model)._resolver  # built when the app was created (the model's predictor)
    assert resolver is not None
    built = []
    real = prompts_mod.PromptResolver.__post_init__
    monkeypatch.setattr(prompts_mod.PromptResolver, "__post_init__", lambda self: built.append(1) or real(self))
    info = _open(client, TILE)
    for words in (["nuclei"], ["gland", "a red car"], ["tumour cells"]):
        r = client.post("/api/segment", json={"image": info["id"], "prompts": words,
                                              "region": {"x": 0, "y": 0, "w": 256, "h": 256}})
        assert r.status_code == 200, r.text
    assert built == [] and as_predictor(state.model)._resolver is resolver


def test_open_tile_and_dzi(client):
    info = _open(client, TILE)
    assert (info["width"], info["height"], info["mpp"], info["kind"]) == (512, 512, 0.25, "tile")
    xml = ET.fromstring(client.get(info["dzi"]).text)
    size = xml.find("{http://schemas.microsoft.com/deepzoom/2008}Size")
    assert (size.get("Width"), size.get("Height"), xml.get("TileSize")) == ("512", "512", "256")
    top = max_level(512, 512)
    base = info["dzi"][:-4] + "_files"
    im = Image.open(io.BytesIO(client.get(f"{base}/{top}/1_1.jpeg").content))
    assert im.size == (256, 256)
    assert Image.open(io.BytesIO(client.get(f"{base}/0/0_0.jpeg").content)).size == (1, 1)
    r = client.get(f"{base}/{top}/2_0.jpeg")
    assert r.status_code == 404 and "outside DZI level" in r.json()["error"]
    assert client.get(f"{base}/{top + 1}/0_0.jpeg").status_code == 404
    assert client.get("/api/images/nope.dzi").status_code == 404


def test_slide_dzi_reads_the_pyramid(client):
    info = _open(client, "case.tif")
    assert (info["width"], info["height"], info["kind"]) == (2048, 1536, "slide")
    assert info["mpp"] == pytest.approx(0.25) and len(info["levels"]) == 3
    top = max_level(2048, 1536)
    base = info["dzi"][:-4] + "_files"
    tile = np.asarray(Image.open(io.BytesIO(client.get(f"{base}/{top}/1_1.jpeg").content)))
    assert tile.shape == (256, 256, 3)
    assert Image.open(io.BytesIO(client.get(f"{base}/{top - 2}/1_1.jpeg").content)).size == (256, 128)


def test_segment_view_then_second_prompt_reuses_the_embedding(client):
    info = _open(client, TILE)
    body = {"image": info["id"], "prompts": ["nuclei"], "region": {"x": 0, "y": 0, "w": 512, "h": 512}}
    first = client.post("/api/segment", json=body).json()
    assert first["work_size"] == {"width": 256, "height": 256} and first["scale"] == pytest.approx(2.0)
    windows = first["cache"]["encoded"] + first["cache"]["reused"]  # identical windows are encoded once
    assert first["cache"]["encoded"] > 0 and windows >= first["cache"]["encoded"]
    p = first["prompts"][0]
    assert p["answered"] and p["instances"] is not None and 0 <= p["presence"] <= 1
    second = client.post("/api/segment", json={**body, "prompts": ["gland", "a red car"]}).json()
    assert second["cache"]["encoded"] == 0 and second["cache"]["reused"] == windows  # every window from the cache
    refused = second["prompts"][1]
    assert not refused["answered"] and refused["reason"] and refused["presence"] == 0
    assert any("a red car" in w for w in second["warnings"])
    png = Image.open(io.BytesIO(client.get(p["overlay"]).content))
    assert png.mode == "RGBA" and png.size == (256, 256)
    assert client.get(f"/api/results/{first['id']}/overlay/5.png").status_code == 404


def test_segment_box_and_points_in_a_drawn_region(client):
    info = _open(client, TILE)
    region = {"x": 100, "y": 100, "w": 200, "h": 200}
    r = client.post("/api/segment", json={"image": info["id"], "prompts": [], "region": region,
                                          "box": [150, 150, 250, 250]})
    assert r.status_code == 200, r.text
    assert r.json()["prompts"][0]["prompt"].startswith("<geometric")
    r = client.post("/api/segment", json={"image": info["id"], "prompts": ["nuclei"], "region": region,
                                          "points": [[200, 200, 1], [120, 120, 0]]})
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("body, status, words", [
    ({"prompts": ["nuclei"]}, 404, "not open"),
    ({"image": "IMG", "prompts": []}, 422, "no prompt"),
    ({"image": "IMG", "prompts": "nuclei", "region": {"x": 9000, "y": 0, "w": 10, "h": 10}}, 422, "does not overlap"),
    ({"image": "IMG", "prompts": ["nuclei"], "region": {"x": 0}}, 422, "x, y, w, h"),
    ({"image": "IMG", "prompts": [3]}, 422, "list of phrases"),
    ({"image": "IMG", "box": [1, 2]}, 422, "x0, y0, x1, y1"),
    ({"image": "IMG", "points": [[1, 2]]}, 422, "label"),
    ({"image": "IMG", "prompts": ["nuclei"], "box": [0, 0, 500, 500]}, 422, "one 128x128 window"),
])
def test_segment_refusals(client, body, status, words):
    info = _open(client, TILE)
    body = {k: (info["id"] if v == "IMG" else v) for k, v in body.items()}
    r = client.post("/api/segment", json=body)
    assert r.status_code == status, r.text
    assert words in r.json()["error"]


def test_large_view_and_bodies_are_refused(client):
    info = _open(client, "case.tif")
    r = client.post("/api/segment", content=b"{" + b" " * (2 << 20) + b"}",
                    headers={"content-type": "application/json"})
    assert r.status_code == 413 and "no uploads" in r.json()["error"]
    assert client.post("/api/segment", content=b"not json").status_code == 400
    from pathsegmentor.serve import view

    old, view.MAX_VIEW_SIDE = view.MAX_VIEW_SIDE, 64
    try:
        r = client.post("/api/segment", json={"image": info["id"], "prompts": ["nuclei"]})
    finally:
        view.MAX_VIEW_SIDE = old
    assert r.status_code == 413 and "zoom in" in r.json()["error"]


def test_exports(client):
    info = _open(client, TILE)
    res = client.post("/api/segment", json={"image": info["id"], "prompts": ["nuclei", "stroma"],
                                            "region": {"x": 0, "y": 0, "w": 512, "h": 512}}).json()
    gj = json.loads(client.get(f"/api/results/{res['id']}/export.geojson").content)
    assert gj["type"] == "FeatureCollection"
    for f in gj["features"]:
        assert f["geometry"]["type"] in ("Polygon", "MultiPolygon")
        xs = [x for ring in f["geometry"]["coordinates"] for x, _ in ring] if f["geometry"]["type"] == "Polygon" else [0]
        assert all(-1 <= x <= 513 for x in xs)
    csv = client.get(f"/api/results/{res['id']}/objects.csv").text.splitlines()
    assert csv[0].startswith("object_id,prompt,centroid_x")
    n_nuclei = res["prompts"][0]["instances"]
    assert len(csv) - 1 == n_nuclei
    mask = np.asarray(Image.open(io.BytesIO(client.get(f"/api/results/{res['id']}/mask/0.png").content)))
    assert mask.shape == (256, 256) and set(np.unique(mask)) <= {0, 255}
    assert client.get(f"/api/results/{res['id']}/mask/7.png").status_code == 404
    assert client.get("/api/results/r999/export.geojson").status_code == 404


def _wait(client, jid, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        job = client.get(f"/api/jobs/{jid}").json()
        if job["state"] not in ("queued", "running"):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {jid} still running: {job}")


def test_slide_job_progress_outputs_and_overlay(client):
    info = _open(client, "case.tif")
    r = client.post("/api/jobs", json={"image": info["id"], "prompts": ["nuclei"]})
    assert r.status_code == 202
    job = _wait(client, r.json()["id"])
    assert job["state"] == "done", job
    assert job["progress"] == 1.0 and job["bands_total"] >= 1
    names = {u.rsplit("/", 1)[1] for u in job["files"]}
    assert {"nuclei.tif", "objects.csv", "summary.json", "case.geojson"} <= names
    gj = json.loads(client.get(f"/api/jobs/{job['id']}/files/case.geojson").content)
    assert gj["type"] == "FeatureCollection"
    assert client.get(f"/api/jobs/{job['id']}/files/../../etc").status_code == 404
    mask = job["masks"][0]
    xml = ET.fromstring(client.get(mask["dzi"]).text)
    assert xml.get("Format") == "png"
    tile = Image.open(io.BytesIO(client.get(mask["dzi"][:-4] + "_files/0/0_0.png").content))
    assert tile.mode == "RGBA"
    assert client.get(f"/api/jobs/{job['id']}/overlay/3.dzi").status_code == 404


def test_job_refusals_cancel_and_crash(client, monkeypatch):
    tile = _open(client, TILE)
    r = client.post("/api/jobs", json={"image": tile["id"], "prompts": ["nuclei"]})
    assert r.status_code == 422 and "not a slide" in r.json()["error"]
    info = _open(client, "case.tif")
    assert client.post("/api/jobs", json={"image": info["id"], "prompts": []}).status_code == 422
    assert client.get("/api/jobs/j999").status_code == 404
    state = client.app.state.serve

    def crash(path, prompts, out, on_band):
        raise RuntimeError("simulated failure in band 0")

    monkeypatch.setattr(state.jobs, "_run", crash)
    job = _wait(client, client.post("/api/jobs", json={"image": info["id"], "prompts": ["nuclei"]}).json()["id"])
    assert job["state"] == "error" and "simulated failure" in job["error"]

    def slow(path, prompts, out, on_band):
        for b in range(1000):
            time.sleep(0.01)
            on_band(b, b + 1)

    monkeypatch.setattr(state.jobs, "_run", slow)
    jid = client.post("/api/jobs", json={"image": info["id"], "prompts": ["nuclei"]}).json()["id"]
    time.sleep(0.1)
    assert client.delete(f"/api/jobs/{jid}").status_code == 200
    assert _wait(client, jid)["state"] == "cancelled"
    assert client.get("/api/files").status_code == 200  # still serving


def test_embedding_cache_is_bounded():
    import torch

    from types import SimpleNamespace

    cache = EmbeddingCache(max_bytes=3 * 4 * 100)
    for i in range(5):
        cache.put(i, SimpleNamespace(embedding=torch.zeros(100), skips={}))
    assert len(cache) == 3 and cache.get(0) is None and cache.get(4) is not None
    assert (cache.hits, cache.misses) == (1, 1)


def test_cli_usage_errors(tmp_path, capsys):
    from pathsegmentor.cli import main

    assert main(["serve"]) == 2
    assert "nothing to serve" in capsys.readouterr().err
    (tmp_path / "notes.txt").write_text("x")
    assert main(["serve", str(tmp_path / "notes.txt")]) == 2
    assert "not an image" in capsys.readouterr().err
    assert main(["serve", "--root", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
