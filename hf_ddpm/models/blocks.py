"""Building blocks of the DDPM U-Net (Ho et al. 2020, Appendix B), written from scratch.

The paper's network is a PixelCNN++-style U-Net of Wide-ResNet blocks with GroupNorm, a sinusoidal
timestep embedding added in every residual block, and self-attention at 16x16. Module and parameter
names follow diffusers' `UNet2DModel` (`resnets.0.norm1`, `attentions.0.to_q`, `downsamplers.0.conv`, ...)
so that its checkpoints load as they are; the numerics follow it too (order of operations, epsilons,
output scale factors), which the tests check against the stock model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# The activations UNet2DModel's `act_fn` accepts; "swish" is another name for SiLU.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
}


def timestep_embedding(
    timesteps: torch.Tensor, dim: int, flip_sin_to_cos: bool = False, freq_shift: float = 1.0, max_period: float = 1e4
) -> torch.Tensor:
    """
    Sinusoidal timestep embedding (DDPM Sec. 3.3 / Appendix B: the Transformer's positional encoding of t).

    Frequency k of `dim // 2` is `ω_k = max_period^(-k / (dim/2 - freq_shift))`; the embedding is
    `[sin(t ω), cos(t ω)]` (or `[cos, sin]` when `flip_sin_to_cos`), zero-padded by one if `dim` is odd.
    The original TensorFlow code uses `freq_shift=1` and sin first; diffusers' newer models use `0` and cos first.

    Args:
        timesteps (`torch.Tensor` of shape `(n,)`): The timesteps t, integer or fractional.
        dim (`int`): Size of the embedding.
        flip_sin_to_cos (`bool`, *optional*, defaults to `False`): Put the cosines first.
        freq_shift (`float`, *optional*, defaults to `1.0`): The shift in the frequency denominator.
        max_period (`float`, *optional*, defaults to `1e4`): The longest period, in timesteps.

    Returns:
        `torch.Tensor` of shape `(n, dim)` in float32, whatever the model's dtype: fp16 cannot hold t·ω for
        large t accurately, so the caller casts after this.
    """
    half = dim // 2
    # Computed on the fly rather than kept as a buffer: a buffer would be cast along with the model by `.half()`.
    exponent = torch.arange(half, dtype=torch.float32, device=timesteps.device) * (-math.log(max_period))
    frequencies = torch.exp(exponent / (half - freq_shift))
    angles = timesteps.float()[:, None] * frequencies[None, :]
    if flip_sin_to_cos:
        embedding = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
    else:
        embedding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
    if dim % 2 == 1:
        embedding = F.pad(embedding, (0, 1))
    return embedding


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """
    Inverted dropout: each element is kept with probability `1 - p` and scaled by `1 / (1 - p)`, as `F.dropout`.

    The mask is `u >= p` for one float32 uniform `u` per element, written in place as 0.0/1.0 floats. On the CPU
    this is about a third cheaper than `F.dropout`, whose `bernoulli_` costs half again a uniform draw; both keep
    a mask of `x`'s size for backward. The uniform is float32 whatever `x`'s dtype, so the keep probability is
    `1 - p` to 2⁻²⁴ (a bfloat16 uniform would round it to 2⁻⁸).

    Args:
        x (`torch.Tensor`): The input.
        p (`float`): The probability of zeroing an element.
        training (`bool`): Apply dropout; when `False` (or `p == 0`), return `x` unchanged.
    """
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return x * 0.0
    mask = torch.rand_like(x, dtype=torch.float32)
    torch.ge(mask, p, out=mask)  # float out: vectorised, unlike a bool mask and its casts
    return x * mask.mul_(1.0 / (1.0 - p)).to(x.dtype)


class Dropout(nn.Dropout):
    """`nn.Dropout` (same name, `p` and `repr`) running `dropout` above."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


class TimestepEmbedding(nn.Module):
    """
    The two-layer MLP that turns the sinusoidal embedding into the vector every residual block receives.

    Args:
        in_channels (`int`): Size of the sinusoidal embedding.
        embed_dim (`int`): Size of the output embedding (4x the base channel count in the paper).
    """

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_channels, embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(embed_dim, embed_dim)

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(embedding)))


