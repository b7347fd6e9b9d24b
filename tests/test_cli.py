"""CLI end to end on a real image, bad input (clear message, non-zero exit, nothing written), a light --help."""
from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pathsegmentor import cli
from pathsegmentor.cli import main

from conftest import shared_data


@pytest.fixture(scope="module")
def real_image(tmp_path_factory):
    src = shared_data("glas", "images", "train_1.png")
    d = tmp_path_factory.mktemp("img")
    path = d / "glas_crop.png"
    Image.open(src).convert("RGB").crop((100, 50, 300, 210)).save(path)  # 200x160
    return path


def _listing(d: Path) -> list[str]:
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_segment_end_to_end(real_image, test_model_dir, tmp_path, capsys):
    out = tmp_path / "results"
    rc = main(["segment", str(real_image), "--prompt", "nuclei", "--prompt", "tumor nuclei", "--out", str(out),
               "--model", str(test_model_dir), "--mpp", "0.5"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert _listing(out) == ["glas_crop_nuclei.png", "glas_crop_nuclei_instances.png", "glas_crop_overlay.png",
                             "glas_crop_summary.json", "glas_crop_tumor-nuclei.png",
                             "glas_crop_tumor-nuclei_instances.png"]
    summary = json.loads((out / "glas_crop_summary.json").read_text())
    for k, prompt in enumerate(("nuclei", "tumor nuclei")):  # instance label maps: 16-bit, one id per object
        lab = np.asarray(Image.open(out / summary["files"]["instances"][prompt]))
        assert lab.shape == (160, 200) and lab.dtype == np.uint16
        assert len(np.unique(lab[lab > 0])) == summary["prompts"][k]["instances"]
    for name in ("glas_crop_nuclei.png", "glas_crop_tumor-nuclei.png"):
        m = np.asarray(Image.open(out / name))
        assert m.shape == (160, 200) and m.dtype == np.uint8 and set(np.unique(m)) <= {0, 255}
    overlay = Image.open(out / "glas_crop_overlay.png")
    assert overlay.mode == "RGB" and overlay.size[0] >= 200 and overlay.size[1] > 160  # image + legend
    s = json.loads((out / "glas_crop_summary.json").read_text())
    assert s["input"] == str(real_image)
    assert s["model"] == "pathsegmentor-test" and s["mpp"] == 0.5
    assert s["image_size"] == {"height": 160, "width": 200}
    assert [p["prompt"] for p in s["prompts"]] == ["nuclei", "tumor nuclei"]
    for p in s["prompts"]:
        assert 0.0 <= p["presence"] <= 1.0 and 0.0 <= p["area_fraction"] <= 1.0
    assert s["files"]["masks"] == {"nuclei": "glas_crop_nuclei.png", "tumor nuclei": "glas_crop_tumor-nuclei.png"}
    assert "pathsegmentor-test" in captured.out and "presence" in captured.out and "area" in captured.out
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pathsegmentor-")]  # staging removed


def test_segment_options(real_image, test_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    rc = main(["segment", str(real_image), "-p", "gland", "--out", str(out), "--model", str(test_model_dir),
               "--no-hires", "--box", "10", "10", "120", "100", "--presence-threshold", "1.01",
               "--mask-threshold", "0.2", "--mpp", "0.25"])  # 40x: shrunk 2x to fit the 128 px window
    assert rc == 0, capsys.readouterr().err
    s = json.loads((out / "glas_crop_summary.json").read_text())
    assert s["thresholds"] == {"mask": 0.2, "presence": 1.01}
    assert s["prompts"][0]["area_pixels"] == 0  # presence gate empties the mask
    assert not np.asarray(Image.open(out / "glas_crop_gland.png")).any()
    rc = main(["segment", str(real_image), "--out", str(tmp_path / "box"), "--model", str(test_model_dir),
               "--box", "10", "10", "120", "100", "--mpp", "0.25"])  # a box alone is a prompt too
    assert rc == 0


def _bad(args, capsys, tmp_path, expect_rc=None, contains=()):
    out = tmp_path / "never"
    rc = main(args + ["--out", str(out)] if "--out" not in args else args)
    err = capsys.readouterr().err
    assert rc != 0
    if expect_rc is not None:
        assert rc == expect_rc, err
    for c in contains:
        assert c in err, err
    assert not out.exists(), "nothing may be written on bad input"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pathsegmentor-")]
    return err


def test_bad_input_missing_file(real_image, test_model_dir, tmp_path, capsys):
    _bad(["segment", str(real_image), str(tmp_path / "nope.png"), "-p", "nuclei", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["nope.png", "not found"])


def test_bad_input_corrupt_and_truncated_image(real_image, test_model_dir, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"this is not an image")
    _bad(["segment", str(real_image), str(corrupt), "-p", "nuclei", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["corrupt.png", "corrupt or truncated"])
    data = real_image.read_bytes()
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(data[: len(data) // 3])
    _bad(["segment", str(real_image), str(truncated), "-p", "nuclei", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["truncated.png"])


def test_bad_input_prompts(real_image, test_model_dir, tmp_path, capsys):
    _bad(["segment", str(real_image), "--model", str(test_model_dir)], capsys, tmp_path, 2, ["--prompt"])
    _bad(["segment", str(real_image), "-p", "nuclei", "-p", "", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["empty", "--prompt number 2"])
    _bad(["segment", str(real_image), "-p", "   ", "--model", str(test_model_dir)], capsys, tmp_path, 2, ["empty"])


def test_bad_input_unknown_model(real_image, tmp_path, capsys):
    err = _bad(["segment", str(real_image), "-p", "nuclei", "--model", "pathsegmentor-nope"], capsys, tmp_path, 2,
               ["Unknown model 'pathsegmentor-nope'", "pathsegmentor-test", "pathsegmentor-tiny"])
    assert "Traceback" not in err


def test_bad_input_model_without_weights(real_image, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("PATHSEGMENTOR_HOME", str(tmp_path / "empty-cache"))
    _bad(["segment", str(real_image), "-p", "nuclei", "--model", "pathsegmentor-vit-b"], capsys, tmp_path, 1,
         ["No weights found", "sam_vit_b_01ec64.pth"])


def test_bad_input_checkpoint_with_wrong_keys(real_image, test_model, tmp_path, capsys):
    import torch
    from safetensors.torch import save_file

    d = tmp_path / "bad-model"
    test_model.save_pretrained(d)
    state = {k: v.contiguous() for k, v in test_model.state_dict().items() if not k.startswith("text_encoder.")}
    state["prompt_adapter.extra"] = torch.zeros(2)
    del state["prompt_adapter.token_type"]
    save_file(state, str(d / "model.safetensors"))
    err = _bad(["segment", str(real_image), "-p", "nuclei", "--model", str(d)], capsys, tmp_path, None,
               ["prompt_adapter.extra", "prompt_adapter.token_type"])
    assert "Traceback" not in err


class CodeDict(collections.OrderedDict):
    """A dict subclass: saving it pickles a reference to this module's code."""


def test_bad_input_pickled_code_checkpoint(real_image, tmp_path, capsys, monkeypatch):
    import torch

    cache = tmp_path / "cache"
    cache.mkdir()
    torch.save(CodeDict({"image_encoder.x": torch.zeros(1)}), cache / "sam_vit_b_01ec64.pth")
    monkeypatch.setenv("PATHSEGMENTOR_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _bad(["segment", str(real_image), "-p", "nuclei", "--model", "pathsegmentor-vit-b"], capsys, tmp_path,
               None, ["sam_vit_b_01ec64.pth", "pickled"])
    assert "Traceback" not in err


def test_bad_input_out_is_a_file(real_image, test_model_dir, tmp_path, capsys):
    f = tmp_path / "results.txt"
    f.write_text("keep me")
    rc = main(["segment", str(real_image), "-p", "nuclei", "--out", str(f), "--model", str(test_model_dir)])
    assert rc == 2 and "not a directory" in capsys.readouterr().err
    assert f.read_text() == "keep me"


def test_bad_input_values(real_image, test_model_dir, tmp_path, capsys):
    _bad(["segment", str(real_image), "-p", "nuclei", "--mpp", "-1", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["--mpp"])
    _bad(["segment", str(real_image), "-p", "nuclei", "--mask-threshold", "x", "--model", str(test_model_dir)],
         capsys, tmp_path, 2, ["--mask-threshold"])
    _bad(["segment", str(real_image), "-p", "nuclei", "--box", "50", "50", "10", "10", "--model",
          str(test_model_dir)], capsys, tmp_path, 2, ["--box"])


def test_failure_midway_leaves_nothing(real_image, test_model_dir, tmp_path, capsys):
    # the second image is larger than the model's window and the box spans more than one window -> error after
    # the first image's outputs were staged; none may reach --out
    big = tmp_path / "big.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)).save(big)
    _bad(["segment", str(real_image), str(big), "-p", "nuclei", "--box", "0", "0", "290", "290", "--mpp", "0.25",
          "--model", str(test_model_dir)], capsys, tmp_path, 2, ["big.png", "do not fit"])


def test_list_models_and_info(test_model_dir, capsys):
    assert main(["list-models"]) == 0
    out = capsys.readouterr().out
    assert "pathsegmentor-test" in out and "pathsegmentor-vit-b" in out and "Tiny random model" in out
    assert main(["info", "pathsegmentor-test"]) == 0
    out = capsys.readouterr().out
    for s in ("parameters", "image_encoder", "mask_decoder", "input size: 128", "mpp: 0.5", "prompt template",
              "pathsegmentor-test"):
        assert s in out
    assert main(["info", "pathsegmentor-vit-b", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["config"]["name"] == "pathsegmentor-vit-b"
    assert 85e6 < info["parameters"]["image_encoder"]["total"] < 95e6  # SAM ViT-B encoder: 89.7M
    assert any("sam_vit_b_01ec64.pth" in w["where"] for w in info["weights"])
    assert main(["info", str(test_model_dir)]) == 0
    capsys.readouterr()
    assert main(["info", "nope"]) == 2
    assert "Available" in capsys.readouterr().err


def test_demo_on_bundled_samples(test_model_dir, tmp_path, capsys):
    samples = cli.load_samples()
    assert len(samples) >= 3 and all(Path(s["path"]).is_file() and s["mpp"] > 0 for s in samples)
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--model", str(test_model_dir)]) == 0
    text = capsys.readouterr().out
    assert "pathsegmentor-test" in text and "tumour cells" in text and "objects" in text
    summary = json.loads((out / "demo_summary.json").read_text())
    assert summary["model"] == "pathsegmentor-test" and len(summary["results"]) == len(samples)
    assert any(s["source"].startswith("EBHI-Seg") for s in samples)
    for s in samples:
        stem = Path(s["file"]).stem
        assert (out / f"{stem}_overlay.png").is_file() and (out / f"{stem}_tumour-cells.png").is_file()
        assert (out / f"{stem}_nuclei_instances.png").is_file()
        res = json.loads((out / f"{stem}_summary.json").read_text())
        assert res["mpp"] == s["mpp"] and len(res["prompts"]) == len(cli.DEMO_PROMPTS)
        size = np.asarray(Image.open(s["path"])).shape[:2]
        assert res["image_size"] == {"height": size[0], "width": size[1]}
        # the paraphrase is resolved and said so; the non-pathology phrase is refused with suggestions
        by_prompt = {p["prompt"]: p for p in res["prompts"]}
        assert by_prompt["tumour cells"]["resolution"]["concept"] == "tumor nuclei"
        refused = by_prompt["a red sports car"]["resolution"]
        assert refused["answered_as"] is None and len(refused["suggestions"]) == 3


def test_bundled_samples_are_small_and_documented():
    d = Path(cli.SAMPLES_DIR)
    assert sum(p.stat().st_size for p in d.iterdir()) < 2 * 1024 * 1024
    for s in cli.load_samples():
        for key in ("source", "original_file", "crop_box", "mpp", "licence", "citation"):
            assert s.get(key), (s["file"], key)
        x0, y0, x1, y1 = s["crop_box"]  # the crop box says the tile's size (512x512 crops, a whole 224x224 image)
        assert Image.open(s["path"]).size == (x1 - x0, y1 - y0) and max(x1 - x0, y1 - y0) <= 512
    assert (d / "LICENSES.md").is_file()


def test_external_subcommands(tmp_path, monkeypatch, capsys):
    mod = tmp_path / "pathseg_fake_cmd.py"
    mod.write_text("def add_arguments(p):\n    p.add_argument('--n', type=int, default=1)\n"
                   "def run(args):\n    print('ran', args.n)\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(cli.SUBCOMMANDS, "fake", cli.ExternalCommand("pathseg_fake_cmd", "a fake command"))
    assert main(["fake", "--n", "5"]) == 3
    assert "ran 5" in capsys.readouterr().out
    assert main(["fake", "--help"]) == 0
    assert "--n" in capsys.readouterr().out
    monkeypatch.setitem(cli.SUBCOMMANDS, "ghost", cli.ExternalCommand("pathsegmentor.no_such_module", ""))
    assert main(["ghost"]) == 1
    assert "pathsegmentor.no_such_module" in capsys.readouterr().err
    for name in ("train", "evaluate", "distill", "slide"):
        assert name in cli.SUBCOMMANDS


def test_help_is_light():
    """``--help`` imports none of the heavy backends (what makes it fast; speed itself is not timed here)."""
    heavy = ("torch", "torchvision", "timm", "open_clip", "segment_anything", "transformers")
    code = ("import sys; from pathsegmentor.cli import main; rc = main(['--help']); assert rc == 0; "
            "rc = main(['segment', '--help']); assert rc == 0; "
            f"loaded = [m for m in {heavy!r} if m in sys.modules]; assert not loaded, loaded")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "segment" in out.stdout and "list-models" in out.stdout and "--prompt" in out.stdout
