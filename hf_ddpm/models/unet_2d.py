"""`DDPMUNet2DModel`: the DDPM noise predictor ε_θ(x_t, t) (Ho et al. 2020, Appendix B), written from scratch.

Its config and state_dict use diffusers `UNet2DModel`'s names for the DDPM family, so UNet2DModel checkpoints
(google/ddpm-cifar10-32, google/ddpm-church-256, ...) load with `from_pretrained` as they are and give the same
outputs; its defaults are UNet2DModel's defaults, so a config with missing keys means the same network in both.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput
from torch import nn

from .blocks import ACTIVATIONS, DownBlock, MidBlock, TimestepEmbedding, UpBlock, timestep_embedding
from .presets import PRESETS

DOWN_BLOCK_TYPES = ("DownBlock2D", "AttnDownBlock2D")
UP_BLOCK_TYPES = ("UpBlock2D", "AttnUpBlock2D")
MID_BLOCK_TYPES = ("UNetMidBlock2D", None)
TIME_EMBEDDING_TYPES = ("positional",)
RESNET_TIME_SCALE_SHIFTS = ("default", "scale_shift")
RESAMPLE_TYPES = ("conv",)
CLASS_EMBED_TYPES = (None,)


@dataclass
class UNet2DOutput(BaseOutput):
    """
    The output of [`DDPMUNet2DModel`].

    Args:
        sample (`torch.Tensor` of shape `(batch_size, out_channels, height, width)`):
            The model's prediction, ε_θ(x_t, t) for a DDPM trained with L_simple (DDPM eq. 14).
    """

    sample: torch.Tensor


def _check_choice(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"`{name}`={value!r} is not supported; supported values: {list(allowed)}.")


def _check_positive_int(name: str, value: Any, whole: Any = None) -> None:
    """`whole`: the list `value` is an entry of, shown in the message."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        where = "" if whole is None else f" (in {list(whole)})"
        raise ValueError(f"`{name}` must be a positive integer, got {value!r}{where}.")


def _attention_widths(config: Any) -> dict[str, int]:
    """The channels of every attention the config builds, by module name (`down_blocks.1`, `mid_block`, ...)."""
    widths = {}
    for level, (block_type, channels) in enumerate(zip(config.down_block_types, config.block_out_channels)):
        if block_type == "AttnDownBlock2D":
            widths[f"down_blocks.{level}"] = channels
    if config.mid_block_type is not None and config.add_attention:
        widths["mid_block"] = config.block_out_channels[-1]
    for level, (block_type, channels) in enumerate(zip(config.up_block_types, reversed(config.block_out_channels))):
        if block_type == "AttnUpBlock2D":
            widths[f"up_blocks.{level}"] = channels
    return widths


