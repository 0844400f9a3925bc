"""Training checkpoints: Accelerate's `save_state`/`load_state`, made atomic, pruned, and resumable by name.

A checkpoint is the folder `output_dir/checkpoint-<step>` holding Accelerate's state (optimizer, LR schedule, RNG,
GradScaler) plus, through save/load hooks, the UNet in `unet/` and the EMA UNet in `unet_ema/`, both written with
`save_pretrained` (safetensors), and the run's flags in `training_args.json`. It is written to
`checkpoint-<step>.tmp` and renamed when complete, so a crash mid-save never leaves a folder that looks like a
checkpoint.

A resumed run is the saved run continued: the flags that define it (`RESUME_FIXED_FLAGS`: data, model, diffusion,
class conditioning, batch geometry, seed) must match the saved ones, and every other flag (learning rate and its
schedule, number of steps, cadences, ...) is the new run's to choose (`resume_flag_changes`).
"""

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from diffusers.utils import logging as diffusers_logging

__all__ = [
    "RESUME_FIXED_FLAGS",
    "TRAINING_ARGS_NAME",
    "checkpoint_step",
    "list_checkpoints",
    "match_state_layouts",
    "prune_checkpoints",
    "read_training_args",
    "register_checkpoint_hooks",
    "remove_incomplete_checkpoints",
    "resolve_checkpoint",
    "resume_flag_changes",
    "save_checkpoint",
]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_SUFFIX = ".tmp"
_OLD_SUFFIX = ".old"
TRAINING_ARGS_NAME = "training_args.json"
UNET_FOLDER = "unet"
EMA_FOLDER = "unet_ema"

# What a checkpoint's training state means depends on these: the data and its augmentation, the diffusion process
# and loss (a class-conditional run's labels and p_uncond included), the seed (every draw is a function of it), and the batch geometry `train_batch_size × num_processes ×
# gradient_accumulation_steps` (compared as a product: the same images per optimizer step may be split otherwise).
# The UNet's config is compared field by field from `unet/config.json` instead of through `--model_config`.
RESUME_FIXED_FLAGS = (
    "dataset_name",
    "dataset_config_name",
    "train_data_dir",
    "resolution",
    "center_crop",
    "random_flip",
    "seed",
    "prediction_type",
    "variance_type",
    "loss_type",
    "num_train_timesteps",
    "beta_schedule",
    "use_ema",
    "class_conditional",
    "label_column",
    "class_dropout_prob",
)
# Flags that name the run's files or how it was started rather than what it trains.
_RESUME_IGNORED_FLAGS = ("model_config", "resume_from_checkpoint", "overwrite_output_dir", "output_dir", "hub_token")