class ResnetBlock(nn.Module):
    """
    Wide-ResNet block with the timestep embedding added between its two convolutions (DDPM Appendix B):

    `h = conv1(act(norm1(x)))`, `h = h + proj(temb)` (or `norm2(h)·(1 + scale) + shift` for "scale_shift"),
    `h = conv2(dropout(act(norm2(h))))`, output `(shortcut(x) + h) / output_scale_factor`.

    Args:
        in_channels (`int`): Channels of the input.
        out_channels (`int`): Channels of the output; a 1x1 `conv_shortcut` maps the input when they differ.
        temb_channels (`int`): Size of the timestep embedding.
        groups (`int`, *optional*, defaults to `32`): GroupNorm groups.
        eps (`float`, *optional*, defaults to `1e-6`): GroupNorm epsilon.
        dropout (`float`, *optional*, defaults to `0.0`): Dropout before the second convolution.
        act_fn (`str`, *optional*, defaults to `"silu"`): Nonlinearity, a key of `ACTIVATIONS`.
        time_scale_shift (`bool`, *optional*, defaults to `False`): Condition by scale and shift after `norm2`
            instead of adding the embedding before it.
        output_scale_factor (`float`, *optional*, defaults to `1.0`): Divides the output.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int = 32,
        eps: float = 1e-6,
        dropout: float = 0.0,
        act_fn: str = "silu",
        time_scale_shift: bool = False,
        output_scale_factor: float = 1.0,
    ):
        super().__init__()
        self.time_scale_shift = time_scale_shift
        self.output_scale_factor = output_scale_factor
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, 2 * out_channels if time_scale_shift else out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=eps)
        self.dropout = Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
        self.nonlinearity = ACTIVATIONS[act_fn]()
        self.conv_shortcut = (
            nn.Conv2d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else None
        )

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        """
        Args:
            x (`torch.Tensor` of shape `(batch, in_channels, height, width)`): The feature map.
            temb_act (`torch.Tensor` of shape `(batch or 1, temb_channels)`): The timestep embedding *after*
                the nonlinearity; every block applies the same one to the same embedding, so the model does it once.
        """
        h = self.conv1(self.nonlinearity(self.norm1(x)))
        temb = self.time_emb_proj(temb_act)[:, :, None, None]
        if self.time_scale_shift:
            scale, shift = temb.chunk(2, dim=1)
            h = self.norm2(h) * (1 + scale) + shift
        else:
            h = self.norm2(h + temb)
        h = self.conv2(self.dropout(self.nonlinearity(h)))
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(x)
        out = shortcut + h
        if self.output_scale_factor != 1.0:
            out = out / self.output_scale_factor
        return out


class AttentionBlock(nn.Module):
    """
    Self-attention over the pixels of a feature map, with a residual connection (DDPM Appendix B; one head in the
    paper, several when `head_dim` is set).

    `out = (x + to_out(softmax(q kᵀ / √d) v)) / rescale_output_factor`, with q, k, v linear maps of the
    group-normalised pixels. Attention runs through `scaled_dot_product_attention` on a `(batch, heads, pixels, d)`
    layout built by one view and one transpose.

    Early diffusers checkpoints name the projections `query`/`key`/`value`/`proj_attn`; `_from_deprecated_attn_block`
    makes `ModelMixin.from_pretrained` rename them, and a load-state-dict pre-hook does the same for `load_state_dict`.

    Args:
        channels (`int`): Channels of the feature map.
        head_dim (`int`, *optional*, defaults to `None`): Channels per head; `None` gives one head of all channels.
            As in diffusers, there are `channels // head_dim` heads.
        norm_groups (`int`, *optional*, defaults to `32`): GroupNorm groups; `None` for no normalisation.
        eps (`float`, *optional*, defaults to `1e-6`): GroupNorm epsilon.
        rescale_output_factor (`float`, *optional*, defaults to `1.0`): Divides the output.
    """

    _from_deprecated_attn_block = True
    _LEGACY_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}

    def __init__(
        self,
        channels: int,
        head_dim: int | None = None,
        norm_groups: int | None = 32,
        eps: float = 1e-6,
        rescale_output_factor: float = 1.0,
    ):
        super().__init__()
        head_dim = channels if head_dim is None else head_dim
        self.heads = channels // head_dim
        self.head_dim = head_dim
        inner_dim = self.heads * head_dim
        self.rescale_output_factor = rescale_output_factor
        self.group_norm = nn.GroupNorm(norm_groups, channels, eps=eps) if norm_groups is not None else None
        self.to_q = nn.Linear(channels, inner_dim)
        self.to_k = nn.Linear(channels, inner_dim)
        self.to_v = nn.Linear(channels, inner_dim)
        self.to_out = nn.ModuleList([nn.Linear(inner_dim, channels)])
        self._register_load_state_dict_pre_hook(self._rename_legacy_keys)

    def _rename_legacy_keys(self, state_dict, prefix, *args) -> None:
        for old, new in self._LEGACY_NAMES.items():
            for suffix in ("weight", "bias"):
                if prefix + f"{old}.{suffix}" in state_dict:
                    state_dict[prefix + f"{new}.{suffix}"] = state_dict.pop(prefix + f"{old}.{suffix}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        h = self.group_norm(x) if self.group_norm is not None else x
        # (B, C, H, W) -> (B, HW, C): a view when x is channels_last; otherwise copied once here rather than by each
        # of the three projections.
        h = h.flatten(2).transpose(1, 2).contiguous()
        q, k, v = (
            proj(h).view(batch, height * width, self.heads, self.head_dim).transpose(1, 2)
            for proj in (self.to_q, self.to_k, self.to_v)
        )
        h = F.scaled_dot_product_attention(q, k, v)  # scale 1/√head_dim, as in the paper
        h = self.to_out[0](h.transpose(1, 2).reshape(batch, height * width, self.heads * self.head_dim))
        # (B, HW, C) -> (B, C, H, W) as a view: channels_last strides, no copy.
        out = x + h.transpose(1, 2).unflatten(2, (height, width))
        if self.rescale_output_factor != 1.0:
            out = out / self.rescale_output_factor
        return out


class Downsample(nn.Module):
    """
    Stride-2 3x3 convolution. With `padding=0` the input is padded by one on the right and bottom only, which is
    TensorFlow's "SAME" padding of the original DDPM code (`downsample_padding=0` in the google checkpoints).

    Args:
        channels (`int`): Channels in and out.
        padding (`int`, *optional*, defaults to `1`): Symmetric padding of the convolution.
    """

    def __init__(self, channels: int, padding: int = 1):
        super().__init__()
        self.asymmetric_pad = padding == 0
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.asymmetric_pad:
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    """
    Nearest-neighbour x2 upsampling followed by a 3x3 convolution.

    Args:
        channels (`int`): Channels in and out.
    """

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def _checkpointed(module: nn.Module, owner: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """Run `module(*args)`, through the owner's gradient checkpointing function when it is enabled and needed."""
    if owner.gradient_checkpointing and torch.is_grad_enabled():
        return owner._gradient_checkpointing_func(module, *args)
    return module(*args)


