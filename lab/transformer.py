"""A tiny transformer encoder for the token tasks: the layers, with the norm's placement as a choice.

Names other code relies on (the parametrizations' μP): the token embedding is the nn.Embedding
`embed`, the read-out the Linear `out`; every attention computes softmax(q·k * qk_scale) with the float
attribute `qk_scale` (d_head^-0.5 at build); every residual branch computes x + branch_scale * f(x)
with the float attribute `branch_scale` (1.0 at build).

Placements (Xiong et al. 2020 for Pre-LN against Post-LN; Li et al. 2024 for Mix-LN):
  Post-LN  x = norm(x + f(x))     the original transformer; unstable at depth without warm-up
  Pre-LN   x = x + f(norm(x))     a final norm before the read-out
  Mix-LN   Post-LN in the first ⌊fraction · depth⌋ layers, Pre-LN in the rest
"""
from __future__ import annotations

import torch
from torch import nn


def per_token(norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A norm of features (N, C) applied to (B, T, C): each token is an example, so BatchNorm and
    PowerNorm take their statistics over the batch's tokens, LayerNorm over each token's features."""
    return norm(x.reshape(-1, x.shape[-1])).view(x.shape)


class Branch(nn.Module):
    """One residual branch with its norm: x + branch_scale * f(norm(x)) (pre) or norm(x + branch_scale * f(x)) (post)."""

    def __init__(self, norm: nn.Module, post: bool):
        super().__init__()
        self.norm, self.post, self.branch_scale = norm, post, 1.0

    def f(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.post:
            return per_token(self.norm, x + self.branch_scale * self.f(x))
        return x + self.branch_scale * self.f(per_token(self.norm, x))


class Attention(Branch):
    """Multi-head self-attention over the whole sequence (no causal mask: one answer per sequence)."""

    def __init__(self, width: int, heads: int, norm: nn.Module, post: bool):
        super().__init__(norm, post)
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.qk_scale = (width // heads) ** -0.5

    def f(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, h, T, d)
        # written out, not F.scaled_dot_product_attention: torch.func's forward-mode Hessians go through it
        att = ((q @ k.transpose(-2, -1)) * self.qk_scale).softmax(-1)  # (B, h, T, T)
        return self.proj((att @ v).transpose(1, 2).reshape(B, T, C))


class FeedForward(Branch):
    """The position-wise MLP: width -> 4 width -> width."""

    def __init__(self, width: int, activation: nn.Module, norm: nn.Module, post: bool):
        super().__init__(norm, post)
        self.fc1, self.act, self.fc2 = nn.Linear(width, 4 * width), activation, nn.Linear(4 * width, width)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        # tokens as rows: the activation's units are the 4·width features (the dead-units probe reads them so)
        return self.fc2(self.act(self.fc1(x.reshape(-1, x.shape[-1])))).view(x.shape)


class Layer(nn.Sequential):
    """Attention, then the MLP, each a residual branch."""

    def __init__(self, attn: Attention, mlp: FeedForward):
        super().__init__()
        self.attn, self.mlp = attn, mlp


class Transformer(nn.Module):
    """Token and position embeddings, `depth` layers, an optional final norm, and a read-out of the last token."""

    def __init__(self, vocab: int, length: int, classes: int, width: int, layers: list[Layer], final: nn.Module):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(length, width)
        self.blocks = nn.Sequential(*layers)
        self.final = final
        self.out = nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens) + self.pos.weight[: tokens.shape[1]]  # (B, T, C)
        x = self.blocks(x)
        return self.out(per_token(self.final, x[:, -1:]).squeeze(1))  # the "=" token's answer: (B, classes)
