"""Training checkpoints: Accelerate's `save_state`/`load_state`, made atomic, pruned, and resumable by name.

A checkpoint is the folder `output_dir/checkpoint-<step>` holding Accelerate's state (optimizer, LR schedule, RNG,
GradScaler) plus, through save/load hooks, the UNet in `unet/` and the EMA UNet in `unet_ema/`, both written with
`save_pretrained` (safetensors). It is written to `checkpoint-<step>.tmp` and renamed when complete, so a crash
mid-save never leaves a folder that looks like a checkpoint.
"""

import os
import re
import shutil
from pathlib import Path

from accelerate import Accelerator
from diffusers.training_utils import EMAModel
from diffusers.utils import logging as diffusers_logging

__all__ = [
    "checkpoint_step",
    "list_checkpoints",
    "prune_checkpoints",
    "register_checkpoint_hooks",
    "remove_incomplete_checkpoints",
    "resolve_checkpoint",
    "save_checkpoint",
]

_CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
_TMP_SUFFIX = ".tmp"
UNET_FOLDER = "unet"
EMA_FOLDER = "unet_ema"


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
    Delete `checkpoint-<step>.tmp` folders left by a save that was interrupted.

    Args:
        output_dir (`str` or `os.PathLike`):
            The training output folder.

    Returns:
        `list[Path]`: the deleted folders.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    stale = [p for p in output_dir.iterdir() if p.name.endswith(_TMP_SUFFIX) and p.name.startswith("checkpoint-")]
    for path in stale:
        shutil.rmtree(path)
    return stale


def save_checkpoint(
    accelerator: Accelerator, output_dir: str | os.PathLike, step: int, total_limit: int | None = None
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

    Returns:
        `Path`: the checkpoint folder.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = final.with_name(final.name + _TMP_SUFFIX)
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()  # every rank's files are in tmp before it becomes visible
    if accelerator.is_main_process:
        if final.exists():
            # Re-reaching a step after resuming from an older checkpoint: the new state replaces the old one, which
            # is only deleted once the new one is in place.
            old = final.with_name(final.name + ".old")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old)
        else:
            os.replace(tmp, final)
        prune_checkpoints(output_dir, total_limit)
    accelerator.wait_for_everyone()
    return final


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