def _resnets_and_attentions(
    in_channels_per_layer: list[int],
    out_channels: int,
    temb_channels: int,
    add_attention: bool,
    resnet_kwargs: dict,
    attention_head_dim: int | None,
) -> tuple[nn.ModuleList | None, nn.ModuleList]:
    """
    The layers of one resolution: a residual block per entry of `in_channels_per_layer`, each followed by an
    attention block when `add_attention`. Returned as `(attentions or None, resnets)`, to be registered in that order.

    The modules are created layer by layer (resnet, attention, resnet, ...) as in diffusers' `AttnDownBlock2D` and
    `AttnUpBlock2D`, so that under the same seed the initial weights are theirs; and registered attentions first, as
    there, so that `parameters()` (which optimizer states index) comes in UNet2DModel's order.
    """
    resnets, attentions = [], []
    for layer_in_channels in in_channels_per_layer:
        resnets.append(ResnetBlock(layer_in_channels, out_channels, temb_channels, **resnet_kwargs))
        if add_attention:
            attentions.append(
                AttentionBlock(out_channels, attention_head_dim, resnet_kwargs["groups"], resnet_kwargs["eps"])
            )
    return (nn.ModuleList(attentions) if add_attention else None), nn.ModuleList(resnets)


class DownBlock(nn.Module):
    """
    One resolution of the contracting path: `num_layers` residual blocks, each optionally followed by attention,
    then an optional downsampling. Returns the output and every intermediate for the skip connections.
    Stands for diffusers' `DownBlock2D` (no attention) and `AttnDownBlock2D`.

    Args:
        in_channels (`int`): Channels of the input.
        out_channels (`int`): Channels of every layer.
        temb_channels (`int`): Size of the timestep embedding.
        num_layers (`int`): Residual blocks at this resolution.
        add_attention (`bool`): Self-attention after each residual block.
        add_downsample (`bool`): Halve the resolution at the end.
        resnet_kwargs (`dict`): Passed to every `ResnetBlock` (groups, eps, dropout, act_fn, time_scale_shift).
        attention_head_dim (`int`, *optional*, defaults to `None`): Channels per attention head; `None` for one head.
        downsample_padding (`int`, *optional*, defaults to `1`): Padding of the downsampling convolution.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        num_layers: int,
        add_attention: bool,
        add_downsample: bool,
        resnet_kwargs: dict,
        attention_head_dim: int | None = None,
        downsample_padding: int = 1,
    ):
        super().__init__()
        in_channels_per_layer = [in_channels] + [out_channels] * (num_layers - 1)
        self.attentions, self.resnets = _resnets_and_attentions(
            in_channels_per_layer, out_channels, temb_channels, add_attention, resnet_kwargs, attention_head_dim
        )
        self.downsamplers = nn.ModuleList([Downsample(out_channels, downsample_padding)]) if add_downsample else None
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        skips = []
        for i, resnet in enumerate(self.resnets):
            x = _checkpointed(resnet, self, x, temb_act)
            if self.attentions is not None:
                x = _checkpointed(self.attentions[i], self, x)
            skips.append(x)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x)
            skips.append(x)
        return x, skips


class UpBlock(nn.Module):
    """
    One resolution of the expanding path: `num_layers` residual blocks, each fed the previous output concatenated
    with one skip connection (last in, first out) and optionally followed by attention, then an optional
    upsampling. Stands for diffusers' `UpBlock2D` and `AttnUpBlock2D`.

    Args:
        in_channels (`int`): Channels of the input.
        skip_channels (`list[int]`): Channels of the skips this block consumes, in the order it consumes them.
        out_channels (`int`): Channels of every layer.
        temb_channels (`int`): Size of the timestep embedding.
        add_attention (`bool`): Self-attention after each residual block.
        add_upsample (`bool`): Double the resolution at the end.
        resnet_kwargs (`dict`): Passed to every `ResnetBlock`.
        attention_head_dim (`int`, *optional*, defaults to `None`): Channels per attention head; `None` for one head.
    """

    def __init__(
        self,
        in_channels: int,
        skip_channels: list[int],
        out_channels: int,
        temb_channels: int,
        add_attention: bool,
        add_upsample: bool,
        resnet_kwargs: dict,
        attention_head_dim: int | None = None,
    ):
        super().__init__()
        in_channels_per_layer = [
            (in_channels if i == 0 else out_channels) + skip for i, skip in enumerate(skip_channels)
        ]
        self.attentions, self.resnets = _resnets_and_attentions(
            in_channels_per_layer, out_channels, temb_channels, add_attention, resnet_kwargs, attention_head_dim
        )
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if add_upsample else None
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor], temb_act: torch.Tensor) -> torch.Tensor:
        """`skips` is the shared stack of skip connections; this block pops the ones it consumes."""
        for i, resnet in enumerate(self.resnets):
            x = _checkpointed(resnet, self, torch.cat([x, skips.pop()], dim=1), temb_act)
            if self.attentions is not None:
                x = _checkpointed(self.attentions[i], self, x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Module):
    """
    The bottleneck: residual block, optional attention, residual block, all scaled by `output_scale_factor`
    (`mid_block_scale_factor`). Stands for diffusers' `UNetMidBlock2D` with one layer.

    Args:
        channels (`int`): Channels in and out.
        temb_channels (`int`): Size of the timestep embedding.
        add_attention (`bool`): Self-attention between the two residual blocks.
        resnet_kwargs (`dict`): Passed to both `ResnetBlock`s (including `output_scale_factor`).
        attention_head_dim (`int`, *optional*, defaults to `None`): Channels per attention head; `None` for one head.
        attn_norm_groups (`int`, *optional*, defaults to `32`): GroupNorm groups of the attention; `None` for none.
    """

    def __init__(
        self,
        channels: int,
        temb_channels: int,
        add_attention: bool,
        resnet_kwargs: dict,
        attention_head_dim: int | None = None,
        attn_norm_groups: int | None = 32,
    ):
        super().__init__()
        # Created in the order of the forward pass, like UNetMidBlock2D, so a seed gives its initial weights.
        first = ResnetBlock(channels, channels, temb_channels, **resnet_kwargs)
        attention = None
        if add_attention:
            attention = AttentionBlock(
                channels,
                attention_head_dim,
                attn_norm_groups,
                resnet_kwargs["eps"],
                rescale_output_factor=resnet_kwargs["output_scale_factor"],
            )
        second = ResnetBlock(channels, channels, temb_channels, **resnet_kwargs)
        # Registered attentions first, as UNetMidBlock2D does, so that parameters() (and optimizer states) line up.
        self.attentions = nn.ModuleList([attention]) if add_attention else None
        self.resnets = nn.ModuleList([first, second])
        self.gradient_checkpointing = False

    def forward(self, x: torch.Tensor, temb_act: torch.Tensor) -> torch.Tensor:
        x = _checkpointed(self.resnets[0], self, x, temb_act)
        if self.attentions is not None:
            x = _checkpointed(self.attentions[0], self, x)
        return _checkpointed(self.resnets[1], self, x, temb_act)
