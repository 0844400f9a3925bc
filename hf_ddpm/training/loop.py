"""The DDPM training loop (Ho et al. 2020, Algorithm 1) on Accelerate, read top to bottom.

One process, several processes or GPUs, mixed precision and gradient accumulation all go through Accelerate;
only the main process writes checkpoints' weights, logs, sample grids and the final pipeline.

Exact resume. Everything random is a function of positions, not of history:
- the data order of epoch e is the permutation Accelerate's seedable sampler draws from `seed + e`, and a resumed
  run skips the batches of the epoch it already saw (`skip_first_batches`);
- each image's augmentation (crop, flip) is drawn from a generator seeded by (seed, epoch, index)
  (`hf_ddpm.data.AugmentedImages`);
- each micro-batch's timesteps t, noise ε and dropout masks come from the global RNG reseeded by
  (seed, process, epoch, batch index), so they do not depend on what ran before in this process;
- the UNet, EMA, optimizer, LR schedule and GradScaler come back from the checkpoint, and the step counter from
  the checkpoint's name.
So stopping after step k and resuming gives the same weights, bit for bit, as never stopping.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from PIL import Image
from tqdm.auto import tqdm

from hf_ddpm.data import AugmentedImages, check_resolution, load_image_dataset, make_transform, seed_from
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.model_card import write_model_card
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES, DDPMScheduler
from hf_ddpm.training.args import validate_args
from hf_ddpm.training.checkpoint import (
    checkpoint_step,
    list_checkpoints,
    register_checkpoint_hooks,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
    save_checkpoint,
)
from hf_ddpm.training.ema import EMAModel
from hf_ddpm.training.loss import diffusion_loss
from hf_ddpm.training.optimizer import adamw

__all__ = ["build_unet", "train", "use_channels_last", "use_random_flip"]

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


def build_unet(model_config: str, resolution: int, variance_type: str = "fixed_small") -> DDPMUNet2DModel:
    """
    A freshly initialised UNet from a preset name or a config JSON, sized for the training images.

    Args:
        model_config (`str`):
            A `DDPMUNet2DModel.presets()` name, or the path of a UNet config JSON (UNet2DModel's field names).
        resolution (`int`):
            The training resolution; becomes `sample_size`.
        variance_type (`str`, *optional*, defaults to `"fixed_small"`):
            The scheduler's variance type; a learned one doubles `out_channels` (prediction, then variance values).

    Returns:
        `DDPMUNet2DModel`: the model.
    """
    presets = DDPMUNet2DModel.presets()
    if model_config in presets:
        config = presets[model_config]
    elif os.path.isfile(model_config):
        with open(model_config, encoding="utf-8") as f:
            config = json.load(f)
        config = {k: v for k, v in config.items() if not k.startswith("_")}
    else:
        raise ValueError(
            f"--model_config must be a preset name (one of {sorted(presets)}) or an existing JSON file, "
            f"got {model_config!r}."
        )
    in_channels = config.get("in_channels", 3)
    config["sample_size"] = resolution
    config["out_channels"] = 2 * in_channels if variance_type in LEARNED_VARIANCE_TYPES else in_channels
    return DDPMUNet2DModel.from_config(config)


def _hparams(args: argparse.Namespace) -> dict:
    # TensorBoard's hparams take scalars and strings only; a token never goes to a tracker.
    return {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool)) and k != "hub_token"}


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

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def total_batch_size(self) -> int:
        return self.args.train_batch_size * self.accelerator.num_processes * self.args.gradient_accumulation_steps


def make_accelerator(args: argparse.Namespace) -> Accelerator:
    """The run's `Accelerator`: processes, mixed precision, gradient accumulation, tracker and seeded data order."""
    output_dir = Path(args.output_dir)
    return Accelerator(
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=None if args.logger == "none" else args.logger,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / args.logging_dir)
        ),
        # Epoch e's permutation is drawn from seed + e, the same on every process (Accelerate shards it).
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=args.seed),
    )


def prepare_output_dir(accelerator: Accelerator, args: argparse.Namespace) -> None:
    """Create `--output_dir`, refusing to silently mix a new run into an old run's checkpoints."""
    output_dir = Path(args.output_dir)
    if list_checkpoints(output_dir) and args.resume_from_checkpoint is None and not args.overwrite_output_dir:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} already holds checkpoints "
            f"({', '.join(p.name for p in list_checkpoints(output_dir))}); pass --resume_from_checkpoint "
            f"latest to continue that run or --overwrite_output_dir to start afresh."
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


