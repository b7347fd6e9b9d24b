"""``pathsegmentor demo``: segment the bundled real sample tiles (``samples.json``) for the demo prompts
at each tile's mpp, writing overlays, masks and summaries."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ..resources import SAMPLES_DIR
from .errors import RunError
from .loading import _check_model_spec, load_model
from .outputs import _check_out_dir, _read_images, _Staging, _write_result

# what the demo shows: nuclei counted as instances, glands, a paraphrase resolved ("tumour cells" -> tumor
# nuclei), a tissue region (tumor: the EBHI-Seg adenocarcinoma tile) and a phrase refused with suggestions
DEMO_PROMPTS = ("nuclei", "gland", "tumour cells", "tumor", "a red sports car")


def load_samples(samples_dir: Path = SAMPLES_DIR) -> list[dict[str, Any]]:
    """The bundled sample tiles listed in ``samples.json`` (each with ``path`` resolved)."""
    index = samples_dir / "samples.json"
    if not index.is_file():
        raise RunError(f"No bundled samples: '{index}' is missing (a broken installation?). Reinstall "
                       f"pathsegmentor, or run 'pathsegmentor segment' on your own image.")
    samples = json.loads(index.read_text())["samples"]
    for s in samples:
        s["path"] = str(samples_dir / s["file"])
    return samples


def cmd_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_out_dir(out)
    _check_model_spec(args.model)
    samples = load_samples()
    images = _read_images([s["path"] for s in samples])
    model, source = load_model(args.model, device=args.device)
    print(f"Model: {model.name} (weights: {source})")
    prompts = list(args.prompt or DEMO_PROMPTS)
    rows = []
    warnings: set[str] = set()
    stage = _Staging(out)
    try:
        summaries = []
        for s, (path, rgb) in zip(samples, images):
            res = model.segment(rgb, prompts, mpp=s.get("mpp"))
            meta = {k: s[k] for k in ("name", "source", "original_file", "crop_box", "licence") if k in s}
            summaries.append(_write_result(stage, path.stem, rgb, res,
                                           {"input": str(path), "sample": meta, "model_weights": source}))
            for p, pr, a, n in zip(res.labels, res.presence, res.area_fraction, res.instance_counts):
                rows.append((s.get("name", path.stem), p, float(pr), 100.0 * float(a), n))
            warnings.update(res.warnings)
        stage.path("demo_summary.json").write_text(json.dumps(
            {"model": model.name, "model_weights": source, "prompts": prompts, "results": summaries}, indent=2) + "\n")
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    w = max(len(r[0]) for r in rows)
    pw = max(len(r[1]) for r in rows)
    print(f"{'sample':<{w}}  {'prompt':<{pw}}  presence  area %  objects")
    for name, p, pr, a, n in rows:
        print(f"{name:<{w}}  {p:<{pw}}  {pr:8.3f}  {a:6.2f}  {'' if n is None else n:>7}")
    for line in sorted(warnings):
        print(f"warning: {line}", file=sys.stderr)
    print(f"Model used: {model.name} (weights: {source}). Overlays, masks and summaries in {out}")
    return 0

