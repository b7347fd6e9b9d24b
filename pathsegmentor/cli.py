"""The ``pathsegmentor`` command line.

Subcommands: ``segment``, ``demo``, ``list-models``, ``info`` here; ``train``, ``evaluate``,
``distill``, ``slide`` (and any added with :func:`register_subcommand`) live in their own modules,
each exposing ``add_arguments(parser)`` and ``run(args) -> int``, imported only when their command
runs. Nothing heavy (torch, segment_anything, transformers) is imported at module level, so
``pathsegmentor --help`` answers at once.

Exit codes: 0 success, 1 runtime failure (weights, checkpoint, model errors), 2 bad usage or input.
Outputs are written into a staging folder beside ``--out`` and moved in only after every image
succeeded, so a failed run leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

DEFAULT_MODEL = "pathsegmentor-tiny"
DEMO_PROMPTS = ("nuclei", "gland", "tumor nuclei", "inflammatory nuclei")
SAMPLES_DIR = Path(__file__).resolve().parent / "samples"


class UsageError(Exception):
    """Bad arguments or input: reported on stderr, exit code 2."""


class RunError(Exception):
    """A failure while running (weights, checkpoint, model): reported on stderr, exit code 1."""


# --------------------------------------------------------------------------------------------------
# subcommands implemented in other modules (imported lazily)


@dataclass(frozen=True)
class ExternalCommand:
    module: str
    help: str


SUBCOMMANDS: dict[str, ExternalCommand] = {
    "train": ExternalCommand("pathsegmentor.train", "fine-tune or pre-train a model (Accelerate)"),
    "evaluate": ExternalCommand("pathsegmentor.evaluate", "evaluate a model on labelled images"),
    "distill": ExternalCommand("pathsegmentor.cellsam.distill", "CellSAM: distil the large image encoder into a light one"),
    "slide": ExternalCommand("pathsegmentor.slide.cli", "segment a whole-slide image"),
}


def register_subcommand(name: str, module: str, help: str = "") -> None:
    """Add a subcommand served by ``module`` (which defines ``add_arguments(parser)`` and ``run(args)``)."""
    SUBCOMMANDS[name] = ExternalCommand(module, help)


def _run_external(name: str, argv: list[str]) -> int:
    import importlib

    cmd = SUBCOMMANDS[name]
    try:
        module = importlib.import_module(cmd.module)
    except ModuleNotFoundError as e:
        missing = e.name or ""
        if cmd.module == missing or cmd.module.startswith(missing + "."):
            raise RunError(f"'pathsegmentor {name}' is not available in this installation: its module "
                           f"'{cmd.module}' is missing. Update pathsegmentor (pip install -U pathsegmentor) "
                           f"or install from a source checkout that has it.") from None
        raise RunError(f"'pathsegmentor {name}' needs the package '{missing}', which is not installed: "
                       f"pip install {missing.split('.')[0]} (or pip install 'pathsegmentor[train]').") from None
    for attr in ("add_arguments", "run"):
        if not callable(getattr(module, attr, None)):
            raise RunError(f"'{cmd.module}' does not define {attr}(); it cannot serve 'pathsegmentor {name}'.")
    parser = argparse.ArgumentParser(prog=f"pathsegmentor {name}", description=cmd.help or None)
    module.add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2), already printed by argparse
        return int(e.code or 0)
    return int(module.run(args) or 0)


# --------------------------------------------------------------------------------------------------
# helpers


def slugify(text: str) -> str:
    """File-name-safe form of a prompt: lower case, runs of other characters become ``-``."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug or "prompt"


