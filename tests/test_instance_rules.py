"""Instance rules beside the model's own decoders: the distance decoder's core per object type
(``inference.instance_distance_core``) and the plain U-Net baseline's three-class decoders (bench/baseline_unet.py),
on hand-made touching and narrow-necked objects."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from shapes import XX, YY, discs as _discs


def _bench(name: str):
    """A script of bench/ loaded as a module (``bench/<name>.py``; the scripts are not a package)."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_distance_core_per_object_type():
    """inference.instance_distance_core: the distance decoder's core by the concept's object type ('default' for
    the rest); a lower core seeds a narrow-necked object once, a higher one splits it; bad tables are named."""
    from types import SimpleNamespace

    from pathsegmentor.inference.separation import instance_decoding
    from pathsegmentor.modeling.inference_config import InferenceConfig

    inf = InferenceConfig(instances="distance", instance_distance_core={"default": 0.45, "gland": 0.3})
    cfg = SimpleNamespace(preprocess=SimpleNamespace(mpp=0.5, structure_mpp={"cell": 0.25}), inference=inf)
    gland, nuclei = instance_decoding(cfg, "gland"), instance_decoding(cfg, "nuclei")
    assert (gland.core, nuclei.core, instance_decoding(cfg, "benign gland").core) == (0.3, 0.45, 0.3)
    # one object of two lobes joined by a neck: its predicted border distance peaks at 1 in both lobes and dips
    # to 0.4 in the neck, so a 0.3 core holds one seed and a 0.45 core two
    mask = _discs((32, 30, 14), (32, 58, 14)) > 0
    mask[28:37, 40:50] = True
    cones = [1.0 - np.hypot(YY - 32, XX - cx) / 14 for cx in (30, 58)]
    dist = np.where(mask, np.maximum(np.maximum(*cones), 0.4 * (np.abs(YY - 32) <= 4)), 0.0)
    maps = np.stack([np.zeros_like(dist)] * 2 + [dist, np.zeros_like(dist)]).astype(np.float32)
    assert gland.decode(mask, maps).max() == 1 and nuclei.decode(mask, maps).max() == 2
    for bad in ({"gland": 0.3}, {"default": 1.5}):
        with pytest.raises(ValueError, match="instance_distance_core"):
            InferenceConfig(instance_distance_core=bad).check()


def test_min_object_um2_per_object_type():
    """inference.instance_min_object_um2: a gland's fragment under the area (µm², converted at the µm/px decoded)
    is not counted as an object while a nucleus of that size is; bad tables are named."""
    from types import SimpleNamespace

    from pathsegmentor.inference.separation import instance_decoding
    from pathsegmentor.modeling.inference_config import InferenceConfig

    inf = InferenceConfig(instances="distance", instance_min_object_um2={"default": 0.0, "gland": 100.0})
    cfg = SimpleNamespace(preprocess=SimpleNamespace(mpp=0.5, structure_mpp={"cell": 0.25}), inference=inf)
    gland, nuclei = instance_decoding(cfg, "gland"), instance_decoding(cfg, "nuclei")
    assert (gland.min_area, nuclei.min_area) == (400, 4)  # 100 µm² at 0.5 µm/px; nuclei: instance_min_area_px
    assert instance_decoding(cfg, "gland", decode_mpp=1.0).min_area == 100  # the same µm² at 1 µm/px
    # a large object (r 14: 615 px) and a small separate fragment (r 6: 113 px = 28 µm² at 0.5 µm/px)
    mask = _discs((32, 30, 14), (32, 60, 6)) > 0
    dist = np.where(mask, 1.0, 0.0)
    maps = np.stack([np.zeros_like(dist)] * 2 + [dist, np.zeros_like(dist)]).astype(np.float32)
    assert gland.decode(mask, maps).max() == 1 and nuclei.decode(mask, maps).max() == 2
    for bad in ({"gland": 100.0}, {"default": -1.0}):
        with pytest.raises(ValueError, match="instance_min_object_um2"):
            InferenceConfig(instance_min_object_um2=bad).check()


