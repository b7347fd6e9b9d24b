"""``pathsegmentor segment``: segment image files for text prompts (and an optional box); per image one
mask PNG per prompt, an overlay PNG and a JSON summary."""
from __future__ import annotations

import argparse
from pathlib import Path

from .errors import UsageError
from .loading import _check_model_spec, load_model
from .outputs import _check_out_dir, _print_result, _read_images, _Staging, _write_result


def _check_prompts(prompts: list[str] | None, have_box: bool) -> list[str]:
    prompts = list(prompts or [])
    if not prompts and not have_box:
        raise UsageError("No prompt given: add at least one --prompt, e.g. --prompt nuclei --prompt gland "
                         "(or give a --box).")
    for i, p in enumerate(prompts):
        if not p.strip():
            raise UsageError(f"--prompt number {i + 1} is empty ({p!r}); every prompt must be a phrase such "
                             f"as 'tumor nuclei'.")
    return [p.strip() for p in prompts]


def cmd_segment(args: argparse.Namespace) -> int:
    prompts = _check_prompts(args.prompt, args.box is not None)
    out = Path(args.out)
    _check_out_dir(out)
    _check_model_spec(args.model)
    stems = {}
    for p in args.images:
        stem = Path(p).stem
        if stem in stems and Path(stems[stem]).resolve() != Path(p).resolve():
            raise UsageError(f"'{stems[stem]}' and '{p}' share the name '{stem}' and would overwrite each "
                             f"other's outputs in '{out}'; rename one or run them separately.")
        stems[stem] = p
    images = _read_images(args.images)
    if args.box is not None:
        x0, y0, x1, y1 = args.box
        if not (x1 > x0 and y1 > y0):
            raise UsageError(f"--box {x0:g} {y0:g} {x1:g} {y1:g}: need x0 < x1 and y0 < y1 (XYXY in pixels).")
    model, source = load_model(args.model, device=args.device)
    print(f"Model: {model.name} (weights: {source})")
    stage = _Staging(out)
    try:
        for path, rgb in images:
            try:
                res = model.segment(rgb, prompts or None, mpp=args.mpp, boxes=args.box,
                                    mask_threshold=args.mask_threshold,
                                    presence_threshold=args.presence_threshold, hires=args.hires,
                                    vocabulary=args.vocabulary)
            except ValueError as e:
                raise UsageError(f"{path}: {e}") from None
            print(f"{path} ({rgb.shape[1]}x{rgb.shape[0]}):")
            _print_result(path.stem, res)
            _write_result(stage, path.stem, rgb, res, {"input": str(path), "model_weights": source})
        written = stage.commit()
    except BaseException:
        stage.discard()
        raise
    print(f"Wrote {len(written)} files to {out}")
    return 0