def _check_attention_head_dim(head_dim: int | None, widths: dict[str, int]) -> None:
    """
    Each attention of width C has `C // head_dim` heads of `head_dim` channels (`head_dim=None`: one head of C), as
    in UNet2DModel. A head larger than C would leave no head at all; a head that does not divide C gives an
    attention `(C // head_dim) * head_dim` channels wide inside, which UNet2DModel builds silently and this model
    builds too (its checkpoints load as they are), with a warning.
    """
    if head_dim is None or not widths:
        return
    if isinstance(head_dim, bool) or not isinstance(head_dim, int) or not 1 <= head_dim <= min(widths.values()):
        raise ValueError(
            f"`attention_head_dim`={head_dim!r} must be None (one head) or an integer between 1 and the channels of "
            f"the narrowest attention ({min(widths.values())}); attentions: {widths}."
        )
    narrowed = {name: width for name, width in widths.items() if width % head_dim}
    if narrowed:
        inner = {name: width // head_dim * head_dim for name, width in narrowed.items()}
        warnings.warn(
            f"`attention_head_dim`={head_dim} does not divide the channels of the attentions {narrowed}: their "
            f"queries, keys and values are only {inner} channels wide (whole heads), as in UNet2DModel.",
            UserWarning,
            stacklevel=5,  # the caller of DDPMUNet2DModel(...), through register_to_config
        )


class DDPMUNet2DModel(ModelMixin, ConfigMixin):
    r"""
    The DDPM U-Net (Ho et al. 2020, Appendix B): Wide-ResNet blocks with GroupNorm, a sinusoidal timestep embedding
    added in every block, self-attention at chosen resolutions, written from scratch with diffusers `UNet2DModel`'s
    config fields and parameter names. Under the same seed a config gives UNet2DModel's initial weights, in its
    parameter order. Paper networks and small CPU models: [`~DDPMUNet2DModel.from_preset`].

    Parameters:
        sample_size (`int` or `tuple[int, int]`, *optional*, defaults to `None`):
            Height and width the model was trained at (informational; any size divisible by
            `2 ** (len(block_out_channels) - 1)` runs).
        in_channels (`int`, *optional*, defaults to `3`): Channels of the input sample.
        out_channels (`int`, *optional*, defaults to `3`): Channels of the output.
        center_input_sample (`bool`, *optional*, defaults to `False`): Map the input from [0, 1] to [-1, 1] first.
        time_embedding_type (`str`, *optional*, defaults to `"positional"`): Only `"positional"` (sinusoidal).
        time_embedding_dim (`int`, *optional*, defaults to `None`): Size of the timestep embedding;
            `None` means `4 * block_out_channels[0]`, as in the paper.
        freq_shift (`int`, *optional*, defaults to `0`): Frequency shift of the sinusoidal embedding (the original
            DDPM code and the google checkpoints use `1`).
        flip_sin_to_cos (`bool`, *optional*, defaults to `True`): Cosines first in the embedding (the original DDPM
            code and the google checkpoints use `False`).
        down_block_types (`tuple[str]`, *optional*, defaults to
            `("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D")`):
            One per resolution, highest first: `"DownBlock2D"` or `"AttnDownBlock2D"` (with self-attention).
        mid_block_type (`str`, *optional*, defaults to `"UNetMidBlock2D"`): `"UNetMidBlock2D"` or `None` (no middle).
        up_block_types (`tuple[str]`, *optional*, defaults to
            `("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D")`):
            One per resolution, lowest first: `"UpBlock2D"` or `"AttnUpBlock2D"`.
        block_out_channels (`tuple[int]`, *optional*, defaults to `(224, 448, 672, 896)`): Channels per resolution.
        layers_per_block (`int`, *optional*, defaults to `2`): Residual blocks per resolution on the way down
            (one more on the way up).
        mid_block_scale_factor (`float`, *optional*, defaults to `1`): Divides the middle blocks' outputs.
        downsample_padding (`int`, *optional*, defaults to `1`): Padding of the stride-2 convolutions; `0` pads
            right/bottom only, like TensorFlow's "SAME" (the google checkpoints).
        downsample_type (`str`, *optional*, defaults to `"conv"`): Only `"conv"`.
        upsample_type (`str`, *optional*, defaults to `"conv"`): Only `"conv"`.
        dropout (`float`, *optional*, defaults to `0.0`): Dropout in every residual block (0.1 for CIFAR10 in the
            paper).
        act_fn (`str`, *optional*, defaults to `"silu"`): Nonlinearity of the residual blocks: `"silu"`, `"swish"`,
            `"mish"`, `"gelu"` or `"relu"`.
        attention_head_dim (`int`, *optional*, defaults to `8`): Channels per attention head; `None` means one head
            of all channels, as in the paper. Checked only against the levels that have attention; one that does not
            divide a level's channels gives whole heads only (a narrower attention, as in UNet2DModel) and a warning.
        norm_num_groups (`int`, *optional*, defaults to `32`): GroupNorm groups.
        attn_norm_num_groups (`int`, *optional*, defaults to `None`): GroupNorm groups of the middle attention;
            `None` means `norm_num_groups` with `resnet_time_scale_shift="default"` and no norm with "scale_shift".
        norm_eps (`float`, *optional*, defaults to `1e-5`): GroupNorm epsilon (the google checkpoints use `1e-6`).
        resnet_time_scale_shift (`str`, *optional*, defaults to `"default"`): `"default"` adds the timestep
            embedding; `"scale_shift"` modulates the normalised features by a scale and a shift.
        add_attention (`bool`, *optional*, defaults to `True`): Self-attention in the middle block.
        class_embed_type (`str`, *optional*, defaults to `None`): Only `None` (a learned table when
            `num_class_embeds` is set).
        num_class_embeds (`int`, *optional*, defaults to `None`): Number of classes of a class-conditional model;
            the class's embedding is added to the timestep embedding.
        num_train_timesteps (`int`, *optional*, defaults to `None`): Unused (only for UNet2DModel's "learned" time
            embedding); accepted so that every UNet2DModel config loads.
    """

    _supports_gradient_checkpointing = True
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int | tuple[int, int] | None = None,
        in_channels: int = 3,
        out_channels: int = 3,
        center_input_sample: bool = False,
        time_embedding_type: str = "positional",
        time_embedding_dim: int | None = None,
        freq_shift: int = 0,
        flip_sin_to_cos: bool = True,
        down_block_types: tuple[str, ...] = ("DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
        mid_block_type: str | None = "UNetMidBlock2D",
        up_block_types: tuple[str, ...] = ("AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        block_out_channels: tuple[int, ...] = (224, 448, 672, 896),
        layers_per_block: int = 2,
        mid_block_scale_factor: float = 1,
        downsample_padding: int = 1,
        downsample_type: str = "conv",
        upsample_type: str = "conv",
        dropout: float = 0.0,
        act_fn: str = "silu",
        attention_head_dim: int | None = 8,
        norm_num_groups: int = 32,
        attn_norm_num_groups: int | None = None,
        norm_eps: float = 1e-5,
        resnet_time_scale_shift: str = "default",
        add_attention: bool = True,
        class_embed_type: str | None = None,
        num_class_embeds: int | None = None,
        num_train_timesteps: int | None = None,
    ):
        super().__init__()
        self._check_config()
        base = block_out_channels[0]
        temb_dim = time_embedding_dim or 4 * base
        resnet_kwargs = {
            "groups": norm_num_groups,
            "eps": norm_eps,
            "dropout": dropout,
            "act_fn": act_fn,
            "time_scale_shift": resnet_time_scale_shift == "scale_shift",
        }

        # Modules are created in UNet2DModel's order, so that the same seed gives the same initial weights.
        self.conv_in = nn.Conv2d(in_channels, base, kernel_size=3, padding=1)
        self.time_embedding = TimestepEmbedding(base, temb_dim)
        self.class_embedding = nn.Embedding(num_class_embeds, temb_dim) if num_class_embeds is not None else None
        # Every residual block applies this same nonlinearity to the same embedding before its projection.
        self.temb_act = ACTIVATIONS[act_fn]()
        self.down_blocks, skip_channels = self._build_down_blocks(temb_dim, resnet_kwargs)
        mid_block = self._build_mid_block(temb_dim, resnet_kwargs)
        self.up_blocks = self._build_up_blocks(temb_dim, resnet_kwargs, skip_channels)
        # Registered after the up blocks although created before them: UNet2DModel does the same, so parameters()
        # (which optimizer states index) comes in the same order.
        self.mid_block = mid_block
        self.conv_norm_out = nn.GroupNorm(norm_num_groups, base, eps=norm_eps)
        self.conv_act = nn.SiLU()  # SiLU whatever `act_fn` is, as in UNet2DModel
        self.conv_out = nn.Conv2d(base, out_channels, kernel_size=3, padding=1)
        self.gradient_checkpointing = False

    def _build_down_blocks(self, temb_dim: int, resnet_kwargs: dict) -> tuple[nn.ModuleList, list[int]]:
        """The contracting path, and the channels of the skip connections it leaves for the expanding path."""
        c = self.config
        blocks = nn.ModuleList()
        skip_channels = [c.block_out_channels[0]]  # conv_in's output
        channels = c.block_out_channels[0]
        for level, (block_type, out) in enumerate(zip(c.down_block_types, c.block_out_channels)):
            is_last = level == len(c.block_out_channels) - 1
            block = DownBlock(
                channels,
                out,
                temb_dim,
                c.layers_per_block,
                add_attention=block_type == "AttnDownBlock2D",
                add_downsample=not is_last,
                resnet_kwargs={**resnet_kwargs, "output_scale_factor": 1.0},
                attention_head_dim=c.attention_head_dim,
                downsample_padding=c.downsample_padding,
            )
            blocks.append(block)
            skip_channels += [out] * (c.layers_per_block + (0 if is_last else 1))
            channels = out
        return blocks, skip_channels

    def _build_mid_block(self, temb_dim: int, resnet_kwargs: dict) -> MidBlock | None:
        c = self.config
        if c.mid_block_type is None:
            return None
        attn_norm_groups = c.attn_norm_num_groups
        if attn_norm_groups is None and c.resnet_time_scale_shift == "default":
            attn_norm_groups = c.norm_num_groups  # with "scale_shift", None: the attention has no GroupNorm
        return MidBlock(
            c.block_out_channels[-1],
            temb_dim,
            c.add_attention,
            resnet_kwargs={**resnet_kwargs, "output_scale_factor": c.mid_block_scale_factor},
            attention_head_dim=c.attention_head_dim,
            attn_norm_groups=attn_norm_groups,
        )

    def _build_up_blocks(self, temb_dim: int, resnet_kwargs: dict, skip_channels: list[int]) -> nn.ModuleList:
        """The expanding path; each block consumes `layers_per_block + 1` skips from the top of `skip_channels`."""
        c = self.config
        blocks = nn.ModuleList()
        channels = c.block_out_channels[-1]
        skip_channels = list(skip_channels)
        for level, (block_type, out) in enumerate(zip(c.up_block_types, reversed(c.block_out_channels))):
            consumed = [skip_channels.pop() for _ in range(c.layers_per_block + 1)]
            block = UpBlock(
                channels,
                consumed,
                out,
                temb_dim,
                add_attention=block_type == "AttnUpBlock2D",
                add_upsample=level != len(c.block_out_channels) - 1,
                resnet_kwargs={**resnet_kwargs, "output_scale_factor": 1.0},
                attention_head_dim=c.attention_head_dim,
            )
            blocks.append(block)
            channels = out
        return blocks

    def _check_config(self) -> None:
        """Reject what this model does not implement, naming the supported values, before building anything."""
        c = self.config
        _check_choice("time_embedding_type", c.time_embedding_type, TIME_EMBEDDING_TYPES)
        _check_choice("mid_block_type", c.mid_block_type, MID_BLOCK_TYPES)
        _check_choice("downsample_type", c.downsample_type, RESAMPLE_TYPES)
        _check_choice("upsample_type", c.upsample_type, RESAMPLE_TYPES)
        _check_choice("resnet_time_scale_shift", c.resnet_time_scale_shift, RESNET_TIME_SCALE_SHIFTS)
        _check_choice("class_embed_type", c.class_embed_type, CLASS_EMBED_TYPES)
        _check_choice("act_fn", c.act_fn, tuple(ACTIVATIONS))
        for block_type in c.down_block_types:
            _check_choice("down_block_types", block_type, DOWN_BLOCK_TYPES)
        for block_type in c.up_block_types:
            _check_choice("up_block_types", block_type, UP_BLOCK_TYPES)
        self._check_sizes()
        _check_attention_head_dim(c.attention_head_dim, _attention_widths(c))

    def _check_sizes(self) -> None:
        c = self.config
        n = len(c.block_out_channels)
        if n == 0 or len(c.down_block_types) != n or len(c.up_block_types) != n:
            raise ValueError(
                "`block_out_channels`, `down_block_types` and `up_block_types` must have the same non-zero length, got "
                f"{len(c.block_out_channels)}, {len(c.down_block_types)} and {len(c.up_block_types)}."
            )
        for name in ("in_channels", "out_channels", "layers_per_block"):
            _check_positive_int(name, c[name])
        for channels in c.block_out_channels:
            _check_positive_int("block_out_channels", channels, c.block_out_channels)
        if c.time_embedding_dim is not None:
            _check_positive_int("time_embedding_dim", c.time_embedding_dim)
        if not 0.0 <= c.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {c.dropout}.")
        groups = c.norm_num_groups
        bad = [ch for ch in c.block_out_channels if groups is None or groups < 1 or ch % groups]
        if bad:
            raise ValueError(f"`norm_num_groups`={groups} must divide every entry of `block_out_channels`, not {bad}.")
        groups = c.attn_norm_num_groups
        if groups is not None and (groups < 1 or c.block_out_channels[-1] % groups):
            raise ValueError(
                f"`attn_norm_num_groups`={groups} must be None or divide the middle block's channels "
                f"{c.block_out_channels[-1]}."
            )
        if c.num_class_embeds is not None and c.num_class_embeds < 1:
            raise ValueError(
                f"`num_class_embeds` must be None or a positive number of classes, got {c.num_class_embeds}."
            )

    @property
    def num_downsamplings(self) -> int:
        """How many times the resolution is halved; inputs must be divisible by `2 ** num_downsamplings`."""
        return len(self.config.block_out_channels) - 1

    def _prepare_timesteps(self, timestep: torch.Tensor | float | int, sample: torch.Tensor) -> torch.Tensor:
        """Timesteps as a 1-d tensor of length 1 (one t for the whole batch, broadcast later) or of the batch size."""
        if not torch.is_tensor(timestep):
            # Python floats stay fractional (UNet2DModel truncates them to integers).
            dtype = torch.long if isinstance(timestep, int) else torch.float32
            return torch.tensor([timestep], dtype=dtype, device=sample.device)
        if timestep.ndim > 1 or (timestep.ndim == 1 and timestep.shape[0] not in (1, sample.shape[0])):
            raise ValueError(
                f"`timestep` must be a number, a 0-d tensor or a 1-d tensor of length 1 or the batch size "
                f"{sample.shape[0]}; got shape {tuple(timestep.shape)}."
            )
        return timestep.reshape(-1).to(sample.device)

    def _time_embedding_dtype(self) -> torch.dtype:
        """
        The dtype the time embedding's first layer computes in: its weights' dtype, or the compute dtype when
        diffusers' layerwise casting stores the weights in another. UNet2DModel casts to `ModelMixin.dtype`, which
        gives the same answer by walking every module on each call; this asks the one layer, through the hook
        registry that `ModelMixin.dtype` reads.
        """
        layer = self.time_embedding.linear_1
        registry = getattr(layer, "_diffusers_hook", None)
        hook = registry.get_hook("layerwise_casting") if registry is not None else None
        return hook.compute_dtype if hook is not None else layer.weight.dtype

    def _check_inputs(self, sample: torch.Tensor, class_labels: torch.Tensor | None) -> None:
        c = self.config
        if not torch.is_tensor(sample) or not sample.is_floating_point():
            got = f"dtype {sample.dtype}" if torch.is_tensor(sample) else type(sample).__name__
            raise TypeError(f"`sample` must be a floating-point tensor (float32, float16, bfloat16, ...); got {got}.")
        if sample.ndim != 4 or sample.shape[1] != c.in_channels:
            raise ValueError(
                f"`sample` must have shape (batch, {c.in_channels}, height, width); got {tuple(sample.shape)}."
            )
        factor = 2**self.num_downsamplings
        if sample.shape[2] % factor or sample.shape[3] % factor:
            raise ValueError(
                f"`sample` height and width must be divisible by {factor} (the model halves them "
                f"{self.num_downsamplings} times); got {tuple(sample.shape[2:])}."
            )
        self._check_class_labels(class_labels, batch=sample.shape[0])

    def _check_class_labels(self, class_labels: torch.Tensor | None, batch: int) -> None:
        if self.class_embedding is None:
            if class_labels is not None:
                raise ValueError(
                    "`class_labels` were given but the model is unconditional (`num_class_embeds` is None)."
                )
            return
        if class_labels is None:
            raise ValueError(f"`class_labels` are required: the model has {self.config.num_class_embeds} classes.")
        if not torch.is_tensor(class_labels) or class_labels.dtype not in (torch.int64, torch.int32):
            got = f"dtype {class_labels.dtype}" if torch.is_tensor(class_labels) else type(class_labels).__name__
            raise TypeError(f"`class_labels` must be an int64 or int32 tensor (class indices); got {got}.")
        if class_labels.ndim > 1 or (class_labels.ndim == 1 and class_labels.shape[0] not in (1, batch)):
            raise ValueError(
                f"`class_labels` must be a 0-d tensor or a 1-d tensor of length 1 or the batch size {batch}; "
                f"got shape {tuple(class_labels.shape)}."
            )

    def forward(
        self,
        sample: torch.Tensor,
        timestep: torch.Tensor | float | int,
        class_labels: torch.Tensor | None = None,
        return_dict: bool = True,
    ) -> UNet2DOutput | tuple[torch.Tensor]:
        r"""
        Predict the noise ε_θ(x_t, t) (DDPM eq. 11, 14) of a batch of noisy samples.

        Args:
            sample (`torch.Tensor` of shape `(batch, in_channels, height, width)`):
                The noisy samples x_t; height and width divisible by `2 ** (len(block_out_channels) - 1)`.
            timestep (`torch.Tensor` or `float` or `int`):
                t, one for the whole batch (number, 0-d or length-1 tensor) or one per sample (length-`batch` tensor).
            class_labels (`torch.Tensor`, *optional*, defaults to `None`):
                Integer class of each sample (shape `(batch,)`, or one for all), for class-conditional models only.
            return_dict (`bool`, *optional*, defaults to `True`):
                Return a [`UNet2DOutput`] rather than a tuple.

        Returns:
            [`UNet2DOutput`] or `tuple`: the prediction, of shape `(batch, out_channels, height, width)`, as
            `.sample` or as the tuple's only element.
        """
        self._check_inputs(sample, class_labels)
        timesteps = self._prepare_timesteps(timestep, sample)

        if self.config.center_input_sample:
            sample = 2 * sample - 1.0

        # One embedding per distinct row: a single t stays one row and broadcasts over the batch in each block.
        t_emb = timestep_embedding(
            timesteps, self.config.block_out_channels[0], self.config.flip_sin_to_cos, self.config.freq_shift
        )
        emb = self.time_embedding(t_emb.to(self._time_embedding_dtype()))
        if self.class_embedding is not None:
            emb = emb + self.class_embedding(class_labels.reshape(-1).to(sample.device)).to(emb.dtype)
        temb_act = self.temb_act(emb)

        h = self.conv_in(sample)
        skips = [h]
        for block in self.down_blocks:
            h, block_skips = block(h, temb_act)
            skips += block_skips
        if self.mid_block is not None:
            h = self.mid_block(h, temb_act)
        for block in self.up_blocks:
            h = block(h, skips, temb_act)
        h = self.conv_out(self.conv_act(self.conv_norm_out(h)))

        if not return_dict:
            return (h,)
        return UNet2DOutput(sample=h)

    @staticmethod
    def presets() -> dict[str, dict[str, Any]]:
        """
        The named configurations [`~DDPMUNet2DModel.from_preset`] accepts, as `{name: config}` (copies).

        `"ddpm-cifar10"` and `"ddpm-256"` are the paper's CIFAR10 and 256x256 networks, laid out like
        google/ddpm-cifar10-32 and google/ddpm-church-256; `"digits-16"`, `"digits-32"` and `"tiny"` are small
        CPU models for the demo and the tests.
        """
        return {name: dict(config) for name, config in PRESETS.items()}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> DDPMUNet2DModel:
        """
        Build a freshly initialised model from a named configuration.

        Args:
            name (`str`): One of [`~DDPMUNet2DModel.presets`]: `"ddpm-cifar10"`, `"ddpm-256"`, `"digits-16"`,
                `"digits-32"`, `"tiny"`.
            overrides (`Any`): Config fields to change, e.g. `in_channels=1` or `dropout=0.0`.

        Returns:
            [`DDPMUNet2DModel`]: the model, with the preset's config plus the overrides.
        """
        if name not in PRESETS:
            raise ValueError(f"`name`={name!r} is not a preset; presets: {sorted(PRESETS)}.")
        return cls(**{**PRESETS[name], **overrides})
