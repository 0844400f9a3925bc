"""The papers' tables for one pipeline: DDIM Table 1 (quality vs steps), DDIM Table 2 (reconstruction), NLL, and
quality vs network evaluations for diffusers' solvers, and the guidance trade-off of a class-conditional digit model
(Ho & Salimans 2022).

Each function returns rows (one `dict` per cell); `hf_ddpm.evaluation.report` writes them out:

- `sample_quality_table`: quality of S-step samples for DDIM's η ∈ {0, 0.2, 0.5, 1} and σ̂ (DDIM Table 1), with
  linear and quadratic timestep sub-sequences (DDIM App. D.2). Quality is FID (`hf_ddpm.evaluation.fid`) or, for
  digits on a CPU, the Fréchet digit distance with precision and recall (`hf_ddpm.evaluation.digit_features`) or
  the classifier proxy of `hf_ddpm.evaluation.digits` (share of confidently classified samples).
- `reconstruction_table`: per-dimension MSE of DDIM encoding (η = 0 forward, `DDPMPipeline.invert`) followed by
  decoding with the same S steps (DDIM Table 2, §5.4), images scaled to [0, 1].
- `nll_table`: bits/dim of held-out images (DDPM Table 1's NLL column), `hf_ddpm.evaluation.likelihood`.
- `solver_table`: quality against the number of network evaluations (NFE) for DDIM η = 0 and diffusers' solvers
  (DPM-Solver++, UniPC, Euler, Heun, PNDM, ...), with DDPM's full chain as the reference; `solver_summary` gives the
  fewest NFE at which each sampler matches the reference within its error.
- `guidance_table`: for each guidance scale s, class accuracy and per-class FDD, precision and recall of a
  class-conditional digit model: fidelity rises with s, diversity falls (Ho & Salimans 2022, Fig. 4 and Table 1).

"linear" is DDIM's τ_i = ⌊c·i⌋ with c = ⌊T/S⌋ (diffusers' "leading" spacing, as in the original DDIM code);
"quadratic" is τ_i = ⌊c·i²⌋ up to ≈ 0.8 T (the paper's CIFAR10 setting). Diffusers' own spacing names ("leading",
"trailing", "linspace") are accepted too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from diffusers import (
    DEISMultistepScheduler,
    DPMSolverMultistepScheduler,
    DPMSolverSinglestepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)
from diffusers.schedulers.scheduling_utils import SchedulerMixin

from hf_ddpm.evaluation.likelihood import bits_per_dim
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

__all__ = [
    "DDIM_TABLE1_STEPS",
    "DDIM_TABLE2_STEPS",
    "GUIDANCE_METRICS",
    "GUIDANCE_SCALES",
    "METRICS",
    "SOLVERS",
    "SOLVER_TABLE_NFES",
    "SOLVER_TABLE_SAMPLERS",
    "SPACINGS",
    "guidance_table",
    "nll_table",
    "quality_pivot",
    "reconstruction_table",
    "sample_quality_table",
    "solver_pivot",
    "solver_scheduler",
    "solver_summary",
    "solver_table",
]

DDIM_TABLE1_STEPS = (10, 20, 50, 100, 1000)
DDIM_TABLE2_STEPS = (10, 20, 50, 100, 200, 500, 1000)
DDIM_TABLE1_ETAS = (0.0, 0.2, 0.5, 1.0)
# The papers' names → the scheduler's `timestep_spacing`.
SPACINGS = {
    "linear": "leading",
    "quadratic": "quadratic",
    "leading": "leading",
    "trailing": "trailing",
    "linspace": "linspace",
}
METRICS = ("digits", "fdd", "fid")
# s = 1 + w: the unconditional model (0), the conditional one (1), then the paper's w ∈ {0.5, 1, 2, 4}.
GUIDANCE_SCALES = (0.0, 1.0, 1.5, 2.0, 3.0, 5.0)
GUIDANCE_METRICS = ("digits", "fdd")

SOLVER_TABLE_NFES = (5, 10, 20, 50)
# The solver table's samplers: name → (scheduler class, settings beyond the trained config). The DDIM rows are
# hf_ddpm's DDIMScheduler at η = 0 with the paper's sub-sequences; the others are diffusers' solvers at the settings
# their papers recommend for unconditional sampling.
SOLVERS: dict[str, tuple[type[SchedulerMixin], dict[str, Any]]] = {
    "ddim_linear": (DDIMScheduler, {"timestep_spacing": "leading"}),
    "ddim_quadratic": (DDIMScheduler, {"timestep_spacing": "quadratic"}),
    "dpmsolver++_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmsolver++_2s": (
        DPMSolverSinglestepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "lower_order_final": True},
    ),
    "unipc": (UniPCMultistepScheduler, {}),  # UniPC-bh2: order-2 predictor and corrector, one evaluation per step
    "euler": (EulerDiscreteScheduler, {}),
    "euler_ancestral": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),  # two evaluations per step but the last (an Euler step to σ = 0)
    "pndm": (PNDMScheduler, {}),  # the paper's warm-up: 3 Runge–Kutta steps of 4 evaluations, then linear multistep
    "lms": (LMSDiscreteScheduler, {}),
    "deis": (DEISMultistepScheduler, {}),
}
SOLVER_TABLE_SAMPLERS = ("ddim_linear", "ddim_quadratic", "dpmsolver++_2m", "unipc", "euler", "heun", "pndm")


def _spacing(name: str) -> str:
    if name not in SPACINGS:
        raise ValueError(f"spacing must be one of {sorted(SPACINGS)}, got {name!r}.")
    return SPACINGS[name]


def _check_steps(steps: Sequence[int], num_train_timesteps: int) -> list[int]:
    steps = list(steps)
    if not steps or any(
        isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= num_train_timesteps for s in steps
    ):
        raise ValueError(f"`steps` must be ints in [1, {num_train_timesteps}] (num_train_timesteps), got {steps}.")
    return steps


def _ddim_pipeline(pipeline, spacing: str, **overrides) -> DDPMPipeline:
    """A DDPMPipeline sharing `pipeline`'s UNet with a DDIM scheduler of its config (the caller's is untouched)."""
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config, timestep_spacing=_spacing(spacing), **overrides)
    pipe = DDPMPipeline(unet=pipeline.unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def _samples(
    pipe: DDPMPipeline,
    num_samples: int,
    batch_size: int,
    seed: int,
    steps: int,
    eta: float,
    sigma_hat: bool,
    class_labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> torch.Tensor:
    """`num_samples` images (N, C, H, W) in [0, 1]; every cell starts from the same generator state. With
    `class_labels` (N,), sample i is drawn for class_labels[i] with `guidance_scale`."""
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    images = []
    for start in range(0, num_samples, batch_size):
        n = min(batch_size, num_samples - start)
        conditioning = {}
        if class_labels is not None:
            conditioning = {"class_labels": class_labels[start : start + n], "guidance_scale": guidance_scale}
        out = pipe(
            batch_size=n,
            generator=generator,
            num_inference_steps=steps,
            eta=eta,
            sigma_hat=sigma_hat,
            output_type="pt",
            **conditioning,
        )
        images.append(out.images.cpu())
    return torch.cat(images)


def _digit_proxy(images: torch.Tensor) -> dict:
    from hf_ddpm.evaluation.digits import digit_score

    result = digit_score(images * 2 - 1)  # the classifier takes the model's space, [-1, 1]
    return {"value": result["confident_share"], "class_entropy": result["class_entropy"]}


def _digit_features(images: torch.Tensor) -> dict:
    from hf_ddpm.evaluation.digit_features import digit_feature_metrics

    out = digit_feature_metrics(images * 2 - 1)  # tensors in the model's space, [-1, 1]
    return {"value": out.fdd, "std_error": out.fdd_std_error, "precision": out.precision, "recall": out.recall}


def _score_fn(
    metric: str | Callable[[torch.Tensor], float], reference_statistics: Any, fid_kwargs: dict | None
) -> Callable[[torch.Tensor], dict]:
    """The cell scorer: images (N, C, H, W) in [0, 1] → a dict with `value` and the metric's extra columns."""
    if callable(metric):
        return lambda images: {"value": float(metric(images))}
    if metric == "digits":
        return _digit_proxy
    if metric == "fdd":
        return _digit_features
    if metric == "fid":
        if reference_statistics is None:
            raise ValueError("metric='fid' needs `reference_statistics` (a FeatureStatistics or the path of a .npz).")
        from hf_ddpm.evaluation.fid import fid

        return lambda images: {"value": fid(images, reference_statistics, **(fid_kwargs or {}))}
    raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}.")