def _unique_slugs(prompts: Sequence[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for p in prompts:
        s = slugify(p)
        if s in seen:
            seen[s] += 1
            s = f"{s}-{seen[s]}"
        else:
            seen[s] = 1
        out.append(s)
    return out


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


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out '{out}' exists and is not a directory; choose a directory path.")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise UsageError(f"--out '{out}': '{parent}' is a file, so the directory cannot be created.")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise UsageError(f"--out '{out}': no write permission in '{parent}'.")
            break


def _check_model_spec(spec: str) -> None:
    """Reject an unknown model name before anything heavy runs (a dir or a hub id ``org/name`` pass)."""
    from .registry import list_models

    p = Path(spec).expanduser()
    if p.is_dir() or spec in list_models():
        return
    if p.exists():
        raise UsageError(f"--model '{spec}' is a file; pass a registered model name or a directory holding "
                         f"config.json + model.safetensors (from save_pretrained).")
    if "/" in spec and not spec.startswith((".", "/", "~")) and spec.count("/") == 1:
        return  # a Hugging Face hub id; from_pretrained resolves it (or says how, offline)
    raise UsageError(f"Unknown model '{spec}'. Available: {list_models()}. Or pass a model directory "
                     f"(config.json + model.safetensors) or a hub id (org/name).")


def _weights_location(spec: str) -> str:
    """Where ``from_pretrained(spec)`` takes its weights from, for messages (first hit in order)."""
    from .registry import get_model_config, list_models
    from .weights import CONFIG_NAME, PACKAGE_WEIGHTS, WEIGHTS_NAME, cache_dir

    p = Path(spec).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if spec in list_models():
        for d in (PACKAGE_WEIGHTS / spec, cache_dir() / spec):
            if (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file():
                return str(d)
        ckpt = get_model_config(spec).pretrained.get("sam_checkpoint")
        if ckpt:
            for d in (cache_dir(), cache_dir() / spec):
                if (d / ckpt).is_file():
                    return f"{d / ckpt} (official SAM checkpoint)"
    return f"hub '{spec}'"


def load_model(spec: str, device: str | None = None):
    """``from_pretrained(spec)`` with errors turned into :class:`RunError`; returns (model, source)."""
    from .config import ConfigError
    from .weights import CheckpointError, WeightsNotFoundError, from_pretrained

    _check_model_spec(spec)
    try:
        model = from_pretrained(spec, device=device)
    except (WeightsNotFoundError, CheckpointError, ConfigError, OSError) as e:
        raise RunError(f"Cannot load model '{spec}':\n{e}\nOr choose another model with --model NAME_OR_DIR "
                       f"(see 'pathsegmentor list-models').") from None
    model.eval()
    return model, _weights_location(spec)


def _read_images(paths: Sequence[str]) -> list[tuple[Path, Any]]:
    from .image_io import ImageReadError, read_image

    out = []
    for p in paths:
        try:
            out.append((Path(p), read_image(p)))
        except ImageReadError as e:
            raise UsageError(str(e)) from None
    return out


class _Staging:
    """Write outputs into a hidden folder beside ``out``; :meth:`commit` moves them in, else nothing stays."""

    def __init__(self, out: Path) -> None:
        self.out = out
        anchor = next(p for p in [out, *out.parents] if p.exists())
        self.dir = Path(tempfile.mkdtemp(prefix=".pathsegmentor-", dir=anchor))
        self.files: list[str] = []

    def path(self, name: str) -> Path:
        self.files.append(name)
        return self.dir / name

    def commit(self) -> list[Path]:
        self.out.mkdir(parents=True, exist_ok=True)
        written = []
        for name in self.files:
            os.replace(self.dir / name, self.out / name)
            written.append(self.out / name)
        shutil.rmtree(self.dir, ignore_errors=True)
        return written

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def _write_result(stage: _Staging, stem: str, rgb, result, extra: dict[str, Any]) -> dict[str, Any]:
    import numpy as np
    from PIL import Image

    from .overlay import render_result

    files = {"masks": {}}
    for prompt, slug, mask in zip(result.prompts, _unique_slugs(result.prompts), result.masks):
        name = f"{stem}_{slug}.png"
        Image.fromarray(mask.astype(np.uint8) * 255, "L").save(stage.path(name))
        files["masks"][prompt] = name
    files["overlay"] = f"{stem}_overlay.png"
    render_result(rgb, result).save(stage.path(files["overlay"]))
    summary = {**extra, **result.summary(), "files": files}
    name = f"{stem}_summary.json"
    stage.path(name).write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _print_result(label: str, result) -> None:
    for p, s, a in zip(result.prompts, result.presence, result.area_fraction):
        print(f"  {label}  {p!r}: presence {float(s):.3f}, area {100.0 * float(a):.2f}%")


def _float_range(lo: float | None = None, hi: float | None = None, name: str = "value") -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text!r}") from None
        if v != v or (lo is not None and v <= lo) or (hi is not None and v > hi):
            rng = f"({lo}, {hi}]" if hi is not None else f"> {lo}"
            raise argparse.ArgumentTypeError(f"{name} must be in {rng}, got {text}")
        return v

    return parse


# --------------------------------------------------------------------------------------------------
# segment


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
                                    presence_threshold=args.presence_threshold, hires=args.hires)
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


# --------------------------------------------------------------------------------------------------
# demo


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
    stage = _Staging(out)
    try:
        summaries = []
        for s, (path, rgb) in zip(samples, images):
            res = model.segment(rgb, prompts, mpp=s.get("mpp"))
            meta = {k: s[k] for k in ("name", "source", "original_file", "crop_box", "licence") if k in s}
            summaries.append(_write_result(stage, path.stem, rgb, res,
                                           {"input": str(path), "sample": meta, "model_weights": source}))
            for p, pr, a in zip(res.prompts, res.presence, res.area_fraction):
                rows.append((s.get("name", path.stem), p, float(pr), 100.0 * float(a)))
        stage.path("demo_summary.json").write_text(json.dumps(
            {"model": model.name, "model_weights": source, "prompts": prompts, "results": summaries}, indent=2) + "\n")
        stage.commit()
    except BaseException:
        stage.discard()
        raise
    w = max(len(r[0]) for r in rows)
    pw = max(len(r[1]) for r in rows)
    print(f"{'sample':<{w}}  {'prompt':<{pw}}  presence  area %")
    for name, p, pr, a in rows:
        print(f"{name:<{w}}  {p:<{pw}}  {pr:8.3f}  {a:6.2f}")
    print(f"Model used: {model.name} (weights: {source}). Overlays, masks and summaries in {out}")
    return 0


# --------------------------------------------------------------------------------------------------
# list-models / info


def cmd_list_models(args: argparse.Namespace) -> int:
    from .registry import get_model_config, list_models

    names = list_models()
    width = max((len(n) for n in names), default=0)
    for n in names:
        desc = " ".join(get_model_config(n).description.split())
        print(f"{n:<{width}}  {desc}")
    return 0


def parameter_counts(cfg) -> dict[str, dict[str, int]]:
    """Parameters per part of a variant, ``{part: {"total": n, "trainable": m}}``; the big parts are
    built on the meta device (no memory, no init time)."""
    import torch

    from ._compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    from .image_encoder import build_image_encoder
    from .mask_decoder import build_mask_decoder
    from .prompt_adapter import TextPromptAdapter
    from .registry import UNUSED_SAM_PARTS
    from .text_encoder import build_text_encoder

    pp, md = cfg.preprocess, cfg.mask_decoder
    text = build_text_encoder(cfg.text_encoder)  # loads real weights: cannot be built on meta
    with torch.device("meta"):
        img = build_image_encoder(cfg.image_encoder, pp.input_size)
        grid = pp.input_size // 16
        parts = {
            "image_encoder": img,
            "text_encoder": text,
            "prompt_adapter": TextPromptAdapter(text_dim=text.dim, embed_dim=md.transformer_dim,
                                                num_tokens=cfg.prompt_adapter.num_tokens,
                                                hidden_dim=cfg.prompt_adapter.hidden_dim),
            "prompt_encoder": PromptEncoder(embed_dim=md.transformer_dim, image_embedding_size=(grid, grid),
                                            input_image_size=(pp.input_size, pp.input_size), mask_in_chans=16),
            "mask_decoder": build_mask_decoder(
                transformer_dim=md.transformer_dim, depth=md.depth, mlp_dim=md.mlp_dim, num_heads=md.num_heads,
                num_multimask_outputs=md.num_multimask_outputs, iou_head_depth=md.iou_head_depth,
                iou_head_hidden_dim=md.iou_head_hidden_dim, hires=md.hires, hires_dim=md.hires_dim,
                skip_channels=getattr(img, "skip_channels", {}).get(4, 0)),
        }
    counts = {}
    for part, module in parts.items():
        total = trainable = 0
        for name, p in module.named_parameters():
            total += p.numel()
            frozen = (part == "text_encoder" and cfg.text_encoder.frozen) or \
                f"{part}.{name}".startswith(UNUSED_SAM_PARTS)
            trainable += 0 if frozen else p.numel()
        counts[part] = {"total": total, "trainable": trainable}
    counts["all"] = {k: sum(c[k] for c in counts.values()) for k in ("total", "trainable")}
    return counts


def weight_sources(name: str) -> list[dict[str, Any]]:
    """The places ``from_pretrained(name)`` looks, in order, and whether each holds weights now."""
    from .registry import get_model_config
    from .weights import CONFIG_NAME, PACKAGE_WEIGHTS, WEIGHTS_NAME, _offline, cache_dir

    cfg = get_model_config(name)
    rows = []
    for d in (PACKAGE_WEIGHTS / name, cache_dir() / name):
        rows.append({"where": str(d), "kind": "model dir (config.json + model.safetensors)",
                     "found": (d / CONFIG_NAME).is_file() and (d / WEIGHTS_NAME).is_file()})
    ckpt = cfg.pretrained.get("sam_checkpoint")
    if ckpt:
        for d in (cache_dir(), cache_dir() / name):
            rows.append({"where": str(d / ckpt), "kind": f"official SAM checkpoint ({cfg.pretrained.get('sam_url', '')})",
                         "found": (d / ckpt).is_file()})
    if cfg.pretrained.get("hub_id"):
        rows.append({"where": f"hub:{cfg.pretrained['hub_id']}", "kind": "Hugging Face hub",
                     "found": None if not _offline() else False})
    return rows


def cmd_info(args: argparse.Namespace) -> int:
    from .config import ModelConfig
    from .registry import get_model_config, list_models
    from .weights import CONFIG_NAME

    spec = args.model
    p = Path(spec).expanduser()
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        cfg = ModelConfig.from_file(p / CONFIG_NAME)
        sources = [{"where": str(p.resolve()), "kind": "model dir", "found": True}]
    elif spec in list_models():
        cfg = get_model_config(spec)
        sources = weight_sources(spec)
    else:
        raise UsageError(f"Unknown model '{spec}'. Available: {list_models()} (or a directory with {CONFIG_NAME}).")
    counts = parameter_counts(cfg)
    pp = cfg.preprocess
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts, "weights": sources}, indent=2))
        return 0
    print(f"{cfg.name}: {' '.join(cfg.description.split())}")
    print(f"input size: {pp.input_size}{' (fixed window)' if pp.fixed_input else f' max window, padded to a multiple of {pp.size_divisor}'}"
          f"; mpp: {pp.mpp} um/px; prompt template: {pp.prompt_template!r}")
    print("parameters:")
    for part, c in counts.items():
        print(f"  {part:<15} {c['total']:>13,d} total  {c['trainable']:>13,d} trainable")
    print("weights (looked up in this order):")
    for s in sources:
        state = {True: "found", False: "absent", None: "online only"}[s["found"]]
        print(f"  [{state}] {s['where']}  ({s['kind']})")
    print("config:")
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