def checkpoint_step(path: str | os.PathLike) -> int:
    """
    The optimizer step a checkpoint folder was saved at, read from its name `checkpoint-<step>`.

    Args:
        path (`str` or `os.PathLike`):
            A checkpoint folder.

    Returns:
        `int`: the step.
    """
    match = _CHECKPOINT_RE.match(Path(path).name)
    if match is None:
        raise ValueError(f"A checkpoint folder must be named 'checkpoint-<step>', got {str(path)!r}.")
    return int(match.group(1))


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """
    The complete checkpoints in `output_dir`, oldest first (incomplete `*.tmp` folders are not listed).

    Args:
        output_dir (`str` or `os.PathLike`):
            The training output folder; it need not exist.

    Returns:
        `list[Path]`: checkpoint folders sorted by step.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found = [p for p in output_dir.iterdir() if p.is_dir() and _CHECKPOINT_RE.match(p.name)]
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(output_dir: str | os.PathLike, resume_from_checkpoint: str | None) -> Path | None:
    """
    The checkpoint folder `--resume_from_checkpoint` names.

    Args:
        output_dir (`str` or `os.PathLike`):
            The training output folder, searched for `"latest"`.
        resume_from_checkpoint (`str`, *optional*):
            `None` (no resume), `"latest"` (the newest checkpoint in `output_dir`, `None` when there is none), or a
            checkpoint folder's path (a bare `checkpoint-<step>` name is looked up in `output_dir`).

    Returns:
        `Path` or `None`: the folder to load, or `None` for a fresh start.
    """
    if resume_from_checkpoint is None:
        return None
    if resume_from_checkpoint == "latest":
        checkpoints = list_checkpoints(output_dir)
        return checkpoints[-1] if checkpoints else None
    path = Path(resume_from_checkpoint)
    if not path.is_dir() and (Path(output_dir) / path).is_dir():
        path = Path(output_dir) / path
    if not path.is_dir():
        raise ValueError(
            f"--resume_from_checkpoint must be 'latest' or an existing checkpoint folder, got "
            f"{resume_from_checkpoint!r} (no such folder, nor in {str(output_dir)!r})."
        )
    checkpoint_step(path)  # validates the name: the step counter is restored from it
    return path


def prune_checkpoints(output_dir: str | os.PathLike, total_limit: int | None) -> list[Path]:
    """
    Delete the oldest checkpoints so that at most `total_limit` remain.

    Args:
        output_dir (`str` or `os.PathLike`):
            The training output folder.
        total_limit (`int`, *optional*):
            How many checkpoints to keep; `None` keeps all.

    Returns:
        `list[Path]`: the deleted folders.
    """
    if total_limit is None:
        return []
    checkpoints = list_checkpoints(output_dir)
    removed = checkpoints[: max(0, len(checkpoints) - total_limit)]
    for path in removed:
        shutil.rmtree(path)
    return removed


def remove_incomplete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """
    Clean up after a save that was interrupted: delete `checkpoint-<step>.tmp` folders, and finish the swap of a
    re-saved step (`checkpoint-<step>.old`, the replaced checkpoint, is deleted once its replacement is in place,
    and put back if the interruption came before).

    Args:
        output_dir (`str` or `os.PathLike`):
            The training output folder.

    Returns:
        `list[Path]`: the deleted folders.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    removed = []
    for path in sorted(output_dir.glob(f"checkpoint-*{_OLD_SUFFIX}")):
        final = path.with_name(path.name.removesuffix(_OLD_SUFFIX))
        if final.exists():
            shutil.rmtree(path)
            removed.append(path)
        else:
            os.replace(path, final)
    for path in sorted(output_dir.glob(f"checkpoint-*{_TMP_SUFFIX}")):
        shutil.rmtree(path)
        removed.append(path)
    return removed


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    total_limit: int | None = None,
    training_args: dict[str, Any] | None = None,
) -> Path:
    """
    Save the training state atomically as `output_dir/checkpoint-<step>`, then prune the oldest checkpoints.

    Every process must call this (Accelerate's `save_state` writes each process's RNG state); only the main
    process renames and prunes.

    Args:
        accelerator (`accelerate.Accelerator`):
            The accelerator holding the prepared model, optimizer, LR scheduler and data loader, with the hooks of
            `register_checkpoint_hooks` registered.
        output_dir (`str` or `os.PathLike`):
            The training output folder.
        step (`int`):
            The optimizer step just completed.
        total_limit (`int`, *optional*, defaults to `None`):
            Keep at most this many checkpoints; `None` keeps all.
        training_args (`dict`, *optional*, defaults to `None`):
            The run's flags (JSON-serialisable), written to `training_args.json` inside the checkpoint, so that a
            resumed run can be compared with the saved one.

    Returns:
        `Path`: the checkpoint folder.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + _TMP_SUFFIX)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process and training_args is not None:
        (tmp / TRAINING_ARGS_NAME).write_text(json.dumps(training_args, indent=2, sort_keys=True) + "\n")
    accelerator.wait_for_everyone()  # every rank's files are in tmp before it becomes visible
    if accelerator.is_main_process:
        if final.exists():
            # Re-reaching a step after resuming from an older checkpoint: the new state replaces the old one, which
            # is only deleted once the new one is in place (`remove_incomplete_checkpoints` finishes an
            # interrupted swap).
            old = final.with_name(final.name + _OLD_SUFFIX)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


def read_training_args(checkpoint: str | os.PathLike) -> dict[str, Any] | None:
    """
    The flags a checkpoint was saved with (its `training_args.json`), or `None` for a checkpoint without them.

    Args:
        checkpoint (`str` or `os.PathLike`):
            A checkpoint folder.

    Returns:
        `dict` or `None`: flag name → value, plus `num_processes`.
    """
    path = Path(checkpoint) / TRAINING_ARGS_NAME
    return json.loads(path.read_text()) if path.is_file() else None


def resume_flag_changes(saved: dict[str, Any], current: dict[str, Any]) -> tuple[dict, dict]:
    """
    Compare the flags of a resumed run with those its checkpoint was saved with.

    Args:
        saved (`dict`):
            The checkpoint's flags (`read_training_args`), with `num_processes`.
        current (`dict`):
            The resumed run's flags, with `num_processes`.

    Returns:
        `tuple[dict, dict]`: `(applied, refused)`, each flag name → `(saved value, current value)`: `refused` holds
        the changed `RESUME_FIXED_FLAGS` and, as `"train_batch_size × num_processes × gradient_accumulation_steps"`,
        a changed number of images per optimizer step; `applied` every other changed flag.
    """
    applied, refused = {}, {}
    for name in sorted(set(saved) | set(current)):
        if name in _RESUME_IGNORED_FLAGS or name in _BATCH_GEOMETRY or saved.get(name) == current.get(name):
            continue
        (refused if name in RESUME_FIXED_FLAGS else applied)[name] = (saved.get(name), current.get(name))
    if _images_per_step(saved) != _images_per_step(current):
        refused[" × ".join(_BATCH_GEOMETRY)] = (_batch_geometry(saved), _batch_geometry(current))
    return applied, refused


_BATCH_GEOMETRY = ("train_batch_size", "num_processes", "gradient_accumulation_steps")


def _images_per_step(flags: dict[str, Any]) -> int | None:
    values = [flags.get(name) for name in _BATCH_GEOMETRY]
    return None if None in values else values[0] * values[1] * values[2]


def _batch_geometry(flags: dict[str, Any]) -> str:
    return f"{' × '.join(str(flags.get(name)) for name in _BATCH_GEOMETRY)} = {_images_per_step(flags)}"


def match_state_layouts(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ema_model: EMAModel | None) -> None:
    """
    Give each optimizer state tensor and EMA weight its parameter's memory layout (NCHW or NHWC), after a resume.

    A checkpoint keeps the strides it was saved with, so a run saved in one layout and resumed in the other (NHWC
    became the CPU default; `--channels_last` may be switched) would pair NCHW Adam moments with NHWC weights. Torch's
    fused AdamW pairs elements by memory position, not by index: it would apply each moment to another weight.

    Args:
        model (`torch.nn.Module`):
            The (unwrapped) UNet, in the layout the run trains in.
        optimizer (`torch.optim.Optimizer`):
            Its optimizer (or Accelerate's wrapper of it), state loaded.
        ema_model (`EMAModel`, *optional*):
            The EMA of `model`'s parameters, weights loaded.
    """
    optimizer = getattr(optimizer, "optimizer", optimizer)  # Accelerate's AcceleratedOptimizer wraps the torch one
    for param, state in optimizer.state.items():
        for key, value in state.items():
            state[key] = _in_layout_of(param, value)
    if ema_model is not None:
        ema_model.shadow_params = [
            _in_layout_of(p, s) for s, p in zip(ema_model.shadow_params, model.parameters(), strict=True)
        ]


def _in_layout_of(param: torch.Tensor, value: Any) -> Any:
    """`value` copied into `param`'s strides when it is a tensor of `param`'s shape laid out otherwise, else itself."""
    if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
        return torch.empty_like(param, dtype=value.dtype).copy_(value)
    return value


def register_checkpoint_hooks(accelerator: Accelerator, model_cls: type, ema_model: EMAModel | None = None) -> None:
    """
    Make `accelerator.save_state`/`load_state` store the UNet and the EMA UNet with `save_pretrained` (safetensors).

    The UNet goes to `<checkpoint>/unet` and the EMA weights (with the EMA's step counter and warm-up settings in
    the config) to `<checkpoint>/unet_ema`, so either loads with `from_pretrained` on its own.

    Args:
        accelerator (`accelerate.Accelerator`):
            The accelerator; register before `accelerator.prepare`.
        model_cls (`type`):
            The UNet class (a diffusers `ModelMixin`) used to load the weights back.
        ema_model (`diffusers.training_utils.EMAModel`, *optional*, defaults to `None`):
            The EMA of the UNet's weights, saved and restored with every checkpoint.
    """

    def save_model_hook(models, weights, output_dir):
        if accelerator.is_main_process:
            if ema_model is not None:
                ema_model.save_pretrained(os.path.join(output_dir, EMA_FOLDER))
            for model in models:
                accelerator.unwrap_model(model).save_pretrained(os.path.join(output_dir, UNET_FOLDER))
        # Emptying `weights` stops Accelerate from writing a second, pickled copy of the same tensors.
        weights.clear()

    def load_model_hook(models, input_dir):
        if ema_model is not None:
            # The EMA's own settings ride in the saved config; diffusers warns that the UNet ignores them, which is
            # expected here, so that one warning is silenced.
            verbosity = diffusers_logging.get_verbosity()
            diffusers_logging.set_verbosity_error()
            try:
                loaded = EMAModel.from_pretrained(os.path.join(input_dir, EMA_FOLDER), model_cls)
            finally:
                diffusers_logging.set_verbosity(verbosity)
            ema_model.load_state_dict(loaded.state_dict())
            ema_model.to(accelerator.device)  # load_state_dict adopts the loaded (CPU) tensors
            del loaded
        while models:
            model = accelerator.unwrap_model(models.pop())
            loaded = model_cls.from_pretrained(input_dir, subfolder=UNET_FOLDER)
            model.load_state_dict(loaded.state_dict())
            del loaded

    accelerator.register_save_state_pre_hook(save_model_hook)
    accelerator.register_load_state_pre_hook(load_model_hook)
