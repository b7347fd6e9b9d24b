"""``pathsegmentor slide SLIDE --prompt P [--prompt P] --out DIR ...``

Also runnable directly (``python -m pathsegmentor.slide.cli``), which is how several processes are
launched: ``accelerate launch -m pathsegmentor.slide.cli SLIDE ...`` or
``torchrun --nproc_per_node N -m pathsegmentor.slide.cli SLIDE ...``.
Exit codes: 0 done, 1 runtime failure (model, weights), 2 bad input or usage, 130 interrupted
(``--resume`` continues).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Sequence


def _mpp_arg(text: str) -> float | str:
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of microns per pixel (e.g. 0.25 for "
                                         f"40x, 0.5 for 20x) nor 'auto'") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("slide", help="whole-slide image (pyramidal TIFF, SVS, OME-TIFF, NDPI; more with openslide)")
    parser.add_argument("--prompt", "-p", action="append", required=True,
                        help="what to segment, e.g. 'tumor nuclei' (repeat for several)")
    parser.add_argument("--out", "-o", required=True, help="output directory (new or empty, or a run to --resume)")
    parser.add_argument("--mpp", type=_mpp_arg, default=None,
                        help="level-0 microns per pixel (when the slide does not record it, or to override), "
                             "or 'auto' to estimate it from the nuclei (reported with its uncertainty)")
    parser.add_argument("--backend", choices=["auto", "tifffile", "openslide", "dicom"], default="auto",
                        help="slide reader (default auto: DICOM-WSI with OpenSlide, else tifffile, else "
                             "OpenSlide; openslide/dicom need pip install 'pathsegmentor[slides]')")
    parser.add_argument("--level", type=int, default=None,
                        help="pyramid level to read (default: the one closest to the model's mpp, not coarser)")
    parser.add_argument("--model", default=None, help="registered model name or model directory "
                        "(default: pathsegmentor-tiny)")
    parser.add_argument("--tile", type=int, default=None, help="tile size in working pixels (default: model input size)")
    parser.add_argument("--overlap", type=int, default=None, help="tile overlap in working pixels (default: model config)")
    parser.add_argument("--geojson", action="store_true", help="also write a QuPath GeoJSON (detections + annotations)")
    inst = parser.add_mutually_exclusive_group()
    inst.add_argument("--instances", dest="instances", action="store_true", default=None,
                      help="separate instances for every prompt (default: only cell/nucleus prompts)")
    inst.add_argument("--no-instances", dest="instances", action="store_false", help="no instance separation")
    parser.add_argument("--float", dest="dtype", action="store_const", const="float32", default="uint8",
                        help="write float32 probabilities (default: uint8, probability x 255)")
    parser.add_argument("--no-tissue", dest="tissue", action="store_false",
                        help="predict every tile (default: skip tiles without tissue on the thumbnail)")
    parser.add_argument("--threshold", type=float, default=None, help="mask threshold (default: model config)")
    parser.add_argument("--rows-per-band", type=int, default=1, help="tile rows per band (resume/split unit)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--vocabulary", choices=["model", "open"], default="model",
                        help="model (default): ground prompts in the ontology, skip what the model cannot answer; "
                             "open: raw text to the text tower, unchecked")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; errors are printed as one clear line with the fix."""
    from .reader import SlideError

    prog = "pathsegmentor slide"
    try:
        from .._compat import ensure_torchvision

        ensure_torchvision()
        from ..cli import DEFAULT_MODEL, RunError, UsageError, load_model
    except ImportError as e:  # pragma: no cover
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    try:
        if args.threshold is not None and not 0.0 < args.threshold < 1.0:
            raise UsageError(f"--threshold {args.threshold}: must be in (0, 1).")
        if args.mpp not in (None, "auto") and not 0.0 < args.mpp < 100.0:
            raise UsageError(f"--mpp {args.mpp}: not a microns-per-pixel value (e.g. 0.25 for 40x, 0.5 for 20x).")
        # check the slide before loading a model: a bad file fails at once
        from .reader import open_slide, require_mpp

        with open_slide(args.slide, mpp=None if args.mpp == "auto" else args.mpp, backend=args.backend) as reader:
            if args.mpp == "auto":
                from .mpp_auto import estimate_slide_mpp

                estimate_slide_mpp(reader)
            require_mpp(reader)
            if args.level is not None:
                reader.level(args.level)
        device = args.device
        if device is None:
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        import os

        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            device = None  # Accelerate places the model on this process's device
        model, _ = load_model(args.model or DEFAULT_MODEL, device=device)
        from .infer import segment_slide

        result = segment_slide(model, args.slide, args.prompt, args.out, mpp=args.mpp, level=args.level,
                               tile=args.tile, overlap=args.overlap, geojson=args.geojson,
                               instances=args.instances, resume=args.resume, dtype=args.dtype,
                               tissue=args.tissue, rows_per_band=args.rows_per_band,
                               mask_threshold=args.threshold, progress=not args.quiet,
                               vocabulary=args.vocabulary, backend=args.backend)
    except (SlideError, UsageError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished bands are kept in {args.out}/.partial — rerun with --resume",
              file=sys.stderr)
        return 130
    if result is not None:
        s = result.summary
        print(f"{prog}: backend {s['backend']} ({s['backend_reason']}); mpp {s['slide_mpp']:.4g} µm/px from "
              f"{s['mpp_source']}", file=sys.stderr)
        for r in s.get("refused_prompts", []):
            print(f"{prog}: warning: prompt '{r['prompt']}' refused: {r['reason']}", file=sys.stderr)
        for r in s.get("prompt_resolution", []):
            if r["relation"] in ("broader", "narrower", "nuclei-of"):
                print(f"{prog}: warning: prompt '{r['prompt']}': {r['reason']}", file=sys.stderr)
        print(json.dumps({"out": str(result.out), "masks": {k: str(v) for k, v in result.masks.items()},
                          "backend": s["backend"], "slide_mpp": s["slide_mpp"], "mpp_source": s["mpp_source"],
                          **({"mpp_estimate": s["mpp_estimate"]} if "mpp_estimate" in s else {}),
                          "tiles": s["tiles"], "tissue": s["tissue"], "prompts": s["prompts"],
                          **({"tumor_stroma": s["tumor_stroma"]} if "tumor_stroma" in s else {})}, indent=2))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pathsegmentor slide", description="segment a whole-slide image")
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return int(e.code or 0)
    return run(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
