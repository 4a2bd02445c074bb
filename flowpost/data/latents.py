"""Precomputed latents and text embeddings, streamed from disk (the data of large models).

A GPU user encodes the images once with the model's VAE and the prompts once with its text
encoders, and writes shards with :func:`write_latent_shards`: a folder of ``*.safetensors``
files (or a single file), each holding

* ``latents``: ``(n, C, H, W)``, what the VAE gives (scaled and shifted as the pipeline does);
* ``prompt_embeds``: ``(n, L, D)`` and ``pooled_prompt_embeds``: ``(n, P)``, what the
  pipeline's ``encode_prompt`` returns (optional: without them the data is unconditional).

:class:`LatentData` memory-maps the shards and reads only the rows of each batch, so a data
set far larger than the GPU (or the RAM) trains; nothing is moved to the device whole. The
condition of a sample is one float vector, ``[prompt_embeds.flatten(), pooled]``, which every
method can slice and repeat like any tensor (the diffusers adapter unpacks it).

Example:
    >>> import tempfile, torch
    >>> root = tempfile.mkdtemp()
    >>> write_latent_shards(root, torch.randn(10, 4, 8, 8), torch.randn(10, 3, 8),
    ...                     torch.randn(10, 5), shard_size=4)
    3
    >>> data = LatentData(root)
    >>> len(data), data.spec.shape, data.batch(torch.tensor([0, 9])).cond.shape
    (10, (4, 8, 8), torch.Size([2, 29]))
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from flowpost.data.base import Batch, DataSpec

KEYS = ("latents", "prompt_embeds", "pooled_prompt_embeds")


def write_latent_shards(
    root: str | Path,
    latents: Tensor,
    prompt_embeds: Tensor | None = None,
    pooled_prompt_embeds: Tensor | None = None,
    *,
    shard_size: int = 1024,
    dtype: torch.dtype = torch.float16,
) -> int:
    """Write ``shard_XXXXX.safetensors`` files under ``root``; returns the shard count."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    n = latents.shape[0]
    if (prompt_embeds is None) != (pooled_prompt_embeds is None):
        raise ValueError("give both prompt_embeds and pooled_prompt_embeds, or neither")
    shards = 0
    for start in range(0, n, shard_size):
        part = {"latents": latents[start : start + shard_size]}
        if prompt_embeds is not None and pooled_prompt_embeds is not None:
            part["prompt_embeds"] = prompt_embeds[start : start + shard_size]
            part["pooled_prompt_embeds"] = pooled_prompt_embeds[start : start + shard_size]
        tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in part.items()}
        save_file(tensors, str(root / f"shard_{shards:05d}.safetensors"))
        shards += 1
    return shards


class _Shard:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = safe_open(str(path), framework="pt")
        keys = set(self.handle.keys())
        if "latents" not in keys:
            raise ValueError(f"{path}: holds no 'latents' tensor (keys: {sorted(keys)})")
        self.conditional = "prompt_embeds" in keys and "pooled_prompt_embeds" in keys
        if ("prompt_embeds" in keys) != ("pooled_prompt_embeds" in keys):
            raise ValueError(f"{path}: has only one of prompt_embeds / pooled_prompt_embeds")
        self.shapes = {k: tuple(self.handle.get_slice(k).get_shape()) for k in KEYS if k in keys}
        self.n = self.shapes["latents"][0]
        if len(self.shapes["latents"]) != 4:
            raise ValueError(f"{path}: latents must be (n, C, H, W), got {self.shapes['latents']}")
        for k, shape in self.shapes.items():
            if shape[0] != self.n:
                raise ValueError(f"{path}: {k} has {shape[0]} rows but latents have {self.n}")

    def rows(self, key: str, index: list[int]) -> Tensor:
        part = self.handle.get_slice(key)
        return torch.cat([part[i : i + 1] for i in index], 0)


