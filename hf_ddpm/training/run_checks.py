"""The checks before a training run starts: the flags and model, the output folder, what a resume may change, and
that the sample grids can be drawn; each refuses with the flag, its value and what is allowed."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from accelerate import Accelerator

from hf_ddpm.data import check_resolution
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.guidance import check_guidance_scale
from hf_ddpm.training.args import TRAIN_UNCONDITIONAL_DEFAULTS
from hf_ddpm.training.checkpoint import (
    UNET_FOLDER,
    list_checkpoints,
    read_training_args,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    resume_flag_changes,
)
from hf_ddpm.training.run import TrainingRun, hparams, run_record
from hf_ddpm.training.saving import grid_scheduler
from hf_ddpm.training.unet import build_unet, load_unet_config

__all__ = [
    "announce_settings",
    "check_model",
    "check_model_config_file",
    "check_resume",
    "check_resumed_classes",
    "check_sample_grids",
    "prepare_output_dir",
]


def check_model_config_file(args: argparse.Namespace) -> None:
    """Read a `--model_config` JSON file before any work, so a malformed one is refused before the output folder
    is touched (presets and Hub ids are resolved when the UNet is built)."""
    if os.path.isfile(args.model_config):
        load_unet_config(args.model_config)


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
    _, refused = resume_flag_changes(saved, run_record(args, num_processes))
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


def check_sample_grids(run: TrainingRun) -> None:
    """
    Fail now, on every process, if the sample grids cannot be drawn (every run ends with one): the grid sampler owns
    the bounds on its settings (e.g. `--num_inference_steps` ≤ T, a finite `--guidance_scale`), so it is asked,
    rather than a grid failing hours into training on the main process alone.
    """
    grid_scheduler(run.noise_scheduler).set_timesteps(run.args.num_inference_steps)
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
    settings = hparams(run)
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
