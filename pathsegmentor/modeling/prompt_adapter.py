"""Text embedding -> a few sparse prompt tokens in the mask decoder's space."""
from __future__ import annotations

import torch
from torch import nn


class TextPromptAdapter(nn.Module):
    """Maps a text embedding to ``num_tokens`` sparse prompt tokens.

    The tokens are concatenated with SAM's point/box tokens (if any) and fed to the mask decoder's
    two-way transformer exactly like point prompts.

    Args:
        text_dim: D of the text tower.
        embed_dim: C of the mask decoder (256 for SAM).
        num_tokens: K tokens per phrase.
    """

    def __init__(self, *, text_dim: int, embed_dim: int, num_tokens: int = 4, hidden_dim: int = 512,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.num_tokens = num_tokens
        self.embed_dim = embed_dim
        self.mlp = nn.Sequential(
            nn.LayerNorm(text_dim),
            nn.Linear(text_dim, hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, num_tokens * embed_dim),
        )
        # like SAM's point_embeddings: a learned type embedding marks these as text tokens
        self.token_type = nn.Parameter(torch.randn(num_tokens, embed_dim) * 0.02)

    def forward(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """``float [N, D]`` -> ``float [N, K, C]``."""
        n = text_embeddings.shape[0]
        tokens = self.mlp(text_embeddings).view(n, self.num_tokens, self.embed_dim)
        return tokens + self.token_type
