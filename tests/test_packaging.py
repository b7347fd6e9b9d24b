"""A built wheel (not the editable checkout) carries what the package needs at run time: the model,
ontology and recipe configs, the shipped tiny weights and the bundled sample tiles."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO_ROOT


@pytest.mark.slow
def test_wheel_is_self_contained(tmp_path):
    pytest.importorskip("setuptools")
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(tmp_path / "dist"), str(REPO_ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("pathsegmentor-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("pathsegmentor/configs/models/pathsegmentor-tiny.yaml",
                     "pathsegmentor/configs/models/pathsegmentor-vit-b.yaml",
                     "pathsegmentor/configs/ontology/categories.yaml",
                     "pathsegmentor/configs/train/tiny-cpu.yaml",
                     "pathsegmentor/weights/pathsegmentor-tiny/model.safetensors",
                     "pathsegmentor/ontology.py"):
        assert required in names, f"{required} missing from {wheel.name}"
    assert any(n.startswith("pathsegmentor/samples/") for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "pathsegmentor.image_encoders" in zipfile.ZipFile(wheel).read(entry_points).decode()

    # import from the unpacked wheel, away from the checkout, and use the packaged files
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import pathsegmentor, pathsegmentor.ontology as o\n"
        "from pathsegmentor import list_models, PathSegmentor\n"
        f"assert pathsegmentor.__file__.startswith({str(site)!r}), pathsegmentor.__file__\n"
        f"assert str(o.DEFAULT_DIR).startswith({str(site)!r}), o.DEFAULT_DIR\n"
        "assert {'pathsegmentor-tiny', 'pathsegmentor-vit-b', 'pathsegmentor-test'} <= set(list_models())\n"
        "assert len(o.Ontology.load().categories) > 100\n"
        "m = PathSegmentor.from_pretrained('pathsegmentor-tiny')\n"
        "assert type(pathsegmentor.create_model('cellsam-test')).__name__ == 'CellSAM'  # plug-in via entry point\n"
        "print('ok', m.name)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(site), HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ok pathsegmentor-tiny" in run.stdout