def _metric_name(metric: str | Callable[[torch.Tensor], float]) -> str:
    if callable(metric):
        return getattr(metric, "__name__", "custom")
    return {"digits": "confident_share"}.get(metric, metric)


def _samplers(etas: Sequence[float], sigma_hat: bool) -> list[tuple[str, float, bool]]:
    """(name, η, σ̂) of Table 1's rows; the σ̂ row's σ̂_t = √(1 − ᾱ_t/ᾱ_prev) replaces σ_t(η), η is unused."""
    samplers = [(f"eta={float(e):g}", float(e), False) for e in etas]
    return samplers + ([("sigma_hat", 1.0, True)] if sigma_hat else [])


def sample_quality_table(
    pipeline,
    *,
    steps: Sequence[int] = DDIM_TABLE1_STEPS,
    etas: Sequence[float] = DDIM_TABLE1_ETAS,
    sigma_hat: bool = True,
    spacings: Sequence[str] = ("linear", "quadratic"),
    num_samples: int = 256,
    batch_size: int = 256,
    seed: int = 0,
    metric: str | Callable[[torch.Tensor], float] = "digits",
    reference_statistics: Any = None,
    fid_kwargs: dict | None = None,
    clip_sample: bool | None = False,
    progress: bool = True,
) -> list[dict]:
    """
    DDIM Table 1 analogue: sample quality vs the number of steps S, for each η (and σ̂) and each spacing.

    Every cell samples `num_samples` images from the same seed (the same x_T), so cells differ only by the sampler.
    Schedules that coincide (e.g. S = T in both spacings) are sampled once and reported under both spacings.

    By default x̂_0 is not clipped, as in DDIM's released sampler (`generalized_steps`), which produced the paper's
    table. diffusers' default `clip_sample=True` (kept in most saved configs) clips x̂_0 but not ε̂ at every step,
    which changes the sampler, most visibly the deterministic η = 0 chain at large S.

    Args:
        pipeline (`DDPMPipeline`):
            The model; its UNet is shared and its scheduler's config (β, T, clipping) is used for DDIM schedulers.
        steps (`Sequence[int]`, *optional*, defaults to `(10, 20, 50, 100, 1000)`):
            The numbers of sampling steps S.
        etas (`Sequence[float]`, *optional*, defaults to `(0.0, 0.2, 0.5, 1.0)`):
            DDIM's η values (eq. 16).
        sigma_hat (`bool`, *optional*, defaults to `True`):
            Also the σ̂ row (DDPM's "fixed large" noise, DDIM Table 1's last row).
        spacings (`Sequence[str]`, *optional*, defaults to `("linear", "quadratic")`):
            Timestep sub-sequences (see the module docstring).
        num_samples (`int`, *optional*, defaults to 256):
            Samples per cell. The digit proxy is meaningful from a few hundred; FID needs thousands.
        batch_size (`int`, *optional*, defaults to 256):
            Samples per pipeline call.
        seed (`int`, *optional*, defaults to 0):
            Seed of every cell's generator.
        metric (`str` or `Callable`, *optional*, defaults to `"digits"`):
            `"digits"` (value = share of samples a held-out-trained classifier labels with ≥ 0.9 confidence,
            higher is better), `"fdd"` (value = Fréchet digit distance, lower is better, with precision and recall;
            `hf_ddpm.evaluation.digit_features`), `"fid"` (lower is better), or a function of the samples
            (N, C, H, W) in [0, 1] returning a float.
        reference_statistics ([`~hf_ddpm.evaluation.fid.FeatureStatistics`] or `str`, *optional*):
            FID's reference statistics (or their .npz path); required for `metric="fid"`.
        fid_kwargs (`dict`, *optional*):
            Passed to [`~hf_ddpm.evaluation.fid.fid`] (`backend`, `batch_size`, `device`...).
        clip_sample (`bool`, *optional*, defaults to `False`):
            Clip x̂_0 to the sample range at each step; `None` keeps the pipeline's scheduler config.
        progress (`bool`, *optional*, defaults to `True`):
            A progress bar over cells.

    Returns:
        `list[dict]`: one row per (spacing, sampler, S): `spacing`, `sampler` ("eta=0.0" ... or "sigma_hat"), `eta`
        (`None` for σ̂), `steps`, `metric`, `value`, `num_samples`, `seconds` (sampling + scoring), and
        `class_entropy` for the digit proxy, `std_error` (bootstrap), `precision` and `recall` for FDD.
    """
    from tqdm.auto import tqdm

    steps = _check_steps(steps, int(pipeline.scheduler.config.num_train_timesteps))
    score = _score_fn(metric, reference_statistics, fid_kwargs)
    overrides = {} if clip_sample is None else {"clip_sample": clip_sample}
    pipes = {spacing: _ddim_pipeline(pipeline, spacing, **overrides) for spacing in spacings}
    cells = [(sp, sampler, s) for sp in spacings for sampler in _samplers(etas, sigma_hat) for s in steps]
    rows, scored = [], {}
    for spacing, (name, eta, hat), num_steps in tqdm(cells, disable=not progress, desc="DDIM table 1"):
        pipe = pipes[spacing]
        pipe.scheduler.set_timesteps(num_steps)
        key = (tuple(pipe.scheduler.timesteps.tolist()), eta, hat)  # coinciding schedules are sampled once
        if key not in scored:
            start = time.perf_counter()
            images = _samples(pipe, num_samples, batch_size, seed, num_steps, eta, hat)
            scored[key] = {**score(images), "seconds": round(time.perf_counter() - start, 2)}
        rows.append(
            {"spacing": spacing, "sampler": name, "eta": None if hat else eta, "steps": num_steps,
             "metric": _metric_name(metric), "num_samples": num_samples, **scored[key]}
        )  # fmt: skip
    return rows