def build_components(
    accelerator: Accelerator, args: argparse.Namespace
) -> tuple[DDPMUNet2DModel, DDPMScheduler, EMAModel | None]:
    """The UNet (seeded, so every process and run starts from the same weights), the noise scheduler and the EMA."""
    set_seed(args.seed)
    unet = build_unet(args.model_config, args.resolution, args.variance_type)
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
    accelerator: Accelerator, args: argparse.Namespace, unet: DDPMUNet2DModel, dataset=None
) -> torch.utils.data.DataLoader:
    """The prepared loader of this process's share of each epoch, from `dataset` or the flags' data source."""
    check_resolution(args.resolution, unet.num_downsamplings)
    if dataset is None:
        with accelerator.main_process_first():  # the main process downloads/prepares, the others read its cache
            dataset = load_image_dataset(
                args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir, seed=args.seed
            )
    transform = make_transform(
        args.resolution, unet.config.in_channels, center_crop=args.center_crop, random_flip=use_random_flip(args)
    )
    dataloader = torch.utils.data.DataLoader(
        AugmentedImages(dataset, transform, seed=args.seed),
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
    # A prepared LR scheduler steps once per process at each optimizer step, hence the factor: the flags count
    # optimizer steps.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    return optimizer, lr_scheduler


def resume(run: TrainingRun) -> None:
    """Load `--resume_from_checkpoint` (weights, EMA, optimizer, LR schedule, RNG) and its step, if there is one."""
    checkpoint = resolve_checkpoint(run.output_dir, run.args.resume_from_checkpoint)
    if checkpoint is not None:
        run.accelerator.print(f"Resuming from {checkpoint}")
        run.accelerator.load_state(str(checkpoint))
        run.global_step = checkpoint_step(checkpoint)
    elif run.args.resume_from_checkpoint is not None:
        run.accelerator.print(f"No checkpoint in {str(run.output_dir)!r}; starting a new run.")
    run.last_checkpoint = checkpoint


def check_sample_grids(run: TrainingRun) -> None:
    """
    Fail now, on every process, if a sample grid this run will draw cannot be drawn: the grid sampler owns the
    bounds on its settings (e.g. `--num_inference_steps` ≤ T), so it is asked, rather than the first grid failing
    hours into training on the main process alone.
    """
    save_images_steps = run.args.save_images_steps
    if run.max_train_steps // save_images_steps > run.global_step // save_images_steps:
        _grid_scheduler(run.noise_scheduler).set_timesteps(run.args.num_inference_steps)


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


def epoch_batches(run: TrainingRun, epoch: int) -> Iterator[tuple[int, torch.Tensor]]:
    """`(batch_index, x_0)` of `epoch`, skipping the batches a resumed run already trained on."""
    run.unet.train()
    run.dataloader.set_epoch(epoch)  # the epoch's permutation and augmentations
    skip = 0
    if epoch == run.global_step // run.steps_per_epoch:
        skip = (run.global_step % run.steps_per_epoch) * run.args.gradient_accumulation_steps
    loader = run.accelerator.skip_first_batches(run.dataloader, skip) if skip else run.dataloader
    return enumerate(loader, start=skip)


def _gathered_losses(run: TrainingRun, loss: torch.Tensor, epoch: int, batch_index: int) -> list[float]:
    # Every process sees every process's loss, so all stop together, and before a non-finite loss can reach the
    # weights (or a checkpoint). One host transfer per micro-batch: the check and the logged mean both read it.
    losses = run.accelerator.gather(loss.detach().reshape(1)).tolist()
    if not all(math.isfinite(value) for value in losses):
        run.accelerator.end_training()  # flush the logs up to the last good step
        last = str(run.last_checkpoint) if run.last_checkpoint else "none (no checkpoint was saved yet)"
        raise FloatingPointError(
            f"The loss is {losses} (not finite) at step {run.global_step + 1} (epoch {epoch}, batch {batch_index}); "
            f"training stopped. The last good checkpoint is {last}: resume from it with a lower --learning_rate or "
            f"--mixed_precision no."
        )
    return losses


def train_step(run: TrainingRun, clean_images: torch.Tensor, epoch: int, batch_index: int) -> None:
    """One micro-batch of Algorithm 1: t ~ U{1..T}, ε ~ N(0, I), a gradient step on the loss once accumulated."""
    args, accelerator, noise_scheduler = run.args, run.accelerator, run.noise_scheduler
    # t, ε and the dropout masks of this micro-batch depend only on where it is (see module docstring).
    torch.manual_seed(seed_from(args.seed, accelerator.process_index, epoch, batch_index))
    noise = torch.randn_like(clean_images)
    timesteps = torch.randint(
        0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],), device=clean_images.device
    )
    noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)  # eq. 4

    with accelerator.accumulate(run.unet):
        model_output = run.unet(noisy_images, timesteps).sample
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


def maybe_checkpoint(run: TrainingRun) -> None:
    """Save a checkpoint every `--checkpointing_steps` steps and at the last step."""
    if run.global_step % run.args.checkpointing_steps == 0 or run.global_step == run.max_train_steps:
        run.last_checkpoint = save_checkpoint(
            run.accelerator, run.output_dir, run.global_step, run.args.checkpoints_total_limit
        )


