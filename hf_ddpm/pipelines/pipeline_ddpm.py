"""`DDPMPipeline`: sampling with DDPM (Ho et al. 2020) or DDIM (Song et al. 2021), unconditional or class-conditional
with classifier-free guidance (Ho & Salimans 2022), DDIM encoding (DDIM §4.3) and latent interpolation by slerp
(DDIM §5.3).

The pipeline only orchestrates: every coefficient comes from the scheduler (`set_timesteps`, `step`,
`inversion_step`).
"""

from __future__ import annotations

import inspect
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from diffusers.callbacks import MultiPipelineCallbacks, PipelineCallback
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.pipeline_utils import DiffusionPipeline, ImagePipelineOutput
from diffusers.schedulers import DDPMScheduler as _StockDDPMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils.torch_utils import randn_tensor
from huggingface_hub import CommitInfo

from hf_ddpm.pipelines.guidance import (
    DEFAULT_GUIDANCE_SCALE,
    ClassifierFreeGuidance,
    as_label_tensor,
    check_guidance_scale,
    normalize_id2label,
)
from hf_ddpm.pipelines.hub import push_pipeline, upload_pipeline_folder
from hf_ddpm.pipelines.loading import load_pipeline
from hf_ddpm.pipelines.serialization import save_pipeline, to_stock_pipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES

__all__ = ["DDPMPipeline", "slerp"]

# "latent" is x_0 in the model's space [-1, 1] before post-processing, as diffusers' pipelines return it.
OUTPUT_TYPES = ("pil", "np", "pt", "latent")
# What `scheduler.step` does without each sampler option of `__call__`: any other value needs a step that takes it.
# None means "not given" (stock DDIMPipeline's use_clipped_model_output=None passes nothing on).
_STEP_OPTION_DEFAULTS = {"eta": 0.0, "sigma_hat": False, "use_clipped_model_output": None}
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
# Slack on the declared range, so that a float round trip (e.g. 0.5 + 0.5·x) landing a hair outside is not refused.
_RANGE_TOLERANCE = 1e-4
_MEMORY_FORMATS = (torch.channels_last, torch.contiguous_format)


def slerp(x0: torch.Tensor, x1: torch.Tensor, lam: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    r"""
    Spherical linear interpolation between two latents (DDIM §5.3):

    x(λ) = sin((1 − λ)θ) / sin θ · x⁰ + sin(λθ) / sin θ · x¹,  θ = arccos(⟨x⁰, x¹⟩ / ‖x⁰‖‖x¹‖).

    Each tensor is treated as one vector. Gaussian latents lie near a sphere; slerp stays on it where a straight line
    would pass through low-norm, off-distribution points.

    Args:
        x0 (`torch.Tensor`):
            The latent at λ = 0.
        x1 (`torch.Tensor`):
            The latent at λ = 1; same shape as `x0`.
        lam (`float`, sequence of `float` or `torch.Tensor`):
            Interpolation weight(s) λ. A scalar returns a tensor shaped like `x0`; K weights return a tensor of shape
            `(K, *x0.shape)`.

    Returns:
        `torch.Tensor`: the interpolated latent(s), in `x0`'s dtype and on its device.
    """
    if x0.shape != x1.shape:
        raise ValueError(
            f"x0 and x1 must have the same shape, got x0.shape={tuple(x0.shape)} and x1.shape={tuple(x1.shape)}."
        )
    scalar = not isinstance(lam, torch.Tensor | Sequence) or (isinstance(lam, torch.Tensor) and lam.ndim == 0)
    # float64 because θ is tiny for near-parallel latents and sin θ in float32 loses every digit there.
    lam_t = torch.as_tensor(lam, dtype=torch.float64, device=x0.device).reshape(-1, *([1] * x0.ndim))
    a = x0.to(torch.float64)
    b = x1.to(torch.float64)
    norms = a.norm() * b.norm()
    cos_theta = (a * b).sum() / norms if norms > 0 else torch.ones((), dtype=torch.float64, device=x0.device)
    theta = torch.arccos(cos_theta.clamp(-1.0, 1.0))
    sin_theta = torch.sin(theta)
    if sin_theta.abs() < 1e-8:
        # Parallel (or zero) latents: the great circle is undefined and the limit of slerp is the straight line.
        out = (1.0 - lam_t) * a + lam_t * b
    else:
        out = (torch.sin((1.0 - lam_t) * theta) * a + torch.sin(lam_t * theta) * b) / sin_theta
    out = out.to(x0.dtype)
    return out[0] if scalar else out


# ----------------------------------------------------------------------------------------- images in, for invert
def _pil_to_numpy(images: list[PIL.Image.Image], value_range: tuple[float, float]) -> np.ndarray:
    if value_range != (0.0, 1.0):
        raise ValueError(f"PIL images are always in [0, 1] (0..255); value_range must be (0, 1), got {value_range}.")
    x = VaeImageProcessor.pil_to_numpy(images)  # (B, H, W, C) in [0, 1]
    return x[..., None] if x.ndim == 3 else x  # grayscale PIL images come back without a channel axis


def _numpy_to_tensor(images: np.ndarray, value_range: tuple[float, float]) -> torch.Tensor:
    if images.dtype == np.uint8:
        if value_range != (0.0, 1.0):
            raise ValueError(f"uint8 images are in 0..255; value_range must be (0, 1), got {value_range}.")
        images = images.astype(np.float32) / 255.0
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4:
        raise ValueError(f"numpy images must have shape (B, H, W, C) or (H, W, C), got {images.shape}.")
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)


