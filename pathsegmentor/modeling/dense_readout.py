"""Dense mode's readout (:class:`~pathsegmentor.modeling.mask_decoder.PathSegMaskDecoder` with ``dense=True``):
each prompt's mask and separation maps are products of its image's per-pixel embedding (the
:class:`~.pixel_decoder.PixelDecoder`'s, once per image) with weights its mask token predicts, as SAM's
hypernetwork and Mask2Former's mask embedding do: a prompt costs a product, not a conv net."""
from __future__ import annotations

import torch


def dense_maps(weights: torch.Tensor, embedding: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
    """Each prompt's maps as a product with its image's pixel embedding.

    ``weights [M, K * (C + 1)]`` (per map: C weights and a bias), ``embedding [B, C, h, w]``, ``image_index
    int64 [M]`` -> ``[M, K, h, w]``. Grouped by image, so the embedding is never copied per prompt; the groups
    are put back in row order with one gather (no zero-filled scatter per image, forward or backward).
    """
    m = weights.shape[0]
    c = embedding.shape[1]
    w = weights.view(m, -1, c + 1)
    b = embedding.shape[0]
    if m % b == 0 and bool((image_index == torch.arange(b, device=image_index.device).repeat_interleave(m // b)).all()):
        # training's layout (the same number of prompts per image, in image order): one batched product
        wb = w.view(b, -1, c + 1)
        out = torch.baddbmm(wb[..., c:], wb[..., :c], embedding.flatten(2))
        return out.view(m, w.shape[1], *embedding.shape[-2:])
    order = torch.argsort(image_index, stable=True)
    images, counts = torch.unique_consecutive(image_index[order], return_counts=True)
    chunks, start = [], 0
    for i, n in zip(images.tolist(), counts.tolist()):
        wi = w[order[start:start + n]]
        chunks.append(torch.einsum("mkc,chw->mkhw", wi[..., :c], embedding[i]) + wi[..., c, None, None])
        start += n
    out = torch.cat(chunks) if len(chunks) > 1 else chunks[0]
    if bool((order == torch.arange(m, device=order.device)).all()):
        return out
    return out.index_select(0, torch.argsort(order))


def dense_readout(weights: torch.Tensor, embedding: torch.Tensor, image_index: torch.Tensor, *,
                  separation: bool, sep_rows: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(mask_logits [M, h, w], separation [M, K - 1, h, w] or None)`` from the hypernetwork's ``weights``
    (see :func:`dense_maps`); with ``sep_rows`` the separation maps of the other rows are zeros."""
    maps = dense_maps(weights, embedding, image_index)
    sep = maps[:, 1:] if separation else None
    if sep is not None and sep_rows is not None:
        keep = torch.zeros(weights.shape[0], dtype=torch.bool, device=maps.device).index_fill(0, sep_rows, True)
        sep = sep * keep[:, None, None, None].to(sep.dtype)
    return maps[:, 0], sep