def test_baseline_unet_three_class_decoders_on_touching_discs():
    """bench/baseline_unet.py's decoders on ideal softmax outputs of two touching discs: the usual argmax reading
    finds the two; the border decoder too on clean maps (its trouble is noisy soft borders, not this case)."""
    bench = _bench("baseline_unet")
    inst = _discs((32, 30, 14), (32, 55, 14))
    classes = bench.three_class(inst > 0, inst)  # 0 background, 1 interior, 2 thick border
    assert set(np.unique(classes)) == {0, 1, 2}
    prob = (classes > 0).astype(np.float32)
    border = (classes == 2).astype(np.float32)
    for decoder in ("argmax", "border"):
        lab = bench.decode(prob, border, decoder)
        assert lab.max() == 2, decoder
        for k in (1, 2):
            ids, counts = np.unique(lab[inst == k], return_counts=True)
            assert counts.max() / counts.sum() > 0.9, (decoder, k)
    with pytest.raises(ValueError, match="argmax"):
        bench.decode(prob, border, "nope")


def test_baseline_unet_five_levels_answer_at_input_size():
    """bench/baseline_unet.py: a five-level U-Net (``--widths``, the issue's specialist's shape) answers at the
    input's size on an image that is no multiple of its pooling, with border <= object <= 1."""
    import torch

    bench = _bench("baseline_unet")
    torch.manual_seed(0)
    net = bench.build_unet((4, 8, 8, 8, 8)).eval()
    rgb = np.random.default_rng(0).integers(0, 255, (50, 37, 3), dtype=np.uint8)
    prob, border = bench.predict(net, rgb, head=0, tta=True)
    assert prob.shape == border.shape == (50, 37)
    assert ((0 <= border) & (border <= prob + 1e-6) & (prob <= 1 + 1e-6)).all()


def test_mask_errors_bench_places_each_wrong_pixel():
    """bench/mask_errors.py on hand-made masks: a prediction one px too small puts every false negative in the border
    band; a missed nucleus and a spurious blob are counted in their own places."""
    bench = _bench("mask_errors")
    yy, xx = np.mgrid[:64, :64]
    gt = np.zeros((64, 64), np.int32)
    gt[(yy - 16) ** 2 + (xx - 16) ** 2 <= 64] = 1  # a nucleus of radius 8
    gt[(yy - 48) ** 2 + (xx - 16) ** 2 <= 16] = 2  # a small one, missed below
    probs = np.zeros((64, 64), np.float32)
    probs[(yy - 16) ** 2 + (xx - 16) ** 2 <= 49] = 1.0  # the first, one px too small
    probs[40:50, 40:50] = 1.0  # a blob on no nucleus
    c = bench.error_places(probs, gt, band=2)
    small = int((gt == 2).sum())
    ring = int(((gt == 1) & (probs == 0)).sum())
    assert ring > 0 and c["fn"] == ring + small and c["fn_band"] >= ring  # the whole ring lies in the band
    assert c["fn_missed"] == small and c["missed"] == 1 and c["nuclei"] == 2
    assert c["fp"] == 100 and c["fp_spurious"] == 100 and c["fp_band"] == 0
    s = bench.summary([c])
    assert 0 < s["dice"] < s["dice_band_forgiven"] < 1