@torch.no_grad()
def reconstruction_table(
    pipeline,
    images: torch.Tensor,
    *,
    steps: Sequence[int] = DDIM_TABLE2_STEPS,
    spacing: str = "linear",
    batch_size: int = 256,
    progress: bool = True,
) -> list[dict]:
    """
    DDIM Table 2 analogue: per-dimension MSE of encode (DDIM §4.3, η = 0 forward) then decode with S steps.

    Both directions use a DDIM scheduler of the pipeline's config with `clip_sample=False`: encoding never clips
    x̂_0, and decoding must not either for the ODE round trip to be exact as S grows.

    Args:
        pipeline (`DDPMPipeline`):
            The model.
        images (`torch.Tensor`):
            x_0, shape (N, C, H, W) in [−1, 1] (e.g. held-out data).
        steps (`Sequence[int]`, *optional*, defaults to `(10, 20, 50, 100, 200, 500, 1000)`):
            The numbers of steps S (DDIM Table 2's columns).
        spacing (`str`, *optional*, defaults to `"linear"`):
            Timestep sub-sequence of both directions.
        batch_size (`int`, *optional*, defaults to 256):
            Images per pipeline call.
        progress (`bool`, *optional*, defaults to `True`):
            A progress bar over S.

    Returns:
        `list[dict]`: one row per S: `steps`, `spacing`, `mse_per_dim` (images scaled to [0, 1], as DDIM Table 2),
        `num_images`, `seconds`.
    """
    from tqdm.auto import tqdm

    num_train_timesteps = int(pipeline.scheduler.config.num_train_timesteps)
    steps = _check_steps(steps, num_train_timesteps)
    if not torch.is_tensor(images) or images.ndim != 4:
        raise ValueError(f"`images` must be a tensor (N, C, H, W) in [-1, 1], got {getattr(images, 'shape', images)}.")
    pipe = _ddim_pipeline(pipeline, spacing, clip_sample=False)
    rows = []
    for num_steps in tqdm(steps, disable=not progress, desc="DDIM table 2"):
        start, squared_error = time.perf_counter(), 0.0
        for first in range(0, len(images), batch_size):
            x0 = images[first : first + batch_size]
            latents = pipe.invert(x0, num_inference_steps=num_steps, value_range=(-1.0, 1.0))
            decoded = pipe(
                batch_size=len(x0), latents=latents, num_inference_steps=num_steps, eta=0.0, output_type="pt"
            ).images
            squared_error += float(((decoded.cpu().double() - (x0.double() + 1) / 2) ** 2).sum())
        rows.append(
            {
                "steps": num_steps,
                "spacing": spacing,
                "mse_per_dim": squared_error / images.numel(),
                "num_images": len(images),
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
    return rows


def nll_table(
    pipeline,
    images: torch.Tensor,
    *,
    timesteps: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
) -> list[dict]:
    """
    Negative log-likelihood bound in bits/dim of (held-out) images, DDPM Table 1's NLL column. For a class-conditional
    model, the unconditional bound on −log p(x), through the null label ∅.

    Args:
        pipeline (`DDPMPipeline`):
            The model.
        images (`torch.Tensor`):
            (N, C, H, W) on the 256-level grid of [−1, 1]; see [`~hf_ddpm.evaluation.likelihood.bits_per_dim`].
        timesteps (`int`, *optional*, defaults to `None`):
            `None` for every timestep, K for the strided estimate.
        batch_size (`int`, *optional*, defaults to 256):
            Images per network call.
        seed (`int`, *optional*, defaults to 0):
            Seed of the noise.

    Returns:
        `list[dict]`: one row: `num_images`, `timesteps` ("all T−1" or K), `bits_per_dim` (mean),
        `standard_error` (over images), `prior`, `decoder`, `kl_terms` (mean bits/dim of each part), `seconds`.
    """
    start = time.perf_counter()
    num_classes = getattr(pipeline, "num_classes", None)
    null_labels = None if num_classes is None else torch.full((len(images),), num_classes, dtype=torch.long)
    out = bits_per_dim(
        pipeline,
        images,
        generator=torch.Generator().manual_seed(seed),
        timesteps=timesteps,
        batch_size=batch_size,
        class_labels=null_labels,
        return_terms=True,
    )
    total = out.bits_per_dim.double()
    return [
        {
            "num_images": len(total),
            "timesteps": f"all {len(out.timesteps)}" if timesteps is None else int(timesteps),
            "bits_per_dim": float(total.mean()),
            "standard_error": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else float("nan"),
            "prior": float(out.prior.mean()),
            "decoder": float(out.decoder.mean()),
            "kl_terms": float((out.terms.double() * out.weights).sum(1).mean()),
            "seconds": round(time.perf_counter() - start, 2),
        }
    ]


def quality_pivot(rows: list[dict], cell: Callable[[dict], Any] | None = None) -> list[dict]:
    """
    Table 1's layout: one row per (spacing, sampler), one column per S (`"S=10"`, ...).

    Args:
        rows (`list[dict]`): from `sample_quality_table`.
        cell (`Callable[[dict], Any]`, *optional*): a row's cell; defaults to its `value`.
    """
    pivot: dict[tuple[str, str], dict] = {}
    for row in rows:
        entry = pivot.setdefault(
            (row["spacing"], row["sampler"]), {"spacing": row["spacing"], "sampler": row["sampler"]}
        )
        entry[f"S={row['steps']}"] = row["value"] if cell is None else cell(row)
    return list(pivot.values())


def solver_scheduler(name: str, config: Mapping[str, Any], timestep_spacing: str = "trailing") -> SchedulerMixin:
    """
    The scheduler of one of the solver table's samplers (`SOLVERS`), for a model trained with `config`.

    Every key of `config` is passed on, so β, T and the prediction type are the model's. (diffusers' `from_config`
    would replace the keys a config holds at its own class's defaults with the new class's defaults:
    `HeunDiscreteScheduler` would then silently sample with its β from 0.00085 to 0.012.) x̂_0 is never clipped
    (`clip_sample=False`, as in `sample_quality_table`), and a learned variance is left to the pipeline to drop.

    Args:
        name (`str`):
            A key of `SOLVERS`, e.g. `"dpmsolver++_2m"`.
        config (`Mapping`):
            The trained pipeline's scheduler config (`pipe.scheduler.config`).
        timestep_spacing (`str`, *optional*, defaults to `"trailing"`):
            Spacing of the diffusers solvers' timesteps; the DDIM rows keep their own ("leading", "quadratic").

    Returns:
        `SchedulerMixin`: a new scheduler; `config` is not changed.
    """
    if name not in SOLVERS:
        raise ValueError(f"`name` must be one of {sorted(SOLVERS)}, got {name!r}.")
    scheduler_class, settings = SOLVERS[name]
    overrides = {"clip_sample": False, "timestep_spacing": timestep_spacing, "variance_type": None, **settings}
    return scheduler_class.from_config({**_every_key(config), **overrides})


def _every_key(config: Mapping[str, Any]) -> dict[str, Any]:
    """`config` without its record of which keys hold defaults, so that `from_config` passes every key on."""
    return {key: value for key, value in config.items() if key != "_use_default_values"}


def _reference_scheduler(config: Mapping[str, Any]) -> DDPMScheduler:
    """DDPM's ancestral sampler over all T steps (DDPM Algorithm 2), unclipped, with the model's variance."""
    return DDPMScheduler.from_config({**_every_key(config), "clip_sample": False, "timestep_spacing": "leading"})


def _steps_within(scheduler: SchedulerMixin, nfe: int, num_train_timesteps: int) -> int | None:
    """The most steps S whose schedule has at most `nfe` timesteps (the pipeline evaluates the network once per
    timestep); `None` if no S does."""
    for steps in range(min(nfe, num_train_timesteps), 0, -1):
        try:
            scheduler.set_timesteps(steps)
        except ValueError:  # e.g. PNDM's warm-up needs S >= 4
            continue
        if len(scheduler.timesteps) <= nfe:
            return steps
    return None


@contextmanager
def _forward_calls(module: torch.nn.Module) -> Iterator[list[int]]:
    """Counts `module`'s forward calls while the context is open (in the yielded list's only item)."""
    calls = [0]

    def count(*_):
        calls[0] += 1

    handle = module.register_forward_hook(count)
    try:
        yield calls
    finally:
        handle.remove()


def _check_nfes(nfes: Sequence[int]) -> list[int]:
    nfes = list(nfes)
    if not nfes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in nfes):
        raise ValueError(f"`nfes` must be positive ints (numbers of network evaluations), got {nfes}.")
    return nfes


def solver_table(
    pipeline,
    *,
    nfes: Sequence[int] = SOLVER_TABLE_NFES,
    samplers: Sequence[str] = SOLVER_TABLE_SAMPLERS,
    num_samples: int = 256,
    batch_size: int = 256,
    seed: int = 0,
    metric: str | Callable[[torch.Tensor], float] = "fdd",
    reference_statistics: Any = None,
    fid_kwargs: dict | None = None,
    timestep_spacing: str = "trailing",
    reference: bool = True,
    progress: bool = True,
) -> list[dict]:
    """
    Sample quality against the number of network evaluations (NFE), for DDIM η = 0 and diffusers' solvers.

    For each sampler and NFE budget N, the sampler runs with the most steps S whose schedule evaluates the network
    at most N times (Heun: 2S − 1; PNDM: S + 9, and S >= 4; the others: S); a budget no S fits has no row. The
    evaluations are counted by a hook on the UNet's forward while sampling, and the count is the row's `nfe`.
    Every cell samples from the same seed (the same x_T); no sampler clips x̂_0. The reference row is DDPM's
    ancestral sampler over all T steps (DDPM Algorithm 2) with the model's variance.

    Args:
        pipeline (`DDPMPipeline`):
            The model; its UNet is shared and its scheduler's config (β, T, prediction type) builds every sampler.
        nfes (`Sequence[int]`, *optional*, defaults to `(5, 10, 20, 50)`):
            NFE budgets.
        samplers (`Sequence[str]`, *optional*, defaults to `SOLVER_TABLE_SAMPLERS`):
            Keys of `SOLVERS`: "ddim_linear", "ddim_quadratic", "dpmsolver++_2m", "unipc", "euler", "heun", "pndm"
            by default; also "dpmsolver++_2s", "euler_ancestral", "lms", "deis".
        num_samples (`int`, *optional*, defaults to 256):
            Samples per cell.
        batch_size (`int`, *optional*, defaults to 256):
            Samples per pipeline call.
        seed (`int`, *optional*, defaults to 0):
            Seed of every cell's generator.
        metric (`str` or `Callable`, *optional*, defaults to `"fdd"`):
            As in [`sample_quality_table`]: `"fdd"` (lower is better, with its bootstrap error, precision and
            recall), `"digits"`, `"fid"`, or a function of the samples (N, C, H, W) in [0, 1] returning a float.
        reference_statistics ([`~hf_ddpm.evaluation.fid.FeatureStatistics`] or `str`, *optional*):
            FID's reference statistics; required for `metric="fid"`.
        fid_kwargs (`dict`, *optional*):
            Passed to [`~hf_ddpm.evaluation.fid.fid`].
        timestep_spacing (`str`, *optional*, defaults to `"trailing"`):
            Spacing of the diffusers solvers (see [`solver_scheduler`]); "trailing" starts at t = T − 1.
        reference (`bool`, *optional*, defaults to `True`):
            Also the DDPM T-step reference row (T network evaluations per sample).
        progress (`bool`, *optional*, defaults to `True`):
            A progress bar over cells.

    Returns:
        `list[dict]`: one row per (sampler, budget) that fits, then the reference: `sampler`, `reference` (bool),
        `nfe_budget` (T for the reference), `steps`, `nfe` (counted per sample), `metric`, `value`, `num_samples`,
        `seconds`, and the metric's extra columns (`std_error`, `precision`, `recall` for FDD).
    """
    from tqdm.auto import tqdm

    nfes = _check_nfes(nfes)
    unknown = [name for name in samplers if name not in SOLVERS]
    if unknown or not samplers:
        raise ValueError(f"`samplers` must be drawn from {sorted(SOLVERS)}, got {list(samplers)}.")
    score = _score_fn(metric, reference_statistics, fid_kwargs)
    config, num_train_timesteps = pipeline.scheduler.config, int(pipeline.scheduler.config.num_train_timesteps)
    schedulers = {name: solver_scheduler(name, config, timestep_spacing) for name in samplers}
    cells = [(name, nfe) for name in samplers for nfe in nfes]
    reference_name = f"ddpm_{num_train_timesteps}"
    if reference:
        schedulers[reference_name] = _reference_scheduler(config)
        cells.append((reference_name, num_train_timesteps))
    rows, measured = [], {}
    for name, budget in tqdm(cells, disable=not progress, desc="solver table"):
        steps = _steps_within(schedulers[name], budget, num_train_timesteps)
        if steps is None:
            continue
        if (name, steps) not in measured:  # budgets above T can give the same schedule
            pipe = DDPMPipeline(unet=pipeline.unet, scheduler=schedulers[name])
            pipe.set_progress_bar_config(disable=True)
            measured[name, steps] = _measure(pipe, steps, num_samples, batch_size, seed, score)
        rows.append(
            {"sampler": name, "reference": name == reference_name, "nfe_budget": budget,
             "steps": steps, "metric": _metric_name(metric), "num_samples": num_samples, **measured[name, steps]}
        )  # fmt: skip
    return rows


def _measure(
    pipe: DDPMPipeline, steps: int, num_samples: int, batch_size: int, seed: int, score: Callable
) -> dict[str, Any]:
    """Sample with S = `steps`, counting the UNet's evaluations per sample, then score the samples."""
    start = time.perf_counter()
    with _forward_calls(pipe.unet) as calls:
        images = _samples(pipe, num_samples, batch_size, seed, steps, eta=0.0, sigma_hat=False)
    num_calls = math.ceil(num_samples / batch_size)  # pipeline calls; each evaluates the whole batch at once
    return {"nfe": calls[0] // num_calls, **score(images), "seconds": round(time.perf_counter() - start, 2)}


def solver_summary(rows: list[dict], *, num_std_errors: float = 2.0, higher_is_better: bool = False) -> list[dict]:
    """
    The fewest network evaluations at which each sampler of `solver_table` reaches the reference's quality.

    A row reaches it when its value is no worse than the reference's by more than `num_std_errors` standard errors of
    the difference, √(se² + se_ref²), the two errors (FDD's bootstrap errors) taken as independent: for FDD,
    value ≤ value_ref + 2 √(se² + se_ref²). Without a `std_error` (FID, the digit proxy, a custom metric) the
    error counts as 0, so the row must match or beat the reference.

    Args:
        rows (`list[dict]`):
            From `solver_table`, with exactly one reference row.
        num_std_errors (`float`, *optional*, defaults to 2.0):
            The tolerance, in standard errors of the difference.
        higher_is_better (`bool`, *optional*, defaults to `False`):
            `True` for metrics where higher is better (the digit proxy); FDD and FID are lower-is-better.

    Returns:
        `list[dict]`: one row per sampler, in first-seen order: `sampler`, `fewest_nfe` (`None` if no row reaches
        the reference), `steps`, `value`, `std_error` (of that row), `allowed_gap` (num_std_errors · √(se² + se_ref²)),
        `reference`, `reference_nfe`, `reference_value`, `reference_std_error`.
    """
    references = [row for row in rows if row["reference"]]
    if len(references) != 1:
        raise ValueError(
            f"`rows` must hold exactly one reference row (solver_table(reference=True)), got {len(references)}."
        )
    ref = references[0]
    sign = -1.0 if higher_is_better else 1.0  # the gap is "how much worse than the reference"
    summary = {}
    for row in sorted((r for r in rows if not r["reference"]), key=lambda r: r["nfe"]):
        entry = summary.setdefault(row["sampler"], {"sampler": row["sampler"], "fewest_nfe": None})
        allowed = num_std_errors * math.hypot(row.get("std_error") or 0.0, ref.get("std_error") or 0.0)
        if entry["fewest_nfe"] is None and sign * (row["value"] - ref["value"]) <= allowed:
            entry.update(fewest_nfe=row["nfe"], steps=row["steps"], value=row["value"],
                         std_error=row.get("std_error"), allowed_gap=allowed)  # fmt: skip
    first_seen = dict.fromkeys(row["sampler"] for row in rows if not row["reference"])
    ref_columns = {"reference": ref["sampler"], "reference_nfe": ref["nfe"], "reference_value": ref["value"],
                   "reference_std_error": ref.get("std_error")}  # fmt: skip
    empty = dict.fromkeys(("steps", "value", "std_error", "allowed_gap"))
    return [{"sampler": name, "fewest_nfe": None, **empty, **summary[name], **ref_columns} for name in first_seen]


def solver_pivot(rows: list[dict], cell: Callable[[dict], Any] | None = None) -> list[dict]:
    """
    The solver table's layout: one row per sampler, one column per NFE budget (`"NFE ≤ 10"`, ...), and the counted
    evaluations of its cells (`"NFE used"`).

    Args:
        rows (`list[dict]`): from `solver_table`.
        cell (`Callable[[dict], Any]`, *optional*): a row's cell; defaults to its `value`.
    """
    columns = {budget: f"NFE ≤ {budget}" for budget in sorted({row["nfe_budget"] for row in rows})}
    pivot: dict[str, dict] = {}
    for row in rows:
        entry = pivot.setdefault(row["sampler"], {"sampler": row["sampler"], **dict.fromkeys(columns.values())})
        entry[columns[row["nfe_budget"]]] = row["value"] if cell is None else cell(row)
        entry["NFE used"] = f"{entry['NFE used']}, {row['nfe']}" if "NFE used" in entry else str(row["nfe"])
    return list(pivot.values())


def _check_guidance_arguments(pipeline, scales: Sequence[float], samples_per_class: int, metric: str) -> list[float]:
    if pipeline.num_classes is None:
        raise ValueError(
            "guidance_table needs a class-conditional pipeline (a UNet with num_class_embeds); this one is "
            "unconditional."
        )
    if pipeline.num_classes != 10:
        raise ValueError(
            f"guidance_table scores digits: class c must be digit c, 10 classes, got {pipeline.num_classes}."
        )
    scales = [float(s) for s in scales]
    if not scales or any(not math.isfinite(s) or s < 0 for s in scales):
        raise ValueError(f"`scales` must be finite guidance scales >= 0, got {scales}.")
    if isinstance(samples_per_class, bool) or not isinstance(samples_per_class, int) or samples_per_class < 4:
        raise ValueError(
            f"`samples_per_class` must be an int >= 4 (precision and recall need more than k = 3), got "
            f"{samples_per_class!r}."
        )
    if metric not in GUIDANCE_METRICS:
        raise ValueError(f"`metric` must be one of {GUIDANCE_METRICS}, got {metric!r}.")
    return scales


def _model_kind(scale: float) -> str:
    return {0.0: "unconditional ε(x, ∅)", 1.0: "conditional ε(x, c)"}.get(scale, "guided")


def _class_feature_metrics(images: torch.Tensor, labels: torch.Tensor, num_bootstrap: int, feature_space) -> dict:
    """FDD, precision and recall of each class's samples against the real digits of that class, averaged over the
    classes (the FDD error of the mean of independent terms: √Σ se² / K), and FDD of all samples against all digits."""
    from hf_ddpm.evaluation.digit_features import digit_feature_metrics

    x = images * 2 - 1  # the model's space, [-1, 1]
    kwargs = {"feature_space": feature_space, "num_bootstrap": num_bootstrap}
    per_class = [digit_feature_metrics(x[labels == c], reference_class=c, **kwargs) for c in labels.unique().tolist()]
    overall = digit_feature_metrics(x, **kwargs)
    return {
        "fdd_per_class": sum(m.fdd for m in per_class) / len(per_class),
        "fdd_per_class_std_error": math.sqrt(sum(m.fdd_std_error**2 for m in per_class)) / len(per_class),
        "precision": sum(m.precision for m in per_class) / len(per_class),
        "recall": sum(m.recall for m in per_class) / len(per_class),
        "fdd": overall.fdd,
        "fdd_std_error": overall.fdd_std_error,
    }


def guidance_table(
    pipeline,
    *,
    scales: Sequence[float] = GUIDANCE_SCALES,
    samples_per_class: int = 20,
    num_inference_steps: int = 50,
    metric: str = "fdd",
    seed: int = 0,
    batch_size: int = 256,
    num_bootstrap: int = 100,
    clip_sample: bool | None = False,
    feature_space: Any = None,
    classifier: Any = None,
    progress: bool = True,
) -> list[dict]:
    """
    The trade-off of classifier-free guidance (Ho & Salimans 2022) for a class-conditional digit model: for each
    guidance scale s (ε̃ = ε(x, ∅) + s (ε(x, c) − ε(x, ∅)), s = 1 + w), `samples_per_class` samples of each digit,
    scored by class accuracy and by per-class fidelity (precision, FDD) and diversity (recall).

    Every scale samples from the same x_T with DDIM (η = 0, linear spacing), so rows differ only by s. At s = 0 the
    model is unconditional: its accuracy against the requested labels is a floor (≈ 10 %), its confident share the
    comparable figure. Class c of the model is digit c.

    Args:
        pipeline (`DDPMPipeline`):
            A class-conditional model of the 10 digits (`num_classes == 10`); its UNet is shared and its scheduler's
            config (β, T) is used for a DDIM scheduler.
        scales (`Sequence[float]`, *optional*, defaults to `(0, 1, 1.5, 2, 3, 5)`):
            The guidance scales s ≥ 0.
        samples_per_class (`int`, *optional*, defaults to 20):
            Samples of each digit per scale, ≥ 4.
        num_inference_steps (`int`, *optional*, defaults to 50):
            DDIM steps S.
        metric (`str`, *optional*, defaults to `"fdd"`):
            `"fdd"`: class accuracy, and FDD, precision and recall of each class's samples against the real digits
            of that class (`hf_ddpm.evaluation.digit_features`, `reference_class`), averaged over classes, with FDD
            of all samples against all real digits; `"digits"`: class accuracy only.
        seed (`int`, *optional*, defaults to 0):
            Seed of every scale's generator.
        batch_size (`int`, *optional*, defaults to 256):
            Samples per pipeline call (a guided call runs the UNet on twice as many).
        num_bootstrap (`int`, *optional*, defaults to 100):
            Resamples of FDD's standard error; 0 skips it (nan).
        clip_sample (`bool`, *optional*, defaults to `False`):
            Clip x̂_0 at each step, as in `sample_quality_table`; `None` keeps the pipeline's scheduler config.
        feature_space ([`~hf_ddpm.evaluation.digit_features.DigitFeatureSpace`], *optional*):
            Defaults to the one of the model's resolution.
        classifier ([`~hf_ddpm.evaluation.digits.DigitClassifier`], *optional*):
            Defaults to the one of the model's resolution.
        progress (`bool`, *optional*, defaults to `True`):
            A progress bar over scales.

    Returns:
        `list[dict]`: one row per s: `guidance_scale`, `w` (= s − 1, the paper's), `model` (unconditional,
        conditional or guided), `class_accuracy` and `confident_share`
        ([`~hf_ddpm.evaluation.digits.class_accuracy`]), `num_samples`, `seconds`; with `metric="fdd"` also
        `fdd_per_class` ± `fdd_per_class_std_error`, `precision`, `recall` (means over classes) and `fdd` ±
        `fdd_std_error` (all samples against all real digits).
    """
    from tqdm.auto import tqdm

    from hf_ddpm.evaluation.digits import class_accuracy

    scales = _check_guidance_arguments(pipeline, scales, samples_per_class, metric)
    overrides = {} if clip_sample is None else {"clip_sample": clip_sample}
    pipe = _ddim_pipeline(pipeline, "linear", **overrides)
    labels = torch.arange(10).repeat_interleave(samples_per_class)
    rows = []
    for scale in tqdm(scales, disable=not progress, desc="guidance scales"):
        start = time.perf_counter()
        images = _samples(pipe, len(labels), batch_size, seed, num_inference_steps, 0.0, False, labels, scale)
        accuracy = class_accuracy(images * 2 - 1, labels, classifier=classifier)
        row = {"guidance_scale": scale, "w": scale - 1, "model": _model_kind(scale)}
        row |= {"class_accuracy": accuracy["accuracy"], "confident_share": accuracy["confident_share"]}
        if metric == "fdd":
            row |= _class_feature_metrics(images, labels, num_bootstrap, feature_space)
        rows.append({**row, "num_samples": len(labels), "seconds": round(time.perf_counter() - start, 2)})
    return rows
