"""What the steps of a training run share (`TrainingRun`), and the run's flags as it resolves and records them."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training.args import CONDITIONING_FLAGS, NO_EFFECT_FLAGS
from hf_ddpm.training.ema import EMAModel

__all__ = ["TrainingRun", "hparams", "run_record", "use_channels_last", "use_random_flip"]


def use_channels_last(args: argparse.Namespace, mixed_precision: str, device: torch.device) -> bool:
    """
    `--channels_last`, or by default NHWC where it was measured faster (`benchmarks/README.md`): on the CPU, where
    oneDNN convolves NHWC without reordering to its blocked layout, and under bf16/fp16 autocast; NCHW for fp32 on
    other devices, where it was not measured.
    """
    if args.channels_last is not None:
        return args.channels_last
    return device.type == "cpu" or mixed_precision in ("bf16", "fp16")


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
    def memory_format(self) -> torch.memory_format:
        """The UNet's layout in this run: NHWC (`torch.channels_last`) or NCHW, as `use_channels_last` decides."""
        if use_channels_last(self.args, self.accelerator.mixed_precision, self.accelerator.device):
            return torch.channels_last
        return torch.contiguous_format

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def total_batch_size(self) -> int:
        return self.args.train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps


def hparams(run: TrainingRun) -> dict:
    """The flags as this run resolved them (defaults that depend on the data or the launcher included), for the
    tracker and the model card."""
    args = run.args
    settings = {
        **vars(args),
        "random_flip": use_random_flip(args),
        "mixed_precision": run.accelerator.mixed_precision,
        "channels_last": run.memory_format == torch.channels_last,
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


def run_record(args: argparse.Namespace, num_processes: int) -> dict[str, Any]:
    # What a checkpoint stores of its run (training_args.json); a token never goes to disk.
    left_out = {"hub_token", *(() if args.class_conditional else CONDITIONING_FLAGS)}
    return {**{k: v for k, v in vars(args).items() if k not in left_out}, "num_processes": num_processes}
