"""What a training run saves besides checkpoints: sample grids from the EMA weights, and the pipeline with its model
card, replaced atomically at each save and pushed with `--push_to_hub`."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from diffusers.utils import make_image_grid
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.model_card import write_model_card
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training.run import TrainingRun, hparams

__all__ = [
    "GRID_MAX_CLASSES",
    "PIPELINE_REPLACED",
    "PIPELINE_STAGING",
    "grid_layout",
    "grid_scheduler",
    "maybe_save_pipeline",
    "maybe_save_sample_grid",
    "sample_grid",
    "save_and_push",
    "save_pipeline",
    "save_pipeline_atomically",
    "save_sample_grid",
]

# Inside --output_dir: where a pipeline save is written before it replaces the previous one, and where the previous
# one's files wait until the swap is done.
PIPELINE_STAGING = ".pipeline-staging"
PIPELINE_REPLACED = ".pipeline-replaced"
# A class-conditional grid shows one row per class, for at most this many classes.
GRID_MAX_CLASSES = 10


def grid_scheduler(noise_scheduler: DDPMScheduler) -> DDIMScheduler:
    # DDIM (η = 0) for quick grids; the pipeline passes DDIM only a learned variance's prediction half.
    return DDIMScheduler.from_config(noise_scheduler.config)


@contextlib.contextmanager
def _ema_weights(run: TrainingRun) -> Iterator[torch.nn.Module]:
    """The unwrapped UNet holding the EMA weights (what the paper samples from) inside the block, its trained
    weights and memory layout again after it."""
    unet = run.accelerator.unwrap_model(run.unet)
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
        unet.to(memory_format=run.memory_format)


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
        pipeline = DDPMPipeline(unet=unet, scheduler=grid_scheduler(run.noise_scheduler), id2label=run.id2label)
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
    write_model_card(staging, pipeline, describes=output_dir, **card_options)
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
        **hparams(run),
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