# --------------------------------------------------------------------------------------------------
# parser and entry point


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pathsegmentor",
        description="Text-prompted segmentation of pathology images.",
        epilog="Example: pathsegmentor segment tile.png --prompt 'tumor nuclei' --prompt gland --mpp 0.25 --out results/",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"pathsegmentor {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("segment", help="segment image files for one or more text prompts",
                       description="Per image: one mask PNG per prompt (0/255), an overlay PNG and a JSON summary.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, TIFF, ...)")
    p.add_argument("--prompt", "-p", action="append", metavar="P",
                   help="a text prompt such as 'tumor nuclei'; repeat for several")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="output directory (created)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME_OR_DIR",
                   help=f"registered model name, model directory or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--mpp", type=_float_range(0.0, 100.0, "--mpp"), default=None,
                   help="microns per pixel of the images (e.g. 0.25 at 40x); rescaled to the model's mpp")
    p.add_argument("--mask-threshold", type=_float_range(0.0, 1.0, "--mask-threshold"), default=None,
                   help="probability above which a pixel is in the mask (default: the model's)")
    p.add_argument("--presence-threshold", type=float, default=None,
                   help="presence probability below which a prompt's mask is left empty (default: the model's)")
    p.add_argument("--no-hires", dest="hires", action="store_const", const=False, default=None,
                   help="switch off the high-resolution mask path")
    p.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"),
                   help="a box prompt in image pixels (XYXY), combined with every text prompt")
    p.add_argument("--device", default=None, help="torch device, e.g. cuda (default: cpu)")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser("demo", help="segment the bundled real sample tiles (the README's main job)",
                       description=f"Segments the bundled tiles (pathsegmentor/samples) for {list(DEMO_PROMPTS)} at "
                                   f"each tile's mpp; writes overlays, masks and summaries.")
    p.add_argument("--out", "-o", default="outputs/demo", metavar="DIR", help="output directory (default: outputs/demo)")
    p.add_argument("--model", "-m", default=DEFAULT_MODEL, metavar="NAME_OR_DIR",
                   help=f"model name, directory or hub id (default: {DEFAULT_MODEL})")
    p.add_argument("--prompt", "-p", action="append", metavar="P", help="replace the demo prompts")
    p.add_argument("--device", default=None, help="torch device (default: cpu)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("list-models", help="list the registered model variants")
    p.set_defaults(func=cmd_list_models)

    p = sub.add_parser("info", help="configuration, parameter counts and weight locations of a model")
    p.add_argument("model", metavar="MODEL", help="registered model name or model directory")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_info)

    for name, cmd in SUBCOMMANDS.items():
        # arguments are defined by the module itself, parsed once it is imported (see _run_external)
        p = sub.add_parser(name, help=cmd.help, add_help=False, prefix_chars="\0")
        p.add_argument("rest", nargs=argparse.REMAINDER)
        p.set_defaults(func=None, external=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code (``sys.exit(main())``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "external", None):
            return _run_external(args.external, list(args.rest))
        return int(args.func(args) or 0)
    except UsageError as e:
        print(f"pathsegmentor {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RunError as e:
        print(f"pathsegmentor {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing written", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