@torch.no_grad()
def sample_grid(run: TrainingRun) -> Image.Image:
    """A grid of `--eval_batch_size` samples from the current (EMA) weights, with DDIM."""
    unet = run.accelerator.unwrap_model(run.unet)
    unet.eval()
    if run.ema_model is not None:
        run.ema_model.store(unet.parameters())
        run.ema_model.copy_to(unet.parameters())
    pipeline = DDPMPipeline(unet=unet, scheduler=_grid_scheduler(run.noise_scheduler))
    pipeline.set_progress_bar_config(disable=True)
    # Same seed every time, so successive grids show the same x_T's getting better.
    images = pipeline(
        batch_size=run.args.eval_batch_size,
        generator=torch.Generator(device=pipeline.device).manual_seed(run.args.seed),
        num_inference_steps=run.args.num_inference_steps,
        output_type="pil",
    ).images
    if run.ema_model is not None:
        run.ema_model.restore(unet.parameters())
    unet.train()
    rows = int(math.sqrt(len(images)))
    while len(images) % rows:
        rows -= 1
    return make_image_grid(images, rows=rows, cols=len(images) // rows)


def maybe_save_sample_grid(run: TrainingRun) -> None:
    """Every `--save_images_steps` steps, save a sample grid to `samples/` and log it (main process only)."""
    if not run.accelerator.is_main_process or run.global_step % run.args.save_images_steps:
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


def save_and_push(run: TrainingRun) -> None:
    """Save the pipeline with the EMA weights (what the paper samples from) and its model card; push if asked."""
    args, accelerator = run.args, run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final_unet = accelerator.unwrap_model(run.unet)
        if run.ema_model is not None:
            run.ema_model.copy_to(final_unet.parameters())
        pipeline = DDPMPipeline(unet=final_unet, scheduler=run.noise_scheduler)
        pipeline.save_pretrained(run.output_dir)
        training_args = {**_hparams(args), "global_step": run.global_step, "num_processes": accelerator.num_processes}
        if args.model_config in DDPMUNet2DModel.presets():
            training_args["preset"] = args.model_config
        write_model_card(
            run.output_dir,
            pipeline,
            training_args=training_args,
            repo_id=args.hub_model_id if args.push_to_hub else None,
            datasets=[args.dataset_name] if args.dataset_name else None,
        )
        if args.push_to_hub:
            pipeline.push_to_hub(
                args.hub_model_id or run.output_dir.resolve().name,
                token=args.hub_token,
                private=args.hub_private_repo,
                training_args=training_args,
            )
    accelerator.wait_for_everyone()


def train(args: argparse.Namespace, dataset=None) -> Path:
    """
    Train a DDPM with the flags of `examples/train.py` and save the pipeline to `args.output_dir`.

    Args:
        args (`argparse.Namespace`):
            Flags from `hf_ddpm.training.args.parse_args`.
        dataset (`datasets.Dataset`, *optional*, defaults to `None`):
            Rows with an `image` column to train on instead of the flags' data source (for tests and notebooks).

    Returns:
        `Path`: the output folder, holding the pipeline (EMA weights when `--use_ema`), its model card, the
        checkpoints, the sample grids and the tracker logs.

    Raises:
        `ValueError`: for bad flags, or an output folder that holds checkpoints while neither
            `--resume_from_checkpoint` nor `--overwrite_output_dir` is given.
        `FloatingPointError`: when the loss becomes NaN or infinite; the last checkpoint is left intact.
    """
    validate_args(args)
    accelerator = make_accelerator(args)
    prepare_output_dir(accelerator, args)
    unet, noise_scheduler, ema_model = build_components(accelerator, args)
    dataloader = build_dataloader(accelerator, args, unet, dataset)
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
    )
    accelerator.init_trackers(run.output_dir.name or "train", config=_hparams(args))
    resume(run)
    check_sample_grids(run)
    start_progress(run)

    # Algorithm 1: repeat { x_0 ~ q(x_0); t ~ U{1..T}; ε ~ N(0, I); gradient step on L_simple }.
    for epoch in range(run.global_step // steps_per_epoch, math.ceil(max_train_steps / steps_per_epoch)):
        if run.global_step >= max_train_steps:
            break
        for batch_index, clean_images in epoch_batches(run, epoch):
            train_step(run, clean_images, epoch, batch_index)
            if not accelerator.sync_gradients:
                continue
            if ema_model is not None:
                ema_model.step(unet.parameters())
            run.global_step += 1
            log_step(run)
            maybe_checkpoint(run)
            maybe_save_sample_grid(run)
            run.step_start = time.perf_counter()
            if run.global_step >= max_train_steps:
                break
    run.progress_bar.close()
    save_and_push(run)
    accelerator.end_training()
    return Path(args.output_dir)
