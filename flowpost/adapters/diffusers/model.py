"""A diffusers transformer called as a flowpost flow model ``v(x, t, cond)``.

The conversion at the boundary (``../shared/METHODS.md``): diffusers' flow models (FLUX, SD3)
run from data at ``sigma = 0`` to noise at ``sigma = 1`` and predict ``dx/dsigma``; flowpost
runs from noise at ``t = 0`` to data at ``t = 1``. So ``sigma = 1 - t`` and
``v = -v_theirs``. The timestep each family expects: FLUX takes ``sigma`` in ``[0, 1]`` (it
multiplies by 1000 inside), SD3 takes ``1000 sigma``.

* Latents ``x`` are ``(B, C, H, W)`` as the VAE makes them. FLUX packs 2x2 patches into a
  sequence ``(B, H/2 * W/2, 4C)`` with ``(0, row, col)`` position ids; SD3 patchifies inside.
* The condition is one float tensor per sample, ``cond = [prompt_embeds.flatten(), pooled]``
  of size ``L * D + P`` (``D`` = ``joint_attention_dim``, ``P`` = ``pooled_projection_dim``;
  :func:`pack_condition`), so every method can slice, repeat and group it like any tensor.
  ``cond=None`` means an empty prompt (zeros).
* FLUX.1-dev is guidance-distilled: its guidance embedding gets ``guidance`` (default 3.5).
* Sampling time shift: :meth:`DiffusersFlow.sampling_shift` (FLUX's resolution-dependent
  ``exp(mu(seq_len))``, SD3's 3.0); :meth:`DiffusersFlow.sampling_grid` is the flowpost grid.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowpost.adapters.diffusers.config import DiffusersConfig, family_of

# FLUX.1's scheduler config (scheduler/scheduler_config.json of black-forest-labs/FLUX.1-dev)
FLUX_SHIFT = {"base_seq_len": 256, "max_seq_len": 4096, "base_shift": 0.5, "max_shift": 1.15}
SD3_SHIFT = 3.0


def pack_condition(prompt_embeds: Tensor, pooled: Tensor) -> Tensor:
    """One condition tensor ``(B, L * D + P)`` from prompt ``(B, L, D)`` and pooled ``(B, P)``.

    >>> pack_condition(torch.zeros(2, 3, 4), torch.ones(2, 5)).shape
    torch.Size([2, 17])
    """
    return torch.cat([prompt_embeds.flatten(1), pooled], dim=1)


def unpack_condition(cond: Tensor, text_dim: int, pooled_dim: int) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`pack_condition`; a size that does not fit is a one-line error."""
    if cond.ndim != 2:
        raise ValueError(
            f"the condition must be (batch, L * {text_dim} + {pooled_dim}) prompt and pooled "
            f"embeddings, got shape {tuple(cond.shape)}"
        )
    k = cond.shape[1] - pooled_dim
    if k <= 0 or k % text_dim:
        raise ValueError(
            f"condition size {cond.shape[1]} is not L * {text_dim} (joint_attention_dim) + "
            f"{pooled_dim} (pooled_projection_dim): the text embeddings do not fit this "
            "transformer; encode the prompts with its own text encoders"
        )
    return cond[:, :k].reshape(cond.shape[0], k // text_dim, text_dim), cond[:, k:]


def pack_latents(x: Tensor) -> Tensor:
    """FLUX packing ``(B, C, H, W) -> (B, H/2 * W/2, 4C)`` (2x2 patches, as FluxPipeline)."""
    b, c, h, w = x.shape
    x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(b, (h // 2) * (w // 2), c * 4)


def unpack_latents(x: Tensor, h: int, w: int) -> Tensor:
    """Inverse of :func:`pack_latents`."""
    b, _, d = x.shape
    c = d // 4
    x = x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(b, c, h, w)


def latent_image_ids(h: int, w: int, device: Any, dtype: torch.dtype) -> Tensor:
    """FLUX position ids ``(H/2 * W/2, 3)``: ``(0, row, col)`` of each packed patch."""
    ids = torch.zeros(h // 2, w // 2, 3)
    ids[..., 1] += torch.arange(h // 2)[:, None]
    ids[..., 2] += torch.arange(w // 2)[None, :]
    return ids.reshape(-1, 3).to(device=device, dtype=dtype)


def flux_shift(seq_len: int) -> float:
    """FLUX's resolution-dependent shift ``exp(mu)``, ``mu`` linear in the sequence length
    (0.5 at 256 tokens, 1.15 at 4096); equal to SD3's shift formula with ``s = exp(mu)``.

    >>> round(flux_shift(256), 4), round(flux_shift(4096), 4)
    (1.6487, 3.1582)
    """
    c = FLUX_SHIFT
    slope = (c["max_shift"] - c["base_shift"]) / (c["max_seq_len"] - c["base_seq_len"])
    mu = c["base_shift"] + slope * (seq_len - c["base_seq_len"])
    return math.exp(mu)


def shifted_grid(steps: int, shift: float, device: Any = None) -> Tensor:
    """flowpost times ``0 = t_0 < ... < t_K = 1`` of the shifted schedule: uniform
    ``sigma`` mapped by ``sigma' = s sigma / (1 + (s - 1) sigma)``, then ``t = 1 - sigma'``.
    ``s > 1`` spends more steps near the noise end.

    >>> shifted_grid(2, 3.0).tolist()
    [0.0, 0.25, 1.0]
    """
    sigma = torch.linspace(1.0, 0.0, steps + 1, device=device)
    sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return 1.0 - sigma


class DiffusersFlow(nn.Module):
    """A diffusers transformer as a flowpost velocity field ``forward(x, t, cond, t_end)``.

    ``t_end`` (AF's target time) is accepted and ignored: with fixed ``k``-step training the
    target time is ``t + 1/k``, a function of ``t``. Only the trainable (LoRA) entries are in
    :meth:`state_dict`; the frozen base comes from where it was loaded (``pretrained``, or
    the config and seed), so checkpoints stay small.

    Example:
        >>> from diffusers import FluxTransformer2DModel  # doctest: +SKIP
        >>> flow = DiffusersFlow(FluxTransformer2DModel(**tiny_config))  # doctest: +SKIP
        >>> flow(torch.randn(2, 16, 8, 8), torch.rand(2), cond).shape  # doctest: +SKIP
        torch.Size([2, 16, 8, 8])
    """

    def __init__(
        self,
        transformer: nn.Module,
        *,
        family: str = "auto",
        guidance: float = 3.5,
        shift: float | None = None,
        dynamic_shift: bool | None = None,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        cfg: Any = getattr(transformer, "config")  # noqa: B009  (diffusers' ConfigMixin)
        self.family = family if family != "auto" else family_of(type(transformer).__name__)
        self.text_dim = int(cfg.joint_attention_dim)
        self.pooled_dim = int(cfg.pooled_projection_dim)
        in_ch = int(cfg.in_channels)
        self.latent_channels = in_ch // 4 if self.family == "flux" else in_ch
        self.guidance = guidance
        self.uses_guidance = bool(getattr(cfg, "guidance_embeds", False))
        self.dynamic_shift = self.family == "flux" if dynamic_shift is None else dynamic_shift
        self.shift = shift if shift is not None else (1.0 if self.family == "flux" else SD3_SHIFT)
        # the shift methods sample with (flowpost.methods.components.common.grid_shift); set
        # for the data's latent size by fit_latents
        self.time_shift = 1.0 if self.dynamic_shift else self.shift
        self._frozen_keys: set[str] = set()
        self.register_load_state_dict_post_hook(_ignore_missing_frozen)

    # -- the frozen/trainable split -------------------------------------------------------
    def freeze_base(self) -> None:
        """Remember which state-dict entries are frozen (all but the trainable ones): they
        are left out of :meth:`state_dict` and not required by ``load_state_dict``."""
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        self._frozen_keys = {k for k in super().state_dict() if k not in trainable}

    def make_ema(self) -> nn.Module:
        """The trainer's EMA of this flow: the adapters only (:class:`LoRAEMA`)."""
        from flowpost.adapters.diffusers.lora import LoRAEMA

        return LoRAEMA(self)

    def frozen_reference(self) -> nn.Module:
        """The frozen reference methods regularise toward: this model with its adapters
        off (:class:`FrozenBase`, no copy of the weights; used by ``frozen_copy``)."""
        from flowpost.adapters.diffusers.lora import FrozenBase

        return FrozenBase(self)

    def trainable(self) -> list[tuple[str, nn.Parameter]]:
        """The trained parameters (the LoRA adapters), in a fixed order."""
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars=False):  # type: ignore[override]
        out = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key in self._frozen_keys:
            out.pop(prefix + key, None)
        return out

    # -- convention -----------------------------------------------------------------------
    def check_latents(self, shape: tuple[int, ...]) -> None:
        """One-line errors for latents that do not fit this transformer."""
        name = type(self.transformer).__name__
        if len(shape) != 3:
            raise ValueError(
                f"{name} needs latents shaped (C, H, W), got samples of shape {tuple(shape)}"
            )
        c, h, w = shape
        if c != self.latent_channels:
            packed = " (in_channels / 4: FLUX packs 2x2 patches)" if self.family == "flux" else ""
            raise ValueError(
                f"latents have {c} channels but {name} expects {self.latent_channels}{packed}; "
                "encode the images with this model's own VAE"
            )
        if self.family == "flux" and (h % 2 or w % 2):
            raise ValueError(f"FLUX latents need an even height and width, got {h}x{w}")

    def fit_latents(self, shape: tuple[int, ...]) -> None:
        """Check latents of ``shape`` ``(C, H, W)`` and sample with their time shift."""
        self.check_latents(shape)
        self.time_shift = self.sampling_shift(shape)

    def sampling_shift(self, shape: tuple[int, ...]) -> float:
        """The time shift for latents of ``shape`` ``(C, H, W)``: FLUX's resolution-dependent
        ``exp(mu)`` when ``dynamic_shift``, else the static ``shift``."""
        if self.dynamic_shift:
            h, w = shape[-2], shape[-1]
            return flux_shift((h // 2) * (w // 2))
        return self.shift

    def sampling_grid(self, steps: int, shape: tuple[int, ...], device: Any = None) -> Tensor:
        """The shifted sampling grid in flowpost time for ``steps`` steps."""
        return shifted_grid(steps, self.sampling_shift(shape), device)

    def forward(
        self, x: Tensor, t: Tensor, cond: Tensor | None = None, t_end: Tensor | None = None
    ) -> Tensor:
        b, _, h, w = x.shape
        dtype = next(self.transformer.parameters()).dtype
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
        t = t.reshape(-1).expand(b) if t.numel() == 1 else t.reshape(b)
        sigma = (1.0 - t).to(dtype)
        if cond is None:
            prompt = x.new_zeros(b, 1, self.text_dim)
            pooled = x.new_zeros(b, self.pooled_dim)
        else:
            prompt, pooled = unpack_condition(cond, self.text_dim, self.pooled_dim)
        prompt, pooled = prompt.to(dtype), pooled.to(dtype)
        if self.family == "flux":
            kwargs: dict[str, Any] = {}
            if self.uses_guidance:
                kwargs["guidance"] = torch.full((b,), self.guidance, device=x.device, dtype=dtype)
            out = self.transformer(
                hidden_states=pack_latents(x.to(dtype)),
                encoder_hidden_states=prompt,
                pooled_projections=pooled,
                timestep=sigma,
                img_ids=latent_image_ids(h, w, x.device, dtype),
                txt_ids=x.new_zeros(prompt.shape[1], 3, dtype=dtype),
                return_dict=False,
                **kwargs,
            )[0]
            v_theirs = unpack_latents(out, h, w)
        else:
            v_theirs = self.transformer(
                hidden_states=x.to(dtype),
                encoder_hidden_states=prompt,
                pooled_projections=pooled,
                timestep=sigma * 1000.0,
                return_dict=False,
            )[0]
        return -v_theirs.to(x.dtype)


def _ignore_missing_frozen(module: nn.Module, incompatible: Any) -> None:
    """``load_state_dict`` post-hook: the frozen base is not in a checkpoint, so its keys
    are not missing (the hook sees the keys relative to the module loading)."""
    frozen: set[str] = getattr(module, "_frozen_keys", set())
    if not frozen:
        return
    keep = []
    for key in incompatible.missing_keys:
        parts = key.split(".")
        if not any(".".join(parts[i:]) in frozen for i in range(len(parts))):
            keep.append(key)
    incompatible.missing_keys[:] = keep


# -------------------------------------------------------------------- loading transformers


def diffusers_folder_class(path: Path) -> tuple[Path, str] | None:
    """``(folder, class name)`` of the transformer in a save_pretrained folder (a model
    folder, or a pipeline folder with ``transformer/``), or None when ``path`` is not a
    diffusers folder at all. A diffusers folder of another kind is a one-line error."""
    path = Path(path)
    if (path / "model_index.json").is_file() and (path / "transformer").is_dir():
        path = path / "transformer"
    config = path / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    name = data.get("_class_name") if isinstance(data, dict) else None
    if not isinstance(name, str):
        return None
    if "Transformer" not in name:
        raise ValueError(
            f"{path} holds a diffusers {name}, not a transformer; point to the transformer "
            "folder (or the pipeline folder that contains transformer/)"
        )
    return path, name


def _model_class(name: str) -> Any:
    import diffusers

    cls = getattr(diffusers, name, None)
    if cls is None or not isinstance(cls, type) or not hasattr(cls, "from_pretrained"):
        raise ValueError(
            f"diffusers.model_class {name!r} is not a diffusers model class (e.g. "
            "FluxTransformer2DModel, SD3Transformer2DModel)"
        )
    return cls


def load_transformer(cfg: DiffusersConfig, pretrained: str | None = None) -> nn.Module:
    """The base transformer: from a local folder or Hub id (``pretrained``), or built at
    random from ``cfg.transformer`` with ``cfg.init_seed`` (nothing downloaded)."""
    dtype = torch.bfloat16 if cfg.base_dtype == "bf16" else torch.float32
    source = pretrained or cfg.pretrained
    if source:
        found = diffusers_folder_class(Path(source)) if Path(source).exists() else None
        if Path(source).exists() and found is None:
            raise ValueError(
                f"{source} is not a diffusers model folder (no config.json with a _class_name)"
            )
        if found is not None:
            folder, name = found
            model = _model_class(name).from_pretrained(str(folder), torch_dtype=dtype)
        else:  # a Hub id: needs a network (and the model's licence accepted)
            if source.startswith((".", "/", "~")) or source.count("/") != 1:
                raise FileNotFoundError(f"diffusers model folder not found: {source}")
            cls = _model_class(cfg.model_class)
            try:
                model = cls.from_pretrained(source, subfolder="transformer", torch_dtype=dtype)
            except OSError as err:
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err)
                raise ValueError(
                    f"cannot load {source!r} from the Hub ({first}); download it with "
                    "save_pretrained and give the local folder instead"
                ) from None
    else:
        if not cfg.transformer:
            raise ValueError(
                "diffusers: give `pretrained` (a diffusers folder) or `transformer` (the "
                "constructor arguments of a random model)"
            )
        cls = _model_class(cfg.model_class)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.init_seed)
            try:
                model = cls(**cfg.transformer)
            except TypeError as err:
                raise ValueError(f"diffusers.transformer: {err}") from None
        if dtype != torch.float32:
            model = model.to(dtype)
    return model


def build_flow(cfg: DiffusersConfig, pretrained: str | None = None) -> DiffusersFlow:
    """The base transformer with LoRA adapters (only they train), wrapped as a flow model."""
    from flowpost.adapters.diffusers.lora import add_lora

    transformer = load_transformer(cfg, pretrained)
    family = cfg.call if cfg.call != "auto" else family_of(type(transformer).__name__)
    add_lora(transformer, cfg)
    if cfg.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()  # type: ignore[operator]
    flow = DiffusersFlow(
        transformer,
        family=family,
        guidance=cfg.guidance,
        shift=cfg.shift,
        dynamic_shift=cfg.dynamic_shift,
    )
    flow.freeze_base()
    return flow


__all__ = [
    "DiffusersFlow",
    "build_flow",
    "load_transformer",
    "diffusers_folder_class",
    "pack_condition",
    "unpack_condition",
    "pack_latents",
    "unpack_latents",
    "latent_image_ids",
    "flux_shift",
    "shifted_grid",
]