def test_paired_rows_compare_the_same_images_and_report_the_noise(tmp_path):
    """bench/paired_rows.py: per-image Dice and AJI of two evaluations paired by image, the mean change with its
    standard error; images only one side answered are left out; a file that is not a rows.csv is named."""
    import pandas as pd

    bench = _bench("paired_rows")

    def rows(tps, ajis, extra=False):
        out = [{"image_id": f"m/{k}", "source": "monuseg", "kind": "positive", "prompt": "nuclei", "tp": tp,
                "fp": 10, "fn": 10, "aji": aji} for k, (tp, aji) in enumerate(zip(tps, ajis))]
        out.append({"image_id": "m/0", "source": "monuseg", "kind": "cross", "prompt": "gland", "tp": 0, "fp": 50,
                    "fn": 50, "aji": float("nan")})
        if extra:
            out.append({"image_id": "m/9", "source": "monuseg", "kind": "positive", "prompt": "nuclei", "tp": 1,
                        "fp": 99, "fn": 99, "aji": 0.0})
        return pd.DataFrame(out)

    ref, cand = rows([90, 90, 90], [0.5, 0.5, 0.5]), rows([90, 90, 190], [0.6, 0.5, 0.7], extra=True)
    pairs = bench.paired(ref, cand, "monuseg", "nuclei")
    assert [p[0] for p in pairs] == ["m/0", "m/1", "m/2"]  # m/9 only in the candidate
    assert pairs[0][1]["dice"] == pytest.approx(0.9)
    s = bench.summary(pairs, "aji")
    assert s["n"] == 3 and s["rose"] == 2 and s["mean"] == pytest.approx(0.1)
    assert s["se"] == pytest.approx(0.1 / np.sqrt(3)) and s["t"] == pytest.approx(np.sqrt(3))
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    ref.to_csv(a, index=False)
    cand.drop(columns=["aji"]).to_csv(b, index=False)  # no instance rows: Dice alone
    assert bench.main([str(a), str(b)]) == 0
    cand.drop(columns=["tp"]).to_csv(b, index=False)
    with pytest.raises(SystemExit, match=r"lacks the columns \['tp'\]"):
        bench.main([str(a), str(b)])
    with pytest.raises(SystemExit, match="no such file"):
        bench.main([str(a), str(tmp_path / "missing.csv")])


def test_paired_losses_pair_the_logged_steps_and_name_a_bad_log(tmp_path, capsys):
    """bench/paired_losses.py: two train_log.csv paired by step (steps only one leg logged left out), per window of
    steps the mean change with its standard error; a log without the asked column is named with what it has."""
    import pandas as pd

    bench = _bench("paired_losses")
    ref = pd.DataFrame({"step": [25, 50, 75, 100], "dice": [0.5, 0.4, 0.3, 0.2]})
    cand = pd.DataFrame({"step": [25, 50, 75, 100, 125], "dice": [0.6, 0.4, 0.4, 0.3, 0.1]})
    pairs = bench.paired_steps(ref, cand, "dice", 25, 100)
    assert [p[0] for p in pairs] == [50, 75, 100]
    s = bench.summary(pairs, "dice")
    assert s["n"] == 3 and s["rose"] == 2 and s["mean"] == pytest.approx(0.2 / 3)
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    ref.to_csv(a, index=False)
    cand.to_csv(b, index=False)
    assert bench.main([str(a), str(b), "--column", "dice", "--windows", "2"]) == 0
    out = capsys.readouterr().out
    assert "logged up to 100" in out and "steps     1-50" in out and "rose on 1 of 2" in out
    with pytest.raises(SystemExit, match=r"lacks the columns \['bce'\]; it has \['dice', 'step'\]"):
        bench.main([str(a), str(b), "--column", "bce"])


def test_nuclei_diagnostics_grow_without_merging_and_scale_only_haematoxylin():
    """bench/nuclei_diagnostics.py: instances grown by r px keep their own labels where two touch and stop r px
    out; shrunk by r px they part where they touched; a haematoxylin gain of 1 returns the tile, a gain of 2 darkens
    a purple (haematoxylin) pixel and leaves a white one white."""
    bench = _bench("nuclei_diagnostics")
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 5:15], lab[5:15, 15:25] = 1, 2  # two squares touching along x = 15
    grown = bench.grow_labels(lab, 2)
    assert set(np.unique(grown)) == {0, 1, 2}
    assert (grown[5:15, 3:15] == 1).all() and (grown[5:15, 15:27] == 2).all()  # the touching edge never moves
    assert grown[5:15, 2].sum() == 0 and (grown[3, 6:14] == 1).all() and grown[2].sum() == 0
    shrunk = bench.grow_labels(lab, -1)
    assert (shrunk[:, 14] == 0).all() and (shrunk[:, 15] == 0).all()  # parted where they touched
    assert shrunk[5].sum() == 0 and (shrunk[6:14, 6:14] == 1).all() and (shrunk[6:14, 16:24] == 2).all()
    assert bench.grow_labels(lab, 0) is lab
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0], rgb[0, 1], rgb[1] = (150, 110, 170), (255, 255, 255), (200, 120, 180)
    from pathsegmentor.training.augment import scale_haematoxylin  # what the bench's --normalise / --gain apply

    assert np.abs(scale_haematoxylin(rgb, 1.0).astype(int) - rgb).max() <= 1
    dark = scale_haematoxylin(rgb, 2.0)
    assert (dark[0, 0].astype(int) < rgb[0, 0]).any() and (dark[0, 1] >= 254).all()
    assert bench.haematoxylin(dark)[0, 0] > bench.haematoxylin(rgb)[0, 0]


