"""`DDPMPipeline`: unconditional sampling with DDPM (Ho et al. 2020) or DDIM (Song et al. 2021), DDIM encoding
(DDIM §4.3) and latent interpolation by slerp (DDIM §5.3).

The pipeline only orchestrates: every coefficient comes from the scheduler (`set_timesteps`, `step`,
`inversion_step`); nothing here re-derives the papers' math.
"""

from __future__ import annotations

import inspect
import os
import tempfile
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

OUTPUT_TYPES = ("pil", "np", "pt")
VALUE_RANGES = ((0.0, 1.0), (-1.0, 1.0))
# Images are checked against their declared range with this slack, so a float round trip (e.g. 0.5 + 0.5·x) that
# lands a hair outside the range is not refused.
_RANGE_TOLERANCE = 1e-4


def slerp(x0: torch.Tensor, x1: torch.Tensor, lam: float | Sequence[float] | torch.Tensor) -> torch.Tensor:
    r"""
    Spherical linear interpolation between two latents (DDIM §5.3):

    x(λ) = sin((1 − λ)θ) / sin θ · x⁰ + sin(λθ) / sin θ · x¹,  θ = arccos(⟨x⁰, x¹⟩ / ‖x⁰‖‖x¹‖).

    Each tensor is treated as one vector (all its elements). Gaussian latents of high dimension lie near a sphere, so
    slerp keeps the interpolants at the norm the model was trained on, where a straight line would pass through
    low-norm, off-distribution points.

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


class DDPMPipeline(DiffusionPipeline):
    r"""
    Unconditional image generation with a DDPM-family UNet and a DDPM or DDIM scheduler.

    A drop-in for `diffusers.DDPMPipeline` (same weights, scheduler and generator give the same images), plus DDIM's
    `eta` and σ̂ sampler, `latents=`, step-end callbacks, DDIM encoding ([`~DDPMPipeline.invert`]) and slerp
    interpolation ([`~DDPMPipeline.interpolate`]). Saving writes a folder that loads with this class and with
    `diffusers.DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`; see [`~DDPMPipeline.from_pretrained`],
    [`~DDPMPipeline.save_pretrained`], [`~DDPMPipeline.push_to_hub`] and [`~DDPMPipeline.to_diffusers`].

    Parameters:
        unet ([`~hf_ddpm.models.unet_2d.DDPMUNet2DModel`] or `diffusers.UNet2DModel`):
            The noise predictor ε_θ(x_t, t).
        scheduler ([`~diffusers.SchedulerMixin`]):
            hf_ddpm's `DDPMScheduler` or `DDIMScheduler`, or any diffusers scheduler with the same `step` API.
    """

    model_cpu_offload_seq = "unet"
    _callback_tensor_inputs = ["latents"]

    def __init__(self, unet: torch.nn.Module, scheduler: SchedulerMixin):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)
        # Images in [-1, 1] (DDPM §3.3) <-> [0, 1] / PIL / numpy, with diffusers' conversions.
        self.image_processor = VaeImageProcessor(do_resize=False, do_normalize=True)

    # ------------------------------------------------------------------------------------------------ helpers
    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """`(channels, height, width)` of one sample, read from the UNet's config."""
        size = self.unet.config.sample_size
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        return (self.unet.config.in_channels, height, width)

    @property
    def default_num_inference_steps(self) -> int:
        """What the scheduler is made for: T for DDPM (ancestral sampling visits every step), 50 otherwise (DDIM),
        capped at T."""
        num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if isinstance(self.scheduler, _StockDDPMScheduler):
            return num_train_timesteps
        return min(50, num_train_timesteps)

    @property
    def memory_format(self) -> torch.memory_format:
        """`torch.channels_last` when the UNet's convolution weights are NHWC (after
        `pipe.unet.to(memory_format=torch.channels_last)`), else `torch.contiguous_format`. The chain's x_t is kept in
        the same format, so that no convolution converts its input at every step."""
        for parameter in self.unet.parameters():
            if parameter.ndim != 4:
                continue
            channels_last, nchw = parameter.is_contiguous(memory_format=torch.channels_last), parameter.is_contiguous()
            if channels_last != nchw:  # both hold for 1 input channel or a 1×1 kernel: look further
                return torch.channels_last if channels_last else torch.contiguous_format
        return torch.contiguous_format

    @staticmethod
    def _uses_learned_variance(scheduler: SchedulerMixin) -> bool:
        """Whether `scheduler.step` takes a learned-variance model's 2C channels (DDPM with a learned variance_type).

        A config may carry a variance_type its class ignores (diffusers keeps unused keys for round trips), so the
        class must also take the argument.
        """
        takes_variance = "variance_type" in inspect.signature(type(scheduler).__init__).parameters
        return takes_variance and scheduler.config.variance_type in LEARNED_VARIANCE_TYPES

    def _denoiser_output(
        self, latents: torch.Tensor, t: torch.Tensor, scheduler: SchedulerMixin, uses_learned_variance: bool
    ) -> torch.Tensor:
        """The UNet's output at (x_t, t), as the scheduler's `step` takes it.

        A learned-variance UNet (Nichol & Dhariwal 2021) returns 2C channels: prediction, then variance values. Only a
        scheduler that uses the variance gets both halves; any other (DDIM, fixed-variance DDPM) gets the prediction,
        as diffusers' own pipelines do.
        """
        model_output = self.unet(scheduler.scale_model_input(latents, t), t).sample
        if not uses_learned_variance and model_output.shape[1] == 2 * latents.shape[1]:
            model_output = model_output[:, : latents.shape[1]]
        return model_output

    def _step_parameters(self) -> set[str]:
        return set(inspect.signature(self.scheduler.step).parameters)

    def _check_num_inference_steps(self, num_inference_steps: Any) -> int:
        num_train_timesteps = int(self.scheduler.config.num_train_timesteps)
        if (
            isinstance(num_inference_steps, bool)
            or not isinstance(num_inference_steps, int)
            or not 1 <= num_inference_steps <= num_train_timesteps
        ):
            raise ValueError(
                f"num_inference_steps must be an integer in [1, {num_train_timesteps}] (the scheduler's "
                f"num_train_timesteps), got {num_inference_steps!r}."
            )
        return num_inference_steps

    # ---------------------------------------------------------------------------------------------- sampling
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
    ) -> ImagePipelineOutput | tuple:
        r"""
        Sample images: x_T ~ N(0, I), then the scheduler's reverse steps down to x_0 (DDPM Algorithm 2, or DDIM eq. 12).

        Args:
            batch_size (`int`, *optional*, defaults to 1):
                Number of images to generate.
            generator (`torch.Generator` or `list[torch.Generator]`, *optional*, defaults to `None`):
                Source of randomness. With a list (one per sample), sample i draws both its x_T and its per-step noise
                from `generator[i]` only, so it is the same whether it is drawn in a batch of 1 or of 8.
            num_inference_steps (`int`, *optional*, defaults to `None`):
                Number of reverse steps. `None` means what the scheduler is made for: `num_train_timesteps` (T) for
                DDPM, 50 (at most T) for DDIM and other schedulers. Must lie in [1, T].
            eta (`float`, *optional*, defaults to 0.0):
                DDIM's η (eq. 16): 0 is deterministic DDIM, 1 is DDPM's fixed-small sampler. Only for schedulers whose
                `step` takes `eta`; a non-zero value with any other scheduler is an error.
            latents (`torch.Tensor`, *optional*, defaults to `None`):
                x_T to start from, shape `(batch_size, C, H, W)`, on the pipeline's device in the UNet's dtype, e.g. the
                output of [`~DDPMPipeline.invert`] or [`~DDPMPipeline.interpolate`]. Drawn from N(0, I) if `None`.
            output_type (`str`, *optional*, defaults to `"pil"`):
                `"pil"` (list of `PIL.Image`), `"np"` (float array `(B, H, W, C)` in [0, 1]) or `"pt"` (tensor
                `(B, C, H, W)` in [0, 1]).
            return_dict (`bool`, *optional*, defaults to `True`):
                Return an [`~diffusers.ImagePipelineOutput`] instead of a tuple.
            callback_on_step_end (`Callable`, `PipelineCallback` or `MultiPipelineCallbacks`, *optional*, defaults to `None`):
                Called after each step as `callback_on_step_end(pipe, i, t, callback_kwargs)` (diffusers'
                convention); `callback_kwargs` holds the tensors named in `callback_on_step_end_tensor_inputs`. The
                callback returns a dict; a `"latents"` entry replaces the current x_t.
            callback_on_step_end_tensor_inputs (`list[str]`, *optional*, defaults to `None`):
                Names of the tensors passed to the callback, from `["latents"]`; `None` means `["latents"]`.
            sigma_hat (`bool`, *optional*, defaults to `False`):
                Use DDIM's σ̂_t = √(1 − ᾱ_t/ᾱ_prev) (the "larger variance" row of DDIM Table 1). Only for schedulers
                whose `step` takes `sigma_hat` (hf_ddpm's `DDIMScheduler`).

        Returns:
            [`~diffusers.ImagePipelineOutput`] or `tuple`: the images, as `ImagePipelineOutput(images=...)` or as
            `(images,)` when `return_dict` is `False`.
        """
        # 1. Validate everything before any heavy work.
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}.")
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {list(OUTPUT_TYPES)}, got {output_type!r}.")
        if isinstance(generator, list) and len(generator) != batch_size:
            raise ValueError(
                f"generator is a list of {len(generator)} generators but batch_size is {batch_size}: pass one "
                "generator per sample."
            )
        if num_inference_steps is None:
            num_inference_steps = self.default_num_inference_steps
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)

        step_parameters = self._step_parameters()
        extra_step_kwargs: dict[str, Any] = {}
        if "generator" in step_parameters:
            extra_step_kwargs["generator"] = generator
        if "eta" in step_parameters:
            extra_step_kwargs["eta"] = eta
        elif eta != 0.0:
            raise ValueError(
                f"eta={eta!r} needs a scheduler whose step takes eta (DDIM); {type(self.scheduler).__name__}.step "
                "does not. Use eta=0.0 or swap in a DDIMScheduler."
            )
        if sigma_hat:
            if "sigma_hat" not in step_parameters:
                raise ValueError(
                    f"sigma_hat=True needs a scheduler whose step takes sigma_hat (hf_ddpm's DDIMScheduler); "
                    f"{type(self.scheduler).__name__}.step does not."
                )
            extra_step_kwargs["sigma_hat"] = True

        if isinstance(callback_on_step_end, PipelineCallback | MultiPipelineCallbacks):
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if callback_on_step_end_tensor_inputs is None:
            callback_on_step_end_tensor_inputs = ["latents"]
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(
                f"callback_on_step_end_tensor_inputs must be drawn from {self._callback_tensor_inputs}, got {unknown}."
            )

        device = self._execution_device
        dtype = self.unet.dtype
        shape = (batch_size, *self.sample_shape)
        if latents is not None:
            self._check_latents(latents, shape, device, dtype)

        # 2. x_T ~ N(0, I) (DDPM Algorithm 2, line 1), scaled by the scheduler's initial sigma (1 for DDPM/DDIM).
        if latents is None:
            latents = randn_tensor(shape, generator=generator, device=device, dtype=dtype)
        latents = (latents * self.scheduler.init_noise_sigma).contiguous(memory_format=self.memory_format)

        # 3. Reverse process.
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        uses_learned_variance = self._uses_learned_variance(self.scheduler)
        for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
            model_output = self._denoiser_output(latents, t, self.scheduler, uses_learned_variance)
            latents = self.scheduler.step(model_output, t, latents, **extra_step_kwargs).prev_sample

            if callback_on_step_end is not None:
                step_tensors = {"latents": latents}
                callback_kwargs = {k: step_tensors[k] for k in callback_on_step_end_tensor_inputs}
                callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                latents = callback_outputs.pop("latents", latents)

        # 4. [-1, 1] -> [0, 1] and the requested container.
        images = self.image_processor.postprocess(latents, output_type=output_type)
        self.maybe_free_model_hooks()

        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

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

    # --------------------------------------------------------------------------------------------- encoding
    def _ddim_scheduler(self) -> SchedulerMixin:
        """hf_ddpm's DDIMScheduler with the current scheduler's config (spacing, β schedule, clipping...)."""
        return DDIMScheduler.from_config(self.scheduler.config)

    def _images_to_model_space(
        self, images: Any, value_range: tuple[float, float], device: torch.device, dtype: torch.dtype
    ) -> torch.Tensor:
        value_range = tuple(float(v) for v in value_range)
        if value_range not in VALUE_RANGES:
            raise ValueError(f"value_range must be one of {list(VALUE_RANGES)}, got {value_range!r}.")
        if isinstance(images, PIL.Image.Image):
            images = [images]
        if isinstance(images, list) and images and all(isinstance(im, PIL.Image.Image) for im in images):
            if value_range != (0.0, 1.0):
                raise ValueError(
                    f"PIL images are always in [0, 1] (0..255); value_range must be (0, 1), got {value_range}."
                )
            x = self.image_processor.pil_to_numpy(images)  # (B, H, W, C) in [0, 1]
            if x.ndim == 3:  # grayscale PIL images come back without a channel axis
                x = x[..., None]
            images = x
        if isinstance(images, np.ndarray):
            if images.dtype == np.uint8:
                if value_range != (0.0, 1.0):
                    raise ValueError(f"uint8 images are in 0..255; value_range must be (0, 1), got {value_range}.")
                images = images.astype(np.float32) / 255.0
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4:
                raise ValueError(f"numpy images must have shape (B, H, W, C) or (H, W, C), got {images.shape}.")
            images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        if not isinstance(images, torch.Tensor):
            raise ValueError(
                f"images must be a PIL image, a list of PIL images, a numpy array (B, H, W, C) or a torch tensor "
                f"(B, C, H, W), got {type(images).__name__}."
            )
        if images.ndim == 3:
            images = images[None]
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
        images = images.to(device=device, dtype=dtype)
        if value_range == (0.0, 1.0):
            images = self.image_processor.normalize(images)  # 2x - 1
        return images.clamp(-1.0, 1.0)

    @torch.no_grad()
    def invert(
        self,
        images: PIL.Image.Image | list[PIL.Image.Image] | np.ndarray | torch.Tensor,
        num_inference_steps: int = 50,
        value_range: tuple[float, float] = (0.0, 1.0),
    ) -> torch.Tensor:
        r"""
        DDIM encoding (DDIM §4.3): run eq. 12 with η = 0 forward in t, from x_0 to x_T, so that DDIM sampling with η = 0
        and the same `num_inference_steps` decodes the result back to (approximately) the same images. The
        reconstruction error falls as the number of steps grows (DDIM Table 2).

        The steps are hf_ddpm's `DDIMScheduler.inversion_step`, built with `from_config` of the pipeline's current
        scheduler (so the spacing and clipping settings carry over; the pipeline's own scheduler is left untouched).
        To decode, sample with a DDIM scheduler of the same config: `pipe.scheduler =
        DDIMScheduler.from_config(pipe.scheduler.config)`, then `pipe(batch_size=len(x_T), latents=x_T,
        num_inference_steps=num_inference_steps, eta=0.0)`. Encoding never clips x̂_0 (that would break
        invertibility), while sampling does when the config has `clip_sample=True` (diffusers' default); the ODE
        round trip is exact in the limit only with `clip_sample=False`.

        Args:
            images (`PIL.Image.Image`, `list[PIL.Image.Image]`, `np.ndarray` or `torch.Tensor`):
                The images x_0, in what `__call__` returns: PIL images, numpy `(B, H, W, C)` (float in [0, 1] or
                uint8), or tensors `(B, C, H, W)`. Their size and channels must match the UNet.
            num_inference_steps (`int`, *optional*, defaults to 50):
                Number of encoding steps S, in [1, T].
            value_range (`tuple[float, float]`, *optional*, defaults to `(0.0, 1.0)`):
                The range float images are in: `(0, 1)` (what `output_type="np"`/`"pt"` return) or `(-1, 1)` (the
                model's own space, e.g. training batches). Values outside the declared range are an error.

        Returns:
            `torch.Tensor`: x_T, shape `(B, C, H, W)`, on the pipeline's device in the UNet's dtype; pass it as
            `latents=`.
        """
        device = self._execution_device
        dtype = self.unet.dtype
        num_inference_steps = self._check_num_inference_steps(num_inference_steps)
        sample = self._images_to_model_space(images, value_range, device, dtype).contiguous(
            memory_format=self.memory_format
        )

        scheduler = self._ddim_scheduler()
        scheduler.set_timesteps(num_inference_steps, device=device)
        # Encoding visits the sampling schedule backwards: from the clean end up to the noisiest timestep.
        for t in self.progress_bar(scheduler.timesteps.flip(0)):
            model_output = self._denoiser_output(sample, t, scheduler, uses_learned_variance=False)
            sample = scheduler.inversion_step(model_output, t, sample).prev_sample
        self.maybe_free_model_hooks()
        return sample

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
        Save the pipeline so that it loads three ways: `hf_ddpm.DDPMPipeline.from_pretrained(dir)`,
        `diffusers.DiffusionPipeline.from_pretrained(dir, trust_remote_code=True)` (small re-export modules are
        written beside `model_index.json` and in the component folders), and the same from the Hub.

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
        Save the pipeline to a temporary folder, write its model card (the repo's README.md, from the `model_card.md`
        template) and upload both with huggingface_hub's `create_repo` + `upload_folder`.

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
        The same pipeline as stock diffusers objects, for people who do not install hf_ddpm: a
        `diffusers.DDPMPipeline` holding a `diffusers.UNet2DModel` with the same config and weights and the matching
        stock scheduler (`DDPMScheduler`/`DDIMScheduler`, or the scheduler's own class when it already is a stock
        one). With a DDPM scheduler it gives the same images for the same generator. Configuration that only
        hf_ddpm's schedulers understand (e.g. `timestep_spacing="quadratic"`) is refused with a `ValueError`.

        Returns:
            `diffusers.DDPMPipeline`
        """
        return to_stock_pipeline(self)