def _as_image_tensor(images: Any, value_range: tuple[float, float]) -> torch.Tensor:
    """PIL images, numpy `(B, H, W, C)` or tensors as one `(B, C, H, W)` tensor; PIL and uint8 scaled to [0, 1]."""
    if isinstance(images, PIL.Image.Image):
        images = [images]
    if isinstance(images, list) and images and all(isinstance(im, PIL.Image.Image) for im in images):
        images = _pil_to_numpy(images, value_range)
    if isinstance(images, np.ndarray):
        images = _numpy_to_tensor(images, value_range)
    if not isinstance(images, torch.Tensor):
        raise ValueError(
            f"images must be a PIL image, a list of PIL images, a numpy array (B, H, W, C) or a torch tensor "
            f"(B, C, H, W), got {type(images).__name__}."
        )
    return images[None] if images.ndim == 3 else images


class DDPMPipeline(DiffusionPipeline):
    r"""
    Image generation with a DDPM-family UNet and a DDPM or DDIM scheduler, unconditional or class-conditional with
    classifier-free guidance.

    A drop-in for `diffusers.DDPMPipeline` (same weights, scheduler and generator give the same images), plus DDIM's
    `eta` and σ̂, `latents=`, step-end callbacks, DDIM encoding ([`~DDPMPipeline.invert`]), slerp interpolation
    ([`~DDPMPipeline.interpolate`]) and, for a class-conditional UNet, `class_labels` and `guidance_scale` as in
    diffusers' `DiTPipeline`. On the CPU the UNet runs in NHWC (channels_last), which is faster there and gives the
    same numbers up to float rounding; [`~DDPMPipeline.set_memory_format`] chooses another layout.

    Parameters:
        unet ([`~hf_ddpm.models.unet_2d.DDPMUNet2DModel`] or `diffusers.UNet2DModel`):
            The noise predictor ε_θ(x_t, t), or ε_θ(x_t, t, c) with `num_class_embeds = num_classes + 1`: the last
            index is the null label ∅ (as in `DiTPipeline`).
        scheduler ([`~diffusers.SchedulerMixin`]):
            hf_ddpm's `DDPMScheduler` or `DDIMScheduler`, or any diffusers scheduler with the same `step` API.
        id2label (`dict[int, str]`, *optional*, defaults to `None`):
            Class names of a class-conditional UNet, for [`~DDPMPipeline.get_label_ids`]. Kept in the pipeline's
            config, so `save_pretrained` writes it to `model_index.json` (keys as strings there, ints here).
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents", "class_labels"]
    # `set_memory_format`'s choice (None: NHWC on the CPU), and the UNet that choice converted to NHWC on the CPU.
    _memory_format_choice: torch.memory_format | None = None
    _auto_channels_last_unet: torch.nn.Module | None = None

    def __init__(self, unet: torch.nn.Module, scheduler: SchedulerMixin, id2label: dict[int, str] | None = None):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        id2label = normalize_id2label(id2label)
        if id2label is not None:
            self._check_id2label(id2label)
            self.register_to_config(id2label=id2label)
        # Images in [-1, 1] (DDPM §3.3) <-> [0, 1] / PIL / numpy, with diffusers' conversions.
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of one sample, read from the UNet's config."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    @property
    def default_num_inference_steps(self) -> int:
        """T for DDPM (ancestral sampling visits every step), else 50 (DDIM) capped at T."""
        num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if isinstance(self.scheduler, _StockDDPMScheduler):
            return num_train_timesteps
        return min(50, num_train_timesteps)

    @property
    def memory_format(self) -> torch.memory_format:
        """The layout the UNet's convolution weights are in now (`torch.channels_last` after a CPU call, see
        [`~DDPMPipeline.set_memory_format`]); x_t is kept in it so that no convolution converts its input at every
        step."""
        for parameter in self.unet.parameters():
            if parameter.ndim != 4:
                continue
            channels_last, nchw = parameter.is_contiguous(memory_format=torch.channels_last), parameter.is_contiguous()
            if channels_last != nchw:  # both hold for 1 input channel or a 1×1 kernel: look further
                return torch.channels_last if channels_last else torch.contiguous_format
        return torch.contiguous_format

    # ------------------------------------------------------------------------------------------ class labels
    @property
    def num_classes(self) -> int | None:
        """Number of classes a user can ask for: the UNet's `num_class_embeds` less the null label ∅ (index
        `num_classes`); `None` for an unconditional UNet."""
        num_class_embeds = self.unet.config.get("num_class_embeds")
        return None if num_class_embeds is None else int(num_class_embeds) - 1

    @property
    def id2label(self) -> dict[int, str] | None:
        """Class index -> name, as given to `__init__` (or read from `model_index.json`); `None` if none was."""
        return self.config.get("id2label")

    @property
    def labels(self) -> dict[str, int]:
        """Class name -> index from `id2label`, sorted by name. As in `DiTPipeline`, a name holding commas
        (`"tench, Tinca tinca"`) gives one entry per part."""
        labels = {}
        for index, names in (self.id2label or {}).items():
            for name in names.split(","):
                labels[name.strip()] = index
        return dict(sorted(labels.items()))

    def get_label_ids(self, label: str | list[str]) -> list[int]:
        r"""
        Class indices of class names, to pass as `class_labels` (as `DiTPipeline.get_label_ids`).

        Args:
            label (`str` or `list[str]`):
                Names from [`~DDPMPipeline.labels`] (the pipeline's `id2label`).

        Returns:
            `list[int]`: one index per name.
        """
        names = [label] if isinstance(label, str) else list(label)
        labels = self.labels
        if not labels:
            raise ValueError(
                "This pipeline has no class names (id2label is None): pass class_labels as ints, or build it with "
                "DDPMPipeline(unet, scheduler, id2label={0: 'name', ...})."
            )
        unknown = [name for name in names if name not in labels]
        if unknown:
            raise ValueError(f"label names {unknown} are not in id2label; known names: {sorted(labels)}.")
        return [labels[name] for name in names]

    def _check_id2label(self, id2label: dict[int, str]) -> None:
        if self.unet is None:
            return
        num_classes = self.num_classes
        if num_classes is None:
            raise ValueError("id2label was given but the UNet is unconditional (num_class_embeds is None).")
        beyond = [index for index in id2label if index >= num_classes]
        if beyond:
            raise ValueError(
                f"id2label keys must be class indices in [0, {num_classes - 1}] (num_classes = num_class_embeds - 1 "
                f"= {num_classes}; {num_classes} is the null label ∅), got {beyond}."
            )

    def _prepare_guidance(
        self,
        class_labels: Any,
        guidance_scale: Any,
        batch_size: Any,
        default_scale: float,
        batch_phrase: str = "batch_size is {}",
    ) -> ClassifierFreeGuidance:
        """The check of `class_labels`, `guidance_scale` and `batch_size` together, at the public call that got them:
        `batch_size=None` is the number of labels (1 without labels); `guidance_scale=None` is `default_scale` with
        labels and 1 (no guidance) without."""
        self._check_components()
        labels = None if class_labels is None else self._check_class_labels(class_labels)
        if batch_size is None:
            batch_size = 1 if labels is None else labels.shape[0]
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if labels is not None and labels.shape[0] not in (1, batch_size):
            raise ValueError(
                f"class_labels holds {labels.shape[0]} labels but {batch_phrase.format(batch_size)}: give one label per "
                "sample, or a single label for all."
            )
        if guidance_scale is None:
            guidance_scale = default_scale if labels is not None else 1.0
        check_guidance_scale(guidance_scale, self.num_classes, has_labels=labels is not None)
        if labels is not None:
            labels = labels.expand(batch_size).to(self._execution_device)
        return ClassifierFreeGuidance.build(
            labels, self.num_classes, float(guidance_scale), batch_size, self._execution_device
        )

    def _check_class_labels(self, class_labels: Any) -> torch.Tensor:
        num_classes = self.num_classes
        if num_classes is None:
            raise ValueError(
                "class_labels were given but the UNet is unconditional (num_class_embeds is None); leave "
                "class_labels=None."
            )
        labels = as_label_tensor(class_labels)
        if labels.numel() == 0:
            raise ValueError("class_labels is empty: give one label per sample, or a single label for all.")
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.numel():
            raise ValueError(
                f"class_labels must lie in [0, {num_classes - 1}] (num_classes = {num_classes}; index {num_classes} "
                f"is the null label ∅ that guidance adds itself), got {outside.unique().tolist()}."
            )
        return labels

    def set_memory_format(self, memory_format: torch.memory_format | None) -> None:
        """
        Choose the memory layout the UNet runs in when sampling and encoding; it changes the speed, not the numbers
        (up to float rounding). The UNet is converted in place: now for an explicit layout, at the next
        `__call__`/`invert` for `None`.

        Args:
            memory_format (`torch.memory_format` or `None`):
                `torch.channels_last` (NHWC), `torch.contiguous_format` (NCHW) or `None`, the default: NHWC on the CPU,
                where it is measured faster (`benchmarks/README.md`), and on other devices the layout the UNet has.
        """
        if memory_format is not None and memory_format not in _MEMORY_FORMATS:
            raise ValueError(
                f"memory_format must be torch.channels_last, torch.contiguous_format or None (NHWC on the CPU), got "
                f"{memory_format!r}."
            )
        self._memory_format_choice = memory_format
        if memory_format is not None and self.unet is not None:
            self.unet.to(memory_format=memory_format)

    def _prepare_memory_format(self) -> torch.memory_format:
        """Put the UNet in this call's layout (see `set_memory_format`), converting it at most once; return it."""
        target = self._memory_format_choice
        if target is None and self._execution_device.type == "cpu":
            target = torch.channels_last
            self._auto_channels_last_unet = self.unet
        elif target is None and self._auto_channels_last_unet is self.unet:
            # Moved off the CPU after the default converted it: give the UNet back its own layout.
            target, self._auto_channels_last_unet = torch.contiguous_format, None
        if target is not None and self.memory_format != target:
            self.unet.to(memory_format=target)
        return self.memory_format

    # ---------------------------------------------------------------------------------------------- sampling
    @property
    def num_timesteps(self) -> int:
        """Number of reverse steps of the latest call, set before its first step (diffusers' pipelines do the same),
        so that a `callback_on_step_end` can tell the last step: `i == pipe.num_timesteps - 1`."""
        return self._num_timesteps

    @torch.no_grad()
    def __call__(
        self,
        batch_size: int | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        num_inference_steps: int | None = None,
        eta: float = 0.0,
        latents: torch.Tensor | None = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Callable[[DiffusionPipeline, int, torch.Tensor, dict], dict]
        | PipelineCallback
        | MultiPipelineCallbacks
        | None = None,
        callback_on_step_end_tensor_inputs: list[str] | None = None,
        sigma_hat: bool = False,
        use_clipped_model_output: bool | None = None,
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float | None = None,
    ) -> ImagePipelineOutput | tuple:
        r"""
        Sample images: x_T ~ N(0, I), then the scheduler's reverse steps down to x_0 (DDPM Algorithm 2, or DDIM eq. 12),
        with the guided ε̃ of classifier-free guidance (Ho & Salimans 2022) when `class_labels` are given.

        Args:
            batch_size (`int`, *optional*, defaults to `None`):
                Number of images to generate; `None` means one per label of `class_labels`, or 1 without labels.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*, defaults to `None`):
                Source of randomness. With a list (one per sample), sample i draws its x_T and its per-step noise from
                `generator[i]` only, so it does not depend on the batch it is drawn in.
            num_inference_steps (`int`, *optional*, defaults to `None`):
                Number of reverse steps, checked by the scheduler's `set_timesteps` (hf_ddpm's take [1, T]). `None`
                means T for DDPM and 50 (at most T) for DDIM and other schedulers.
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's η (eq. 16): 0 is deterministic DDIM, 1 is DDPM's fixed-small sampler. Non-zero only for
                schedulers whose `step` takes `eta`.
            latents (`torch.Tensor`, *optional*, defaults to `None`):
                x_T to start from, shape `(batch_size, C, H, W)`, finite, on the pipeline's device in the UNet's dtype
                (e.g. from [`~DDPMPipeline.invert`] or [`~DDPMPipeline.interpolate`]). Drawn from N(0, I) if `None`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` (list of `PIL.Image`), `"np"` (float array `(B, H, W, C)` in [0, 1]), `"pt"` (tensor
                `(B, C, H, W)` in [0, 1]) or `"latent"` (x_0 as the last step returns it: a tensor `(B, C, H, W)` in
                the model's space, about [-1, 1], neither rescaled nor clamped).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*, defaults to `None`):
                Called after each step as `callback_on_step_end(pipe, i, t, callback_kwargs)` and must return a dict
                (diffusers' convention); a `"latents"` entry in it replaces the current x_t, a `"class_labels"` entry
                the labels of the following steps (same guidance scale). `pipe.num_timesteps` is the number of steps
                of this call.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `None`):
                Tensors put in `callback_kwargs`, from `["latents", "class_labels"]` (the labels c, one per sample, or
                `None`); `None` means `["latents"]`.
            sigma_hat (`bool`, *optional*, defaults to `False`):
                DDIM's σ̂_t = √(1 − ᾱ_t/ᾱ_prev) (the "larger variance" row of DDIM Table 1). Only for schedulers whose
                `step` takes `sigma_hat` (hf_ddpm's `DDIMScheduler`).
            use_clipped_model_output (`bool`, *optional*, defaults to `None`):
                As in `diffusers.DDIMPipeline`: `True`/`False` is passed to the scheduler's `step` (DDIM: re-derive ε̂
                from the clipped x̂_0), which must take it. `None` passes nothing (diffusers' numbers), except while
                guiding (s not 0 or 1) with a scheduler that clips or thresholds x̂_0 and takes the option: there it
                means `True`. The guided ε̃ overshoots the data range, and a DDIM step that clips x̂_0 but keeps the
                unclipped ε̃ in its direction term puts the overshoot back into x_{t−1}, step after step (on the
                digits model, DDIM-50 at s = 3: 11.5 % of samples the requested digit, against 99.5 % re-derived).
            class_labels (`int`, `list[int]` or `torch.Tensor`, *optional*, defaults to `None`):
                The class c of each sample, in [0, `num_classes` − 1] (names map to ids with
                [`~DDPMPipeline.get_label_ids`]); a single label is used for the whole batch. Only for a
                class-conditional UNet; `None` samples it unconditionally, with the null label ∅.
            guidance_scale (`float`, *optional*, defaults to `None`):
                diffusers' guidance scale s (as in `DiTPipeline`): ε̃ = ε_θ(x_t, ∅) + s · (ε_θ(x_t, c) − ε_θ(x_t, ∅)),
                i.e. s = 1 + w for the paper's ε̃ = (1 + w) ε_θ(x_t, c) − w ε_θ(x_t, ∅). 1 runs the conditional
                model alone, 0 the unconditional one (one forward per step each); any other s runs both halves in one
                batched forward per step. A learned variance comes from the conditional half. `None` means 2.0 (the
                paper's w = 1) with `class_labels` and 1 without; higher s draws the class more surely and less
                diversely. Without `class_labels` only `None`, 0 and 1 are accepted.

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: `ImagePipelineOutput(images=...)`, or `(images,)` when
            `return_dict` is `False`.
        """
        guidance = self._prepare_guidance(class_labels, guidance_scale, batch_size, DEFAULT_GUIDANCE_SCALE)
        batch_size = guidance.batch_size
        self._check_call_inputs(batch_size, generator, output_type, latents)
        tensor_inputs = self._callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
        if use_clipped_model_output is None:
            use_clipped_model_output = self._guided_clipping_default(guidance)
        step_kwargs = self._step_kwargs(
            generator, eta=eta, sigma_hat=sigma_hat, use_clipped_model_output=use_clipped_model_output
        )
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps
        self.scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        self._num_timesteps = len(self.scheduler.timesteps)
        latents = self._prepare_latents(batch_size, generator, latents, self._prepare_memory_format())

        uses_learned_variance = self._uses_learned_variance(self.scheduler)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self._denoiser_output(latents, t, self.scheduler, uses_learned_variance, guidance)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                latents, guidance = self._callback_step(callback_on_step_end, i, t, latents, guidance, tensor_inputs)

        images = self.image_processor.postprocess(latents, output_type=output_type)  # [-1, 1] -> [0, 1]
        self.maybe_free_model_hooks()
        return ImagePipelineOutput(images=images) if return_dict else (images,)

    def _check_components(self) -> None:
        for name in ("unet", "scheduler"):
            if getattr(self, name, None) is None:
                raise ValueError(
                    f"This DDPMPipeline has no {name} ({name}=None); build it with DDPMPipeline(unet=..., "
                    f"scheduler=...) or set pipe.{name} first."
                )

    def _check_call_inputs(self, batch_size: int, generator: Any, output_type: Any, latents: Any) -> None:
        """The rest of `__call__`'s check, after `_prepare_guidance` (components, labels, scale, batch size)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is {batch_size}: pass one "
                "generator per sample."
            )
        if latents is not None:
            self._check_latents(latents, (batch_size, *self.sample_shape), self._execution_device, self.unet.dtype)

    def _callback_tensor_names(self, callback: Any, names: list[str] | None) -> list[str]:
        if isinstance(callback, PipelineCallback | MultiPipelineCallbacks):
            names = callback.tensor_inputs
        names = ["latents"] if names is None else names
        unknown = [name for name in names if name not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be drawn from {self._callback_tensor_inputs}, got {unknown}."
            )
        return names

    def _step_end(
        self, callback: Callable, i: int, t: torch.Tensor, state: dict[str, torch.Tensor], names: list[str]
    ) -> dict[str, torch.Tensor]:
        """Call `callback_on_step_end` with the tensors it asked for; the tensors it returns replace the pipeline's."""
        outputs = callback(self, i, t, {name: state[name] for name in names})
        if not isinstance(outputs, dict):
            callback_name = getattr(callback, "__qualname__", type(callback).__name__)
            raise TypeError(
                f"callback_on_step_end ({callback_name}) returned {type(outputs).__name__} at step {i} (timestep "
                f"{int(t)}); it must return a dict, e.g. the callback_kwargs it was given, or {{}} to change nothing."
            )
        return {name: outputs.get(name, value) for name, value in state.items()}

    def _callback_step(
        self,
        callback: Callable,
        i: int,
        t: torch.Tensor,
        latents: torch.Tensor,
        guidance: ClassifierFreeGuidance,
        names: list[str],
    ) -> tuple[torch.Tensor, ClassifierFreeGuidance]:
        """`_step_end` with x_t and the labels c; labels the callback returns are checked like `class_labels`."""
        state = self._step_end(callback, i, t, {"latents": latents, "class_labels": guidance.class_labels}, names)
        if state["class_labels"] is not guidance.class_labels:
            guidance = self._prepare_guidance(
                state["class_labels"], guidance.guidance_scale, guidance.batch_size, DEFAULT_GUIDANCE_SCALE
            )
        return state["latents"], guidance

    def _guided_clipping_default(self, guidance: ClassifierFreeGuidance) -> bool | None:
        """`True` (re-derive ε̃ from the clipped x̂_0) when both guidance halves run and the scheduler clips or
        thresholds x̂_0 in a `step` that takes `use_clipped_model_output`; otherwise `None` (pass nothing)."""
        config = self.scheduler.config
        clips = bool(config.get("clip_sample", False) or config.get("thresholding", False))
        takes_it = "use_clipped_model_output" in inspect.signature(self.scheduler.step).parameters
        return True if guidance.is_batched and clips and takes_it else None

    def _step_kwargs(self, generator: Any, **options: Any) -> dict[str, Any]:
        """The keyword arguments `scheduler.step` takes: the generator, and each of `options` (η, σ̂, clipped ε̂),
        whose values the scheduler checks. An option set for a scheduler whose `step` lacks it is refused, not
        dropped."""
        accepted = inspect.signature(self.scheduler.step).parameters
        kwargs = {"generator": generator} if "generator" in accepted else {}
        for name, value in options.items():
            default = _STEP_OPTION_DEFAULTS[name]
            if name in accepted and value is not None:
                kwargs[name] = value
            elif name not in accepted and value != default:
                raise ValueError(
                    f"{name}={value!r} needs a scheduler whose step takes {name} (hf_ddpm's DDIMScheduler); "
                    f"{type(self.scheduler).__name__}.step does not. Leave {name} at {default!r} with this scheduler."
                )
        return kwargs

    def _prepare_latents(
        self, batch_size: int, generator: Any, latents: torch.Tensor | None, memory_format: torch.memory_format
    ) -> torch.Tensor:
        """x_T ~ N(0, I) (DDPM Algorithm 2, line 1) or the given (checked) `latents`, times the scheduler's initial
        sigma (1 for DDPM/DDIM), in the UNet's memory format."""
        if latents is None:
            shape = (batch_size, *self.sample_shape)
            latents = randn_tensor(shape, generator=generator, device=self._execution_device, dtype=self.unet.dtype)
        return (latents * self.scheduler.init_noise_sigma).contiguous(memory_format=memory_format)

    def _check_latents(self, latents: Any, shape: tuple, device: torch.device, dtype: torch.dtype) -> None:
        if not isinstance(latents, torch.Tensor):
            raise ValueError(f"latents must be a torch.Tensor, got {type(latents).__name__}.")
        if tuple(latents.shape) != tuple(shape):
            raise ValueError(
                f"latents must have shape {tuple(shape)} (batch_size, channels, height, width), got "
                f"{tuple(latents.shape)}. Pass batch_size=latents.shape[0] when giving a batch of latents."
            )
        if latents.dtype != dtype:
            raise ValueError(f"latents must have the UNet's dtype {dtype}, got {latents.dtype}.")
        if latents.device.type != device.type or (
            device.index is not None and latents.device.index not in (None, device.index)
        ):
            raise ValueError(f"latents must be on the pipeline's device {device}, got {latents.device}.")
        num_bad = int((~torch.isfinite(latents)).sum())
        if num_bad:
            raise ValueError(f"latents must be finite, got {num_bad} NaN or inf values of {latents.numel()}.")

    @staticmethod
    def _uses_learned_variance(scheduler: SchedulerMixin) -> bool:
        """Whether `scheduler.step` takes a learned-variance model's 2C channels. A config may carry a variance_type
        its class ignores (diffusers keeps unused keys), so the class must also take the argument."""
        takes_variance = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
        return takes_variance and scheduler.config.variance_type in LEARNED_VARIANCE_TYPES

    def _denoiser_output(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        scheduler: SchedulerMixin,
        uses_learned_variance: bool,
        guidance: ClassifierFreeGuidance,
    ) -> torch.Tensor:
        """The UNet's output at (x_t, t), guided (ε̃) when `guidance` runs both halves, as `scheduler.step` takes it: a
        learned-variance UNet (Nichol & Dhariwal 2021) returns 2C channels, of which a scheduler that does not use the
        variance gets only the prediction."""
        channels = latents.shape[1]
        # Scaled after batching: the halves are one input to the scheduler (Euler divides by √(σ² + 1)).
        model_input = scheduler.scale_model_input(guidance.model_input(latents), t)
        model_output = guidance.combine(self.unet(model_input, t, **guidance.unet_kwargs()).sample, channels)
        if not uses_learned_variance and model_output.shape[1] == 2 * channels:
            model_output = model_output[:, :channels]
        return model_output

    # --------------------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def invert(
        self,
        images: PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor,
        num_inference_steps: int = 50,
        value_range: tuple[float, float] = (0.0, 1.0),
        class_labels: int | list[int] | torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        r"""
        DDIM encoding (DDIM §4.3): eq. 12 with η = 0 run forward in t, from x_0 to x_T. DDIM sampling with η = 0 and
        the same `num_inference_steps` decodes the result back to about the same images (DDIM Table 2).

        The steps are hf_ddpm's `DDIMScheduler.inversion_step` with the config of the pipeline's scheduler, which is
        left untouched. To decode: `pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)`, then
        `pipe(batch_size=len(x_T), latents=x_T, num_inference_steps=num_inference_steps)`. Encoding never clips x̂_0
        but sampling does under `clip_sample=True` (diffusers' default), so the round trip is exact in the limit only
        with `clip_sample=False`; a `UserWarning` says so when the pipeline's scheduler clips or thresholds x̂_0.

        Args:
            images (`PIL.Image.Image`, `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
                The images x_0, as `__call__` returns them: PIL images, numpy `(B, H, W, C)` (float in [0, 1] or
                uint8), or tensors `(B, C, H, W)`, sized like the UNet's samples.
            num_inference_steps (`int`, *optional*, defaults to 50):
                Number of encoding steps S, in [1, T].
            value_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`):
                The range of float images: `(0, 1)` (what `output_type="np"`/`"pt"` return) or `(-1, 1)` (the model's
                space, e.g. training batches). Values outside it are an error.
            class_labels (`int`, `list[int]` or `torch.Tensor`, *optional*, defaults to `None`):
                The class of each image, for a class-conditional UNet, as in `__call__`; `None` encodes with the null
                label ∅. Decode with the same labels.
            guidance_scale (`float`, *optional*, defaults to 1.0):
                The guidance scale s of the ODE being run, as in `__call__`. The default 1 follows the conditional
                model's own ODE, the one that inverts best. Under s ≠ 1 encoding follows the guided ε̃ and decodes
                back only with the same s; its round trip is no exact inverse either, and worsens as s grows
                (Mokady et al. 2023 invert at s = 1 for that reason).

        Returns:
            `torch.Tensor`: x_T, shape `(B, C, H, W)`, on the pipeline's device in the UNet's dtype; pass it as
            `latents=` (with the same `class_labels` and `guidance_scale`).
        """
        self._check_components()
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        memory_format = self._prepare_memory_format()
        sample = self._images_to_model_space(images, value_range).contiguous(memory_format=memory_format)
        guidance = self._prepare_guidance(class_labels, guidance_scale, sample.shape[0], 1.0, "{} images were given")
        self._warn_if_decoding_changes_x0()
        # Encoding visits the sampling schedule backwards: from the clean end up to the noisiest timestep.
        for t in self.progress_bar(scheduler.timesteps.flip(0)):
            model_output = self._denoiser_output(sample, t, scheduler, False, guidance)
            sample = scheduler.inversion_step(model_output, t, sample).prev_sample
        self.maybe_free_model_hooks()
        return sample

    def _warn_if_decoding_changes_x0(self) -> None:
        """Encoding never clips x̂_0; decoding with a scheduler that clips (or thresholds) it is then no inverse."""
        config = self.scheduler.config
        changes_x0 = [name for name in ("clip_sample", "thresholding") if config.get(name, False)]
        if changes_x0:
            settings = ", ".join(f"{name}=False" for name in changes_x0)
            warnings.warn(
                f"The pipeline's scheduler has {', '.join(f'{name}=True' for name in changes_x0)}: decoding with it "
                "clips x̂_0 where encoding does not, so these latents decode back worse (often by an order of "
                "magnitude or more) wherever the model's x̂_0 leaves [-1, 1]. Set "
                f"{settings} on the scheduler config: pipe.scheduler = DDIMScheduler.from_config("
                f"pipe.scheduler.config, {settings}).",
                UserWarning,
                stacklevel=4,  # the user's line: above this helper, invert and torch.no_grad's wrapper
            )

    def _images_to_model_space(self, images: Any, value_range: tuple[float, float]) -> torch.Tensor:
        """x_0 in [-1, 1], `(B, C, H, W)` on the pipeline's device in the UNet's dtype."""
        value_range = tuple(float(v) for v in value_range)
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {list(VALUE_RANGES)}, got {value_range!r}.")
        images = _as_image_tensor(images, value_range)
        self._check_image_tensor(images, value_range)
        images = images.to(device=self._execution_device, dtype=self.unet.dtype)
        if value_range == (0.0, 1.0):
            images = self.image_processor.normalize(images)  # 2x - 1
        return images.clamp(-1.0, 1.0)

    def _check_image_tensor(self, images: torch.Tensor, value_range: tuple[float, float]) -> None:
        if images.ndim != 4 or tuple(images.shape[1:]) != self.sample_shape:
            raise ValueError(
                f"images must have shape (B, {', '.join(map(str, self.sample_shape))}) (B, C, H, W) to match the "
                f"UNet (in_channels, sample_size), got {tuple(images.shape)}."
            )
        if not images.is_floating_point():
            raise ValueError(f"image tensors must be floating point, got {images.dtype}.")
        lo, hi = value_range
        observed_lo, observed_hi = float(images.min()), float(images.max())
        if observed_lo < lo - _RANGE_TOLERANCE or observed_hi > hi + _RANGE_TOLERANCE:
            raise ValueError(
                f"images must lie in [{lo:g}, {hi:g}] (value_range={value_range}), got values in "
                f"[{observed_lo:.4g}, {observed_hi:.4g}]."
            )

    def interpolate(self, latents_a: torch.Tensor, latents_b: torch.Tensor, num: int = 8) -> torch.Tensor:
        r"""
        Latents on the great circle between `latents_a` and `latents_b` (slerp, DDIM §5.3), to pass as `latents=`.

        Args:
            latents_a (`torch.Tensor`):
                Start latent(s), shape `(C, H, W)` or `(N, C, H, W)` matching the UNet.
            latents_b (`torch.Tensor`):
                End latent(s), same shape as `latents_a`.
            num (`int`, *optional*, defaults to 8):
                Number of points, endpoints included (λ = 0, 1/(num−1), ..., 1); at least 2.

        Returns:
            `torch.Tensor`: `(num, C, H, W)` for single latents; for batches `(N·num, C, H, W)` with pair n's path at
            rows `n·num ... n·num + num − 1`. Pass it with `batch_size=result.shape[0]`; for a class-conditional
            UNet, give one class per pair as `class_labels=labels.repeat_interleave(num)`.
        """
        self._check_components()
        if isinstance(num, bool) or not isinstance(num, int) or num < 2:
            raise ValueError(f"num must be an integer >= 2 (the endpoints are included), got {num!r}.")
        for name, value in (("latents_a", latents_a), ("latents_b", latents_b)):
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise ValueError(f"{name} must be a floating-point torch.Tensor, got {type(value).__name__}.")
            if tuple(value.shape[-3:]) != self.sample_shape or value.ndim not in (3, 4):
                raise ValueError(
                    f"{name} must have shape (C, H, W) or (N, C, H, W) with (C, H, W) = {self.sample_shape}, got "
                    f"{tuple(value.shape)}."
                )
        if latents_a.shape != latents_b.shape:
            raise ValueError(
                f"latents_a and latents_b must have the same shape, got {tuple(latents_a.shape)} and "
                f"{tuple(latents_b.shape)}."
            )
        lam = torch.linspace(0.0, 1.0, num, dtype=torch.float64)
        if latents_a.ndim == 3:
            return slerp(latents_a, latents_b, lam)
        return torch.cat([slerp(a, b, lam) for a, b in zip(latents_a, latents_b)], dim=0)

    # ------------------------------------------------------------------------------------ save, load, convert
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> DDPMPipeline:
        r"""
        Load a pipeline as hf_ddpm's classes, without running any code from the folder or repo.

        Reads what [`~DDPMPipeline.save_pretrained`] writes (diffusers' own layout, or the custom-component layout)
        and stock diffusers DDPM/DDIM pipelines (e.g. google/ddpm-cifar10-32): `UNet2DModel` becomes
        `DDPMUNet2DModel` (same config and weights), diffusers' `DDPMScheduler`/`DDIMScheduler` become hf_ddpm's; any
        other diffusers scheduler is kept as is. Repo ids use huggingface_hub's cache (shared with diffusers); with
        `HF_HUB_OFFLINE=1`, `local_files_only=True` or the Hub unreachable, what is cached is loaded.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder holding `model_index.json`, or a Hub repo id.
            dtype (`torch.dtype` or `dict[str, torch.dtype]`, *optional*):
                dtype to load the UNet in; a dict as in diffusers (`{"unet": ..., "default": ...}`). `torch_dtype` is
                the older name and still works.
            device_map (`str`, *optional*):
                A device (`"cpu"`, `"cuda"`, `"cuda:1"`, ...) to put the pipeline on. Placement strategies such as
                diffusers' `"balanced"` are refused (`NotImplementedError`): the pipeline holds one model.
            variant (`str`, *optional*):
                Load `diffusion_pytorch_model.<variant>.safetensors`; a `ValueError` if the folder has none.
            allow_pickle (`bool`, *optional*, defaults to `False`):
                Load pickled (`.bin`) UNet weights when no safetensors file exists. Unpickling runs code, so it must
                be asked for. `use_safetensors` works as in diffusers within that rule.
            unet (`torch.nn.Module`, *optional*):
                Use this UNet instead of loading one.
            scheduler (`SchedulerMixin`, *optional*):
                Use this scheduler instead of loading one.
            revision (`str`, *optional*):
                Branch, tag or commit of a repo id (the default branch if `None`).
            cache_dir (`str`, *optional*), token (`str` or `bool`, *optional*), local_files_only (`bool`, *optional*),
            force_download (`bool`, *optional*):
                As in huggingface_hub's `snapshot_download`, for repo ids.
            low_cpu_mem_usage (`bool`, *optional*), disable_mmap (`bool`, *optional*):
                Passed to the UNet's `from_pretrained`.
            trust_remote_code (`bool`, *optional*):
                Accepted for symmetry with diffusers and ignored: nothing from the folder is executed.

        Other keywords of `DiffusionPipeline.from_pretrained` (`custom_pipeline`, `use_onnx`, `max_memory`,
        `quantization_config`, ...) are refused with a `ValueError` that says why; unknown ones with a `TypeError`.

        Returns:
            [`DDPMPipeline`]
        """
        return load_pipeline(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        max_shard_size: int | str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        r"""
        Save the pipeline in diffusers' own layout, which stock `diffusers.DiffusionPipeline.from_pretrained` loads
        without hf_ddpm. A component stock diffusers cannot express (e.g. `timestep_spacing="quadratic"`) is saved in
        diffusers' custom-component layout instead, with a `UserWarning`; loading it then needs hf_ddpm (and
        `trust_remote_code=True` in diffusers). See `hf_ddpm.pipelines.serialization.stock_incompatibilities`.

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write; created if missing. An existing file there is refused (`FileExistsError`).
            safe_serialization (`bool`, *optional*, defaults to `True`):
                Must stay `True`: weights are written as safetensors only.
            variant (`str`, *optional*, defaults to `None`):
                Weight file variant (e.g. `"fp16"`), as in diffusers.
            max_shard_size (`int` or `str`, *optional*, defaults to `None`):
                Largest weight file before sharding (e.g. `"5GB"`), as in diffusers.
            push_to_hub (`bool`, *optional*, defaults to `False`):
                Also upload the folder, with a model card, via [`~DDPMPipeline.push_to_hub`]; `repo_id` and the other
                arguments of `push_to_hub` are taken from `kwargs`.
        """
        if safe_serialization is not True:
            raise ValueError(
                f"safe_serialization must be True: hf_ddpm writes weights as safetensors only, got {safe_serialization!r}."
            )
        if push_to_hub:
            repo_id = kwargs.pop("repo_id", os.path.basename(os.path.normpath(save_directory)))
            inspect.signature(self.push_to_hub).bind(repo_id, **kwargs)  # push_to_hub's TypeError for a wrong option
        save_pipeline(self, save_directory, variant=variant, max_shard_size=max_shard_size)
        if push_to_hub:
            upload_pipeline_folder(self, save_directory, repo_id, **kwargs)

    def push_to_hub(
        self,
        repo_id: str,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | bool | None = None,
        create_pr: bool = False,
        revision: str | None = None,
        training_args: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        license: str | None = None,
        datasets: list[str] | None = None,
        sample_grid: bool = True,
    ) -> CommitInfo:
        r"""
        Save the pipeline to a temporary folder, write its model card (the repo's README.md) and upload both as one
        commit; the repo's URL is printed.

        A pipeline loaded from a local folder keeps that folder's training summary (`training_summary.json`) and
        sample grid when `training_args`, `metrics` and `datasets` are not given. Nothing published names a local
        path, this machine's user or host, or a Hub token.

        Args:
            repo_id (`str`):
                `namespace/name` of the model repo; created if missing.
            commit_message (`str`, *optional*, defaults to `None`):
                Commit message; a default one is written if `None`.
            private (`bool`, *optional*, defaults to `None`):
                Visibility of a newly created repo (the Hub's default if `None`).
            token (`str` or `bool`, *optional*, defaults to `None`):
                Hub token; huggingface_hub's stored token if `None`. Redacted wherever it occurs in the upload.
            create_pr (`bool`, *optional*, defaults to `False`):
                Open a pull request instead of committing to `revision`.
            revision (`str`, *optional*, defaults to `None`):
                Branch to commit to (`main` if `None`); created from `main` if missing.
            training_args (`dict`, *optional*, defaults to `None`):
                Training settings for the card's table and data line (tokens and local paths are dropped); keys
                read besides the flags of `examples/train.py`: `dataset_name`, `train_data_dir`,
                `num_train_images`, `global_step`, `epochs_run`, `use_ema`.
            metrics (`dict`, *optional*, defaults to `None`):
                Measured metrics (e.g. `{"fid": 3.17}`) to list in the card.
            license (`str`, *optional*, defaults to `None`):
                License identifier for the card's metadata (e.g. `"apache-2.0"`); none is stated if `None`.
            datasets (`list[str]`, *optional*, defaults to `None`):
                Hub dataset ids the model was trained on, for the card's metadata (local paths are dropped).
            sample_grid (`bool`, *optional*, defaults to `True`):
                When the pipeline's folder holds no sample grid, draw one for the card (16 images, DDIM η = 0, 25
                steps, seed 0). `False` draws none.

        Returns:
            `huggingface_hub.CommitInfo`: the commit that was made.
        """
        return push_pipeline(
            self,
            repo_id,
            commit_message=commit_message,
            private=private,
            token=token,
            create_pr=create_pr,
            revision=revision,
            training_args=training_args,
            metrics=metrics,
            license=license,
            datasets=datasets,
            sample_grid=sample_grid,
        )

    def to_diffusers(self) -> DiffusionPipeline:
        """
        The same pipeline as stock diffusers objects, for users without hf_ddpm: a `diffusers.DDPMPipeline` with a
        `UNet2DModel` of the same config and a copy of the weights, and the matching stock scheduler. What stock
        diffusers cannot express (e.g. `timestep_spacing="quadratic"`) is refused with a `ValueError`.

        Returns:
            `diffusers.DDPMPipeline`
        """
        return to_stock_pipeline(self)
