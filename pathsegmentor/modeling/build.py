"""Build a model from its :class:`~pathsegmentor.modeling.config.ModelConfig`: every part from its own
module (image encoder, text tower, prompt adapter, SAM prompt encoder, mask decoder), passed in to the
model class. Random weights; loading is :mod:`.weights`."""
from __future__ import annotations

from .config import ModelConfig


def build_model(cfg: ModelConfig, model_cls: type):
    """Instantiate ``model_cls`` (:class:`~pathsegmentor.modeling.model.PathSegmentorNetwork` or a subclass, passed in
    by the caller) with random weights from ``cfg``. A plug-in image-encoder family may bring its own
    subclass (CellSAM's ``dual`` encoder: :class:`~pathsegmentor.cellsam.model.CellSAM`), used instead."""
    from .._compat import ensure_torchvision

    ensure_torchvision()
    from segment_anything.modeling.prompt_encoder import PromptEncoder

    from .image_encoder import BUILTIN_TYPES, build_image_encoder
    from .mask_decoder import build_mask_decoder
    from .plugins import get_family
    from .prompt_adapter import TextPromptAdapter
    from .text_encoder import build_text_encoder

    pp, md = cfg.preprocess, cfg.mask_decoder
    if cfg.image_encoder.embed_dim != md.transformer_dim:
        raise ValueError(f"image_encoder.embed_dim ({cfg.image_encoder.embed_dim}) must equal "
                         f"mask_decoder.transformer_dim ({md.transformer_dim})")
    if pp.input_size % 16:
        raise ValueError(f"preprocess.input_size must be a multiple of 16, got {pp.input_size}")
    image_encoder = build_image_encoder(cfg.image_encoder, pp.input_size)
    text_encoder = build_text_encoder(cfg.text_encoder)
    grid = pp.input_size // 16
    prompt_encoder = PromptEncoder(embed_dim=md.transformer_dim, image_embedding_size=(grid, grid),
                                   input_image_size=(pp.input_size, pp.input_size), mask_in_chans=16)
    skip_c = getattr(image_encoder, "skip_channels", {}).get(4, 0)
    mask_decoder = build_mask_decoder(transformer_dim=md.transformer_dim, depth=md.depth, mlp_dim=md.mlp_dim,
                                      num_heads=md.num_heads, num_multimask_outputs=md.num_multimask_outputs,
                                      iou_head_depth=md.iou_head_depth, iou_head_hidden_dim=md.iou_head_hidden_dim,
                                      hires=md.hires, hires_dim=md.hires_dim, skip_channels=skip_c,
                                      separation_channels=md.separation_channels, dense=md.dense,
                                      dense_skip_channels=getattr(image_encoder, "skip_channels", {}),
                                      dense_widths=tuple(md.dense_widths), dense_dim=md.dense_dim,
                                      dense_fullres_dim=md.dense_fullres_dim)
    adapter = TextPromptAdapter(text_dim=text_encoder.dim, embed_dim=md.transformer_dim,
                                num_tokens=cfg.prompt_adapter.num_tokens, hidden_dim=cfg.prompt_adapter.hidden_dim,
                                dropout=cfg.prompt_adapter.dropout)
    if cfg.image_encoder.type not in BUILTIN_TYPES:  # a plug-in family may bring its class (CellSAM: mask fusion)
        model_cls = get_family(cfg.image_encoder.type, builtin=BUILTIN_TYPES).model_class or model_cls
    model = model_cls(image_encoder=image_encoder, text_encoder=text_encoder, prompt_adapter=adapter,
                          mask_decoder=mask_decoder, prompt_encoder=prompt_encoder, config=cfg)
    freeze_unused_sam_parts(model)
    return model


# SAM parts our decoder never uses (single-mask output; no mask prompts; no IoU training): frozen so that
# every trainable parameter receives a gradient (DDP needs that) — they still load from SAM checkpoints.
UNUSED_SAM_PARTS = ("mask_decoder.output_hypernetworks_mlps.1.", "mask_decoder.output_hypernetworks_mlps.2.",
                    "mask_decoder.output_hypernetworks_mlps.3.", "mask_decoder.iou_prediction_head.",
                    "prompt_encoder.mask_downscaling.")


# in dense mode the masks are read from the pixel decoder: SAM's per-prompt upscaling and its mask hypernetwork
# stay (official checkpoints load) but are not used
UNUSED_IN_DENSE = ("mask_decoder.output_upscaling.", "mask_decoder.output_hypernetworks_mlps.0.")


def freeze_unused_sam_parts(model) -> None:
    unused = UNUSED_SAM_PARTS + (UNUSED_IN_DENSE if getattr(model.mask_decoder, "dense", False) else ())
    for name, p in model.named_parameters():
        if name.startswith(unused):
            p.requires_grad_(False)
