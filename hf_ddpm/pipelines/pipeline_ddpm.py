"""`DDPMPipeline`: unconditional sampling with DDPM (Ho et al. 2020) or DDIM (Song et al. 2021), DDIM encoding
(DDIM §4.3) and latent interpolation by slerp (DDIM §5.3).

The pipeline only orchestrates: every coefficient comes from the scheduler (`set_timesteps`, `step`,
`inversion_step`).
"""

from __future__ import annotations

import inspect
import os
import tempfile
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

from hf_ddpm.pipelines.hub import upload_pipeline_folder
from hf_ddpm.pipelines.serialization import load_pipeline, to_stock_pipeline, write_remote_code_layout
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
    Unconditional image generation with a DDPM-family UNet and a DDPM or DDIM scheduler.

    A drop-in for `diffusers.DDPMPipeline` (same weights, scheduler and generator give the same images), plus DDIM's
    `eta` and σ̂, `latents=`, step-end callbacks, DDIM encoding ([`~DDPMPipeline.invert`]) and slerp interpolation
    ([`~DDPMPipeline.interpolate`]). On the CPU the UNet runs in NHWC (channels_last), which is faster there and gives
    the same numbers up to float rounding; [`~DDPMPipeline.set_memory_format`] chooses another layout.

    Parameters:
        unet ([`~hf_ddpm.models.unet_2d.DDPMUNet2DModel`] or `diffusers.UNet2DModel`):
            The noise predictor ε_θ(x_t, t).
        scheduler ([`~diffusers.SchedulerMixin`]):
            hf_ddpm's `DDPMScheduler` or `DDIMScheduler`, or any diffusers scheduler with the same `step` API.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]
    # `set_memory_format`'s choice (None: NHWC on the CPU), and the UNet that choice converted to NHWC on the CPU.
    _memory_format_choice: torch.memory_format | None = None
    _auto_channels_last_unet: torch.nn.Module | None = None

    def __init__(self, unet: torch.nn.Module, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
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
        batch_size: int = 1,
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
    ) -> ImagePipelineOutput | tuple:
        r"""
        Sample images: x_T ~ N(0, I), then the scheduler's reverse steps down to x_0 (DDPM Algorithm 2, or DDIM eq. 12).

        Args:
            batch_size (`int`, *optional*, defaults to 1):
                Number of images to generate.
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
                (diffusers' convention); a `"latents"` entry in it replaces the current x_t. `pipe.num_timesteps` is
                the number of steps of this call.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `None`):
                Tensors put in `callback_kwargs`, from `["latents"]`; `None` means `["latents"]`.
            sigma_hat (`bool`, *optional*, defaults to `False`):
                DDIM's σ̂_t = √(1 − ᾱ_t/ᾱ_prev) (the "larger variance" row of DDIM Table 1). Only for schedulers whose
                `step` takes `sigma_hat` (hf_ddpm's `DDIMScheduler`).
            use_clipped_model_output (`bool`, *optional*, defaults to `None`):
                As in `diffusers.DDIMPipeline`: `True`/`False` is passed to the scheduler's `step` (DDIM: re-derive ε̂
                from the clipped x̂_0), which must take it; `None` passes nothing.

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: `ImagePipelineOutput(images=...)`, or `(images,)` when
            `return_dict` is `False`.
        """
        self._check_call_inputs(batch_size, generator, output_type, latents)
        tensor_inputs = self._callback_tensor_names(callback_on_step_end, callback_on_step_end_tensor_inputs)
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
            model_output = self._denoiser_output(latents, t, self.scheduler, uses_learned_variance)
            latents = self.scheduler.step(model_output, t, latents, **step_kwargs).prev_sample
            if callback_on_step_end is not None:
                state = self._step_end(callback_on_step_end, i, t, {"latents": latents}, tensor_inputs)
                latents = state["latents"]

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

    def _check_call_inputs(self, batch_size: Any, generator: Any, output_type: Any, latents: Any) -> None:
        self._check_components()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
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
        self, latents: torch.Tensor, t: torch.Tensor, scheduler: SchedulerMixin, uses_learned_variance: bool
    ) -> torch.Tensor:
        """The UNet's output at (x_t, t) as `scheduler.step` takes it: a learned-variance UNet (Nichol & Dhariwal
        2021) returns 2C channels, of which a scheduler that does not use the variance gets only the prediction."""
        model_output = self.unet(scheduler.scale_model_input(latents, t), t).sample
        if not uses_learned_variance and model_output.shape[1] == 2 * latents.shape[1]:
            model_output = model_output[:, : latents.shape[1]]
        return model_output

    # --------------------------------------------------------------------------------------------- encoding
    @torch.no_grad()
    def invert(
        self,
        images: PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor,
        num_inference_steps: int = 50,
        value_range: tuple[float, float] = (0.0, 1.0),
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

        Returns:
            `torch.Tensor`: x_T, shape `(B, C, H, W)`, on the pipeline's device in the UNet's dtype; pass it as
            `latents=`.
        """
        self._check_components()
        scheduler = DDIMScheduler.from_config(self.scheduler.config)
        scheduler.set_timesteps(num_inference_steps, device=self._execution_device)
        memory_format = self._prepare_memory_format()
        sample = self._images_to_model_space(images, value_range).contiguous(memory_format=memory_format)
        self._warn_if_decoding_changes_x0()
        # Encoding visits the sampling schedule backwards: from the clean end up to the noisiest timestep.
        for t in self.progress_bar(scheduler.timesteps.flip(0)):
            model_output = self._denoiser_output(sample, t, scheduler, uses_learned_variance=False)
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
            rows `n·num ... n·num + num − 1`. Pass it with `batch_size=result.shape[0]`.
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

        Reads a folder written by [`~DDPMPipeline.save_pretrained`] or a stock diffusers DDPM/DDIM pipeline (e.g. the
        layout of google/ddpm-cifar10-32): `UNet2DModel` becomes `DDPMUNet2DModel` (same config and weights),
        diffusers' `DDPMScheduler`/`DDIMScheduler` become hf_ddpm's; any other diffusers scheduler is kept as is.

        Args:
            pretrained_model_name_or_path (`str` or `os.PathLike`):
                A local folder holding `model_index.json`, or a Hub repo id.
            allow_pickle (`bool`, *optional*, defaults to `False`):
                Load pickled (`.bin`) UNet weights when no safetensors file exists. Unpickling runs code, so it must
                be asked for.
            unet (`torch.nn.Module`, *optional*):
                Use this UNet instead of loading one.
            scheduler (`SchedulerMixin`, *optional*):
                Use this scheduler instead of loading one.
            torch_dtype (`torch.dtype`, *optional*):
                dtype to load the UNet in.
            revision (`str`, *optional*), cache_dir (`str`, *optional*), token (`str` or `bool`, *optional*),
            local_files_only (`bool`, *optional*), force_download (`bool`, *optional*):
                Passed to huggingface_hub's `snapshot_download` for repo ids.
            trust_remote_code (`bool`, *optional*):
                Accepted for symmetry with diffusers and ignored: nothing from the folder is executed.

        Returns:
            [`DDPMPipeline`]
        """
        return load_pipeline(cls, pretrained_model_name_or_path, **kwargs)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        safe_serialization: bool = True,
        variant: str | None = None,
        push_to_hub: bool = False,
        **kwargs,
    ) -> None:
        r"""
        Save the pipeline for [`~DDPMPipeline.from_pretrained`] and for
        `diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` (re-export modules are written
        beside `model_index.json` and in the component folders).

        Args:
            save_directory (`str` or `os.PathLike`):
                Folder to write; created if missing.
            safe_serialization (`bool`, *optional*, defaults to `True`):
                Must stay `True`: weights are written as safetensors only.
            variant (`str`, *optional*, defaults to `None`):
                Weight file variant (e.g. `"fp16"`), as in diffusers.
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
        super().save_pretrained(save_directory, safe_serialization=True, variant=variant, push_to_hub=False)
        write_remote_code_layout(save_directory, self)
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
        license: str = "apache-2.0",
        datasets: list[str] | None = None,
    ) -> CommitInfo:
        r"""
        Save the pipeline to a temporary folder, write its model card (the repo's README.md) and upload both as one
        commit.

        Args:
            repo_id (`str`):
                `namespace/name` of the model repo; created if missing.
            commit_message (`str`, *optional*, defaults to `None`):
                Commit message; a default one is written if `None`.
            private (`bool`, *optional*, defaults to `None`):
                Visibility of a newly created repo (the Hub's default if `None`).
            token (`str` or `bool`, *optional*, defaults to `None`):
                Hub token; huggingface_hub's stored token if `None`. Never written to the card.
            create_pr (`bool`, *optional*, defaults to `False`):
                Open a pull request instead of committing to `revision`.
            revision (`str`, *optional*, defaults to `None`):
                Branch to commit to (`main` if `None`); created from `main` if missing.
            training_args (`dict`, *optional*, defaults to `None`):
                Training settings to list in the card (tokens and local paths are dropped).
            metrics (`dict`, *optional*, defaults to `None`):
                Measured metrics (e.g. `{"fid": 3.17}`) to list in the card.
            license (`str`, *optional*, defaults to `"apache-2.0"`):
                License identifier for the card's metadata.
            datasets (`list[str]`, *optional*, defaults to `None`):
                Hub dataset ids the model was trained on, for the card's metadata (local paths are dropped).

        Returns:
            `huggingface_hub.CommitInfo`: the commit that was made.
        """
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            return upload_pipeline_folder(
                self,
                folder,
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
            )

    def to_diffusers(self) -> DiffusionPipeline:
        """
        The same pipeline as stock diffusers objects, for users without hf_ddpm: a `diffusers.DDPMPipeline` with a
        `UNet2DModel` of the same config and weights and the matching stock scheduler. Configuration only hf_ddpm's
        schedulers understand (e.g. `timestep_spacing="quadratic"`) is refused with a `ValueError`.

        Returns:
            `diffusers.DDPMPipeline`
        """
        return to_stock_pipeline(self)