class LatentData:
    """Latents (and text conditions) read from safetensors shards, a batch at a time.

    ``index`` restricts the data to some rows (a train / held-out split). ``streamed`` tells
    the trainer to call :meth:`batch` instead of holding ``x`` on the device.
    """

    streamed = True

    def __init__(
        self, path: str | Path, index: Tensor | None = None, *, name: str = "latents"
    ) -> None:
        root = Path(path)
        if not root.exists():
            raise FileNotFoundError(f"latent data not found: {root}")
        files = sorted(root.glob("*.safetensors")) if root.is_dir() else [root]
        if not files:
            raise ValueError(
                f"{root}: no .safetensors shards (write them with write_latent_shards)"
            )
        self.shards = [_Shard(f) for f in files]
        first = self.shards[0]
        for shard in self.shards[1:]:
            for k in KEYS:
                a, b = first.shapes.get(k), shard.shapes.get(k)
                if (a is None) != (b is None) or (a and b and a[1:] != b[1:]):
                    raise ValueError(
                        f"{shard.path}: {k} shaped {b} does not match {first.path} ({a})"
                    )
        self.conditional = first.conditional
        self.offsets = [0]
        for shard in self.shards:
            self.offsets.append(self.offsets[-1] + shard.n)
        total = self.offsets[-1]
        if total == 0:
            raise ValueError(f"{root}: the latent data is empty")
        self.index = torch.arange(total) if index is None else index.long()
        self.root = root
        self.name = name
        self.cond_dim = (
            first.shapes["prompt_embeds"][1] * first.shapes["prompt_embeds"][2]
            + first.shapes["pooled_prompt_embeds"][1]
            if self.conditional
            else 0
        )
        shape = tuple(first.shapes["latents"][1:])
        self.spec = DataSpec(shape, None, self.cond_dim if self.conditional else None)

    def __len__(self) -> int:
        return int(self.index.numel())

    def subset(self, index: Tensor) -> LatentData:
        """The rows ``index`` (positions in this data) as a new :class:`LatentData`."""
        out = LatentData.__new__(LatentData)
        out.__dict__.update(self.__dict__)
        out.index = self.index[index.long()]
        return out

    def _read(self, rows: Tensor) -> Batch:
        groups: dict[int, list[tuple[int, int]]] = {}
        for pos, r in enumerate(rows.tolist()):
            s = max(i for i in range(len(self.shards)) if self.offsets[i] <= r)
            groups.setdefault(s, []).append((pos, r - self.offsets[s]))
        n = rows.numel()
        x = torch.empty((n, *self.spec.shape))
        cond = torch.empty((n, self.cond_dim)) if self.conditional else None
        for s, items in groups.items():
            where = torch.tensor([p for p, _ in items])
            local = [r for _, r in items]
            x[where] = self.shards[s].rows("latents", local).float()
            if cond is not None:
                prompt = self.shards[s].rows("prompt_embeds", local).float().flatten(1)
                pooled = self.shards[s].rows("pooled_prompt_embeds", local).float()
                cond[where] = torch.cat([prompt, pooled], 1)
        bad = ~torch.isfinite(x.flatten(1)).all(1)
        if cond is not None:
            bad |= ~torch.isfinite(cond).all(1)
        if bool(bad.any()):
            row = int(rows[int(bad.nonzero()[0, 0])])
            raise ValueError(f"{self.root}: sample {row} contains NaN or Inf; clean the shards")
        return Batch(x, cond)

    def batch(self, index: Tensor) -> Batch:
        """Read the samples at positions ``index`` (CPU float32)."""
        return self._read(self.index[index.cpu().long()])

    def all(self) -> Batch:
        return self._read(self.index)

    @property
    def x(self) -> Tensor:
        """Every latent of this (small, e.g. held-out) split, read now."""
        return self.all().x

    @property
    def cond(self) -> Tensor | None:
        return self.all().cond


def toy_latents(
    n: int,
    *,
    channels: int = 16,
    size: int = 8,
    text_len: int = 4,
    text_dim: int = 32,
    pooled_dim: int = 32,
    concepts: int = 4,
    noise: float = 0.3,
    seed: int = 0,
) -> tuple[Tensor, Tensor, Tensor]:
    """A synthetic stand-in for encoded images and prompts (for CPU recipes and tests):
    ``concepts`` fixed "prompts" (random embeddings), each with its own smooth latent
    pattern; a sample is its prompt's pattern plus ``noise``. Returns ``(latents,
    prompt_embeds, pooled_prompt_embeds)`` shaped ``(n, C, S, S)``, ``(n, L, D)``, ``(n, P)``.

    >>> lat, prompt, pooled = toy_latents(6, channels=4, size=4, text_len=2, text_dim=8)
    >>> lat.shape, prompt.shape, pooled.shape
    (torch.Size([6, 4, 4, 4]), torch.Size([6, 2, 8]), torch.Size([6, 32]))
    """
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(concepts, channels, 2, 2, generator=g)
    patterns = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")
    patterns = patterns / patterns.flatten(1).std(1).view(-1, 1, 1, 1)
    prompts = torch.randn(concepts, text_len, text_dim, generator=g)
    pooled = torch.randn(concepts, pooled_dim, generator=g)
    which = torch.arange(n) % concepts
    latents = patterns[which] + noise * torch.randn(n, channels, size, size, generator=g)
    return latents, prompts[which], pooled[which]


__all__ = ["LatentData", "toy_latents", "write_latent_shards"]
