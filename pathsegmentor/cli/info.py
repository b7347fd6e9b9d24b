"""``pathsegmentor list-models`` and ``pathsegmentor info``: the registered variants, and one model's
configuration, parameter counts per part and weight locations (in lookup order)."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .errors import UsageError


def cmd_list_models(args: argparse.Namespace) -> int:
    from ..modeling.registry import get_model_config, list_models

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

    from .._compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    from ..modeling.image_encoder import build_image_encoder
    from ..modeling.mask_decoder import build_mask_decoder
    from ..modeling.prompt_adapter import TextPromptAdapter
    from ..modeling.build import UNUSED_SAM_PARTS
    from ..modeling.text_encoder import build_text_encoder

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
    from ..modeling.registry import get_model_config
    from ..modeling.weights import CONFIG_NAME, PACKAGE_WEIGHTS, WEIGHTS_NAME, _offline, cache_dir

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
    from ..modeling.config import ModelConfig
    from ..modeling.registry import get_model_config, list_models
    from ..modeling.weights import CONFIG_NAME

    spec = args.model
    p = Path(spec).expanduser()
    if p.is_dir() and (p / CONFIG_NAME).is_file():
        cfg = ModelConfig.from_file(p / CONFIG_NAME)
        sources = [{"where": str(p.resolve()), "kind": "model dir", "found": True}]
    elif spec in list_models():
        sources = weight_sources(spec)
        shipped = next((Path(s["where"]) for s in sources if s["found"] and s["kind"].startswith("model dir")), None)
        # the config that loads with the weights (its inference section and provenance), else the registry's
        cfg = ModelConfig.from_file(shipped / CONFIG_NAME) if shipped is not None else get_model_config(spec)
    else:
        raise UsageError(f"Unknown model '{spec}'. Available: {list_models()} (or a directory with {CONFIG_NAME}).")
    counts = parameter_counts(cfg)
    pp = cfg.preprocess
    settings = inference_settings(cfg)
    if args.json:
        print(json.dumps({"config": cfg.to_dict(), "parameters": counts, "weights": sources,
                          "inference_settings": settings}, indent=2))
        return 0
    print(f"{cfg.name}: {' '.join(cfg.description.split())}")
    print(f"input size: {pp.input_size}{' (fixed window)' if pp.fixed_input else f' max window, padded to a multiple of {pp.size_divisor}'}"
          f"; mpp: {pp.mpp} um/px; prompt template: {pp.prompt_template!r}")
    print(f"working um/px per structure (preprocess.structure_mpp, as trained; segment(), slides and the viewer "
          f"rescale each prompt to it): {dict(pp.structure_mpp) or 'none (everything at mpp)'}")
    print("parameters:")
    for part, c in counts.items():
        print(f"  {part:<15} {c['total']:>13,d} total  {c['trainable']:>13,d} trainable")
    print("weights (looked up in this order):")
    for s in sources:
        state = {True: "found", False: "absent", None: "online only"}[s["found"]]
        print(f"  [{state}] {s['where']}  ({s['kind']})")
    print("inference settings (value, where it came from, what it does):")
    width = max(len(r["setting"]) for r in settings)
    for r in settings:
        print(f"  {r['setting']:<{width}} = {json.dumps(r['value'])}")
        print(f"  {'':<{width}}   from: {r['source']}")
        print(f"  {'':<{width}}   {r['doc']}")
    print("config:")
    print(json.dumps(cfg.to_dict(), indent=2))
    return 0


def inference_settings(cfg) -> list[dict[str, Any]]:
    """One row per :class:`~pathsegmentor.modeling.inference_config.InferenceConfig` field: ``setting``, ``value``,
    ``source`` (the config's ``provenance`` entry: ``recipe: ...`` or ``calibration: ...``; else ``default``) and
    ``doc`` (the field's first sentence)."""
    from dataclasses import asdict

    from ..modeling.inference_config import inference_field_docs

    docs = inference_field_docs()
    values = json.loads(json.dumps(asdict(cfg.inference)))
    prov = cfg.provenance or {}
    return [{"setting": k, "value": v, "source": prov.get(f"inference.{k}", "default"), "doc": docs[k]}
            for k, v in values.items()]

