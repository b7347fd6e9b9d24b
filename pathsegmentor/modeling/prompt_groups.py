"""Training batches that mix prompt kinds (text; text + box; box alone; point alone): each kind is decoded as its own
group, exactly as ``segment()`` decodes that kind, and the rows are put back in their order."""
from __future__ import annotations

import torch

# (text, box, point) used by each group, in decoding order
KINDS = ((True, False, False), (True, True, False), (False, True, False), (False, False, True))


def decode_prompt_groups(model, features, pixels: torch.Tensor, *, text_embeddings: torch.Tensor | None,
                         has_text: torch.Tensor, image_index: torch.Tensor, boxes: torch.Tensor | None,
                         points: torch.Tensor | None, separation: bool | torch.Tensor):
    """Decode ``M`` rows of mixed kinds with ``model.decode``.

    Args:
        features / pixels: as :meth:`PathSegmentor.decode` (the image features are computed once for all groups).
        text_embeddings: ``[M, D]`` (rows without text: zeros) or None; ``has_text``: ``bool [M]``.
        image_index: ``int64 [M]``; boxes: ``[M, 4]`` XYXY, NaN where a row has none; points: ``[M, 2]`` XY, NaN
            where a row has none (one foreground point); separation: as :meth:`PathSegmentor.decode`.

    Returns:
        ``(mask_logits [M, h, w], presence_logits [M], separation [M, K, h, w] or None)`` in row order.
    """
    m = has_text.shape[0]
    none = torch.zeros_like(has_text)
    has_box = ~torch.isnan(boxes.reshape(m, 4)[:, 0]) if boxes is not None else none
    has_point = ~torch.isnan(points.reshape(m, 2)[:, 0]) if points is not None else none
    selectors = (has_text & ~has_box & ~has_point, has_text & has_box, ~has_text & has_box, ~has_text & has_point)
    parts = []
    for rows_mask, (use_text, use_box, use_point) in zip(selectors, KINDS):
        rows = rows_mask.nonzero(as_tuple=True)[0]
        if rows.numel() == 0:
            continue
        pts = None
        if use_point:
            xy = points.reshape(m, 1, 2)[rows]
            pts = (xy, torch.ones(xy.shape[:2], dtype=torch.long, device=xy.device))
        group_sep = separation[rows] if isinstance(separation, torch.Tensor) else separation
        parts.append((rows, model.decode(features, pixels, image_index=image_index[rows], separation=group_sep,
                                         text_embeddings=text_embeddings[rows] if use_text else None,
                                         boxes=boxes.reshape(m, 4)[rows] if use_box else None, points=pts)))
    # the groups back in row order with one gather each (no zero-filled copies per group)
    back = torch.argsort(torch.cat([r for r, _ in parts]))
    logits = torch.cat([o.mask_logits for _, o in parts]).index_select(0, back)
    presence = torch.cat([o.presence_logits for _, o in parts]).index_select(0, back)
    sep = None
    if any(o.separation is not None for _, o in parts):
        ref = next(o.separation for _, o in parts if o.separation is not None)
        sep = torch.cat([o.separation if o.separation is not None else ref.new_zeros((len(r), *ref.shape[1:]))
                         for r, o in parts]).index_select(0, back)
    return logits, presence, sep
