"""Whole-slide inference, the runs: resume after an interruption, bands split across processes (faked
and, slow, with torchrun), bad input, and the ``pathsegmentor slide`` command line with its exit
codes (fixture slide and stub model in slide_helpers.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest

tifffile = pytest.importorskip("tifffile")
shapely = pytest.importorskip("shapely")

from pathsegmentor.slide import infer as slide_infer  # noqa: E402
from pathsegmentor.slide import segment_slide  # noqa: E402
from pathsegmentor.slide.reader import SlideError  # noqa: E402
from pathsegmentor.slide.synthetic import SlideSpec, write_slide  # noqa: E402
from slide_helpers import DarkStub, slide_spec, tiff_levels  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------------------ resume / split
class _Stop(Exception):
    pass


def test_interrupted_run_resumes_to_the_same_result(slide, tmp_path, present_test_model):
    test_model = present_test_model  # windows judged present: the masks are not empty
    prompts = ["tumor nuclei", "stroma"]
    ref = segment_slide(test_model, slide, prompts, out=tmp_path / "ref", geojson=True, progress=False)

    def stop_after_3(band, done):
        if done == 3:
            raise _Stop

    out = tmp_path / "run"
    with pytest.raises(_Stop):
        segment_slide(test_model, slide, prompts, out=out, geojson=True, progress=False, on_band=stop_after_3)
    assert sorted(p.name for p in out.iterdir()) == [".partial"]  # nothing half-written in place
    assert len(list((out / ".partial" / "parts").glob("band_*.npz"))) == 3
    progress = json.loads((out / ".partial" / "progress-rank0.json").read_text())
    assert progress["bands_done"] == [0, 1, 2]
    with pytest.raises(SlideError, match="--resume"):
        segment_slide(test_model, slide, prompts, out=out, progress=False)
    with pytest.raises(SlideError, match="other settings.*overlap"):
        segment_slide(test_model, slide, prompts, out=out, overlap=16, resume=True, progress=False)
    done = []
    res = segment_slide(test_model, slide, prompts, out=out, geojson=True, resume=True, progress=False,
                                   on_band=lambda b, n: done.append(b))
    assert 0 not in done and len(done) == res.summary["tiles"]["total"] // 11 - 3  # 8 tile rows, 3 were done
    assert not (out / ".partial").exists()
    for p in prompts:
        for a, b in zip(tiff_levels(ref.masks[p]), tiff_levels(res.masks[p])):
            np.testing.assert_array_equal(a, b)
    assert ref.objects_csv.read_text() == res.objects_csv.read_text()
    assert ref.summary["prompts"] == res.summary["prompts"]
    n_ref = len(json.loads(ref.geojson.read_text())["features"])
    assert n_ref == len(json.loads(res.geojson.read_text())["features"])
    with pytest.raises(SlideError, match="finished slide run"):
        segment_slide(test_model, slide, prompts, out=out, progress=False)


def test_bands_split_across_processes_merge_to_the_single_process_result(slide, tmp_path, monkeypatch):
    from pathsegmentor.slide.processes import bands_for_rank

    assert sorted(bands_for_rank(7, 0, 2) + bands_for_rank(7, 1, 2)) == list(range(7))
    single = segment_slide(DarkStub(), slide, ["nuclei"], out=tmp_path / "one", progress=False, vocabulary="open")

    out = tmp_path / "two"
    stubs = {0: DarkStub(), 1: DarkStub()}
    results = {}

    class FakeProcs:
        """Rank ``rank`` of 2; the main process's last barrier (after its own bands) runs rank 1."""

        def __init__(self, rank):
            self.rank, self.world, self.device, self.barriers = rank, 2, None, 0

        def barrier(self):
            self.barriers += 1
            if self.rank == 0 and self.barriers == 3:
                current["rank"] = 1
                results[1] = segment_slide(stubs[1], slide, ["nuclei"], out=out, progress=False, vocabulary="open", resume=True)
                current["rank"] = 0

        @property
        def is_main(self):
            return self.rank == 0

    current = {"rank": 0}
    monkeypatch.setattr(slide_infer, "_Processes", lambda: FakeProcs(current["rank"]))
    r = segment_slide(stubs[0], slide, ["nuclei"], out=out, progress=False, vocabulary="open")
    assert results[1] is None and r is not None
    stubs = [stubs[0], stubs[1]]
    assert stubs[0].calls + stubs[1].calls == single.summary["tiles"]["predicted"]
    assert stubs[0].calls > 0 and stubs[1].calls > 0
    for a, b in zip(tiff_levels(single.masks["nuclei"]), tiff_levels(r.masks["nuclei"])):
        np.testing.assert_array_equal(a, b)
    assert single.objects_csv.read_text() == r.objects_csv.read_text()



