"""A discriminator on latents and text embeddings, for FAIL and AF on diffusers models.

``D(x, cond, t=None) -> (B,)`` logits: a strided conv trunk over the latents, mean-pooled
into features ``h``; the condition (prompt and pooled embeddings, as packed by
:func:`~flowpost.adapters.diffusers.model.pack_condition`) enters by projection,
``logit = w . h + <h, W_p pooled + W_t mean(prompt)>`` (projection discriminator); AF's
time-conditional variant adds a sinusoidal embedding of ``t`` to ``h``. Logits are float32.

Example:
    >>> import torch
    >>> d = LatentDiscriminator(16, text_dim=8, pooled_dim=4, hidden=16, depth=2)
    >>> d(torch.randn(3, 16, 8, 8), torch.randn(3, 2 * 8 + 4)).shape
    torch.Size([3])
"""

from __future__ import annotations

from torch import Tensor, nn

from flowpost.nets.embeddings import sinusoidal_embedding


class LatentDiscriminator(nn.Module):
    """Projection discriminator on latents ``(B, C, H, W)`` with text conditions."""

    def __init__(
        self,
        channels: int,
        *,
        text_dim: int,
        pooled_dim: int,
        hidden: int = 64,
        depth: int = 2,
        time_conditional: bool = False,
        spectral_norm: bool = False,
    ) -> None:
        super().__init__()
        self.text_dim, self.pooled_dim = text_dim, pooled_dim
        self.time_conditional = time_conditional
        wrap = nn.utils.parametrizations.spectral_norm if spectral_norm else (lambda m: m)
        layers: list[nn.Module] = [wrap(nn.Conv2d(channels, hidden, 3, padding=1)), nn.SiLU()]
        for _ in range(depth):
            layers += [wrap(nn.Conv2d(hidden, hidden, 3, stride=2, padding=1)), nn.SiLU()]
        self.trunk = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(hidden, 1))
        self.pooled_proj = nn.Linear(pooled_dim, hidden, bias=False)
        self.text_proj = nn.Linear(text_dim, hidden, bias=False)
        self.time = nn.Sequential(nn.Linear(64, hidden), nn.SiLU()) if time_conditional else None
        self.hidden = hidden

    def forward(self, x: Tensor, cond: Tensor | None = None, t: Tensor | None = None) -> Tensor:
        h = self.trunk(x).mean(dim=(2, 3))
        if self.time is not None:
            if t is None:
                raise ValueError("this discriminator is time-conditional: pass t (B,)")
            tb = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
            h = h + self.time(sinusoidal_embedding(tb.float(), 64).to(h.dtype))
        logit = self.head(h).squeeze(1)
        if cond is not None:
            from flowpost.adapters.diffusers.model import unpack_condition

            prompt, pooled = unpack_condition(cond, self.text_dim, self.pooled_dim)
            c = self.pooled_proj(pooled.to(h.dtype)) + self.text_proj(prompt.mean(1).to(h.dtype))
            logit = logit + (h * c).sum(1) / self.hidden**0.5
        # float32 logits even under bf16 autocast: rewards, group advantages and BCE built on
        # them lose their small differences in bf16 (group-normalised advantages of nearby
        # rewards came out as {0, 2} instead of {-1, +1})
        return logit.float()


__all__ = ["LatentDiscriminator"]