def test_shipping_rule_judges_paired_lines_and_refuses_a_malformed_rule(tmp_path, capsys):
    """bench/shipping_rule.py: a gain line needs the mean change above min_t standard errors, a non-inferiority line
    a loss within its floor, a presence line the candidate's MCC; a rule line it cannot read is named (status 2)."""
    import json

    import pandas as pd

    bench = _bench("shipping_rule")

    def rows(ajis, tps):
        return pd.DataFrame([{"image_id": f"m/{k}", "source": "monuseg", "kind": "positive", "prompt": "nuclei",
                              "tp": tp, "fp": 10, "fn": 10, "aji": a} for k, (a, tp) in enumerate(zip(ajis, tps))])

    ref, cand = rows([0.5, 0.5, 0.5], [90, 90, 90]), rows([0.6, 0.52, 0.58], [90, 90, 60])
    gain = {"source": "monuseg", "prompt": "nuclei", "metric": "aji", "kind": "gain"}
    assert bench.judge(gain, ref, cand)[0]  # +0.067, t ~2.7
    assert not bench.judge({**gain, "min_t": 3}, ref, cand)[0]
    loss = {"source": "monuseg", "prompt": "nuclei", "metric": "dice", "kind": "non_inferior", "max_loss_se": 2}
    held, text = bench.judge(loss, ref, cand)
    assert held and "needs >=" in text  # Dice 0.9 -> 0.857 on one image: within 2 SE
    assert not bench.judge({**loss, "max_loss": 0.01}, ref, cand)[0]  # but not within 0.01
    assert bench.judge({"metric": "presence_mcc", "kind": "at_least", "value": 0.88}, ref, cand, {"mcc": 0.9})[0]
    (tmp_path / "ref").mkdir()
    (tmp_path / "cand").mkdir()
    ref.to_csv(tmp_path / "ref" / "rows.csv", index=False)
    cand.to_csv(tmp_path / "cand" / "rows.csv", index=False)
    (tmp_path / "cand" / "prompt_targets.json").write_text(json.dumps({"presence": {"mcc": 0.85}}))
    rule = tmp_path / "rule.yaml"
    rule.write_text(yaml.safe_dump({"lines": [gain, {"metric": "presence_mcc", "kind": "at_least", "value": 0.88}]}))
    folders = ["--reference", str(tmp_path / "ref"), "--candidate", str(tmp_path / "cand")]
    assert bench.main([str(rule), *folders]) == 0
    out = capsys.readouterr().out
    assert "holds: monuseg 'nuclei' aji" in out and "FAILS: presence MCC 0.8500" in out and "RULE FAILS on 1 of 2" in out
    rule.write_text(yaml.safe_dump({"lines": [{"metric": "aji", "kind": "at_least", "value": 1}]}))
    assert bench.main([str(rule), *folders]) == 2
    assert "'at_least' goes with metric 'presence_mcc'" in capsys.readouterr().err
    repo_rule = Path(__file__).resolve().parents[1] / "configs" / "rules" / "paired-v10.yaml"
    for k, line in enumerate(yaml.safe_load(repo_rule.read_text())["lines"]):  # the committed rule is readable
        bench.check_line(line, k)