# ------------------------------------------------------------------------------------------ bad input
def test_bad_inputs_give_clear_errors_and_write_nothing(slide, tmp_path):
    stub = DarkStub()
    out = tmp_path / "out"
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    with pytest.raises(SlideError, match="not a whole-slide image"):
        segment_slide(stub, text, ["nuclei"], out=out, progress=False, vocabulary="open")
    png = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(png)
    with pytest.raises(SlideError, match="not a whole-slide image"):
        segment_slide(stub, png, ["nuclei"], out=out, progress=False, vocabulary="open")
    with pytest.raises(SlideError, match="not found"):
        segment_slide(stub, tmp_path / "missing.tif", ["nuclei"], out=out, progress=False, vocabulary="open")
    nompp = write_slide(tmp_path / "nompp.tif", slide_spec(height=512, width=512, levels=2, mpp=None))
    with pytest.raises(SlideError, match="--mpp"):
        segment_slide(stub, nompp, ["nuclei"], out=out, progress=False, vocabulary="open")
    with pytest.raises(SlideError, match=r"--level 9 .*3 level\(s\): level 0: 2048x1536.*level 2: 512x384"):
        segment_slide(stub, slide, ["nuclei"], out=out, level=9, progress=False, vocabulary="open")
    with pytest.raises(SlideError, match="non-empty phrase"):
        segment_slide(stub, slide, ["  "], out=out, progress=False, vocabulary="open")
    assert not out.exists()
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.docx").write_text("precious")
    with pytest.raises(SlideError, match="not empty"):
        segment_slide(stub, slide, ["nuclei"], out=foreign, progress=False, vocabulary="open")
    assert sorted(p.name for p in foreign.iterdir()) == ["thesis.docx"]
    # with --mpp the slide without metadata works (level 1 at 0.5 µm/px)
    res = segment_slide(stub, nompp, ["nuclei"], out=out, mpp=0.25, progress=False, vocabulary="open")
    assert res.summary["slide_mpp"] == 0.25 and res.summary["mpp_source"] == "--mpp" and res.summary["level"] == 1


def test_cli_end_to_end_and_exit_codes(tmp_path, test_model_dir, capsys):
    from pathsegmentor.cli import main as top_main
    from pathsegmentor.slide.cli import main

    small = write_slide(tmp_path / "small.tif", SlideSpec(512, 640, 0.5, 2, tissue=[(64, 64, 448, 448)],
                                                          disks=[(200.0, 200.0, 12.0)]))
    out = tmp_path / "o"
    rc = main([str(small), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir), "--geojson",
               "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert {"nuclei.tif", "objects.csv", "summary.json", "small.geojson", "tissue.png"} <= {p.name for p in out.iterdir()}
    printed = json.loads(capsys.readouterr().out)
    assert printed["tiles"]["total"] == 35  # 5 tile rows x 7 columns
    assert main([str(small), "--prompt", "nuclei", "--out", str(out), "--model", str(test_model_dir)]) == 2
    assert "finished slide run" in capsys.readouterr().err
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"II*\x00garbage")
    assert top_main(["slide", str(bad), "--prompt", "x", "--out", str(tmp_path / "b")]) == 2
    assert "not a whole-slide image" in capsys.readouterr().err
    assert main([str(small), "--prompt", "x", "--out", str(tmp_path / "c"), "--level", "5"]) == 2
    assert "level(s)" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
def test_two_processes_with_torchrun_match_one(tmp_path, test_model_dir):
    """Real multi-process run (torchrun, gloo on CPU): bands split by rank, merged by the main process."""
    import os
    import shutil
    import subprocess
    import sys

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    small = write_slide(tmp_path / "small.tif", SlideSpec(512, 640, 0.5, 2, tissue=[(64, 64, 448, 448)],
                                                          disks=[(200.0, 200.0, 12.0)]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [str(small), "--prompt", "nuclei", "--model", str(test_model_dir), "--quiet"]
    one = subprocess.run([sys.executable, "-m", "pathsegmentor.slide.cli", *args, "--out", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([torchrun, "--nproc_per_node", "2", "-m", "pathsegmentor.slide.cli", *args,
                          "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert sorted(p["rank"] for p in summary["processes"]) == [0, 1]
    assert all(p["world"] == 2 and p["bands_this_run"] > 0 for p in summary["processes"])
    for a, b in zip(tiff_levels(tmp_path / "one" / "nuclei.tif"), tiff_levels(tmp_path / "two" / "nuclei.tif")):
        np.testing.assert_allclose(a.astype(int), b.astype(int), atol=1)  # same tiles, other process
    assert (tmp_path / "one" / "objects.csv").read_text().count("\n") == \
        (tmp_path / "two" / "objects.csv").read_text().count("\n")

