"""The DDPM training loop (Ho et al. 2020, Algorithm 1) on Accelerate, read top to bottom.

One process, several processes or GPUs, mixed precision and gradient accumulation all go through Accelerate;
only the main process writes checkpoints' weights, logs, sample grids and the final pipeline.

Exact resume. Everything random is a function of positions, not of history:
- the data order of epoch e is the permutation Accelerate's seedable sampler draws from `seed + e`, and a resumed
  run skips the batches of the epoch it already saw (`skip_first_batches`);
- each image's augmentation (crop, flip) is drawn from a generator seeded by (seed, epoch, index);
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
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from diffusers.utils import make_image_grid
from tqdm.auto import tqdm

from hf_ddpm.data import check_resolution, load_image_dataset, make_transform
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

__all__ = ["AugmentedImages", "build_unet", "train", "use_channels_last", "use_random_flip"]


def _seed_from(*keys: int) -> int:
    # A well-mixed 32-bit seed from a tuple of integers (numpy's SeedSequence hashes them), so neighbouring
    # (epoch, batch) pairs get unrelated streams.
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


class AugmentedImages(torch.utils.data.Dataset):
    """
    A `datasets.Dataset` of images seen through a training transform whose random choices depend only on
    (seed, epoch, index), so any image's augmentation is the same whichever process, worker or run loads it.

    Args:
        dataset (`datasets.Dataset`):
            Rows with an `image` column of `PIL.Image`s.
        transform (`Callable`):
            `hf_ddpm.data.make_transform(...)`: `(image, generator) -> [C, R, R]` tensor in [-1, 1].
        seed (`int`, *optional*, defaults to 0):
            The run's seed.
    """

    # Decoding and resizing cost about 1 ms per image, as much as a small model's training step per image: a
    # deterministic transform's tensors are kept after the first epoch when they fit in this many bytes.
    max_cache_bytes = 2**30

    def __init__(self, dataset, transform, seed: int = 0):
        self.dataset = dataset
        self.transform = transform
        self.seed = seed
        self.epoch = 0
        self._cache: dict[int, torch.Tensor] | None = {} if getattr(transform, "deterministic", False) else None

    def set_epoch(self, epoch: int) -> None:
        """Called by Accelerate's data loader at the start of each epoch."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> torch.Tensor:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        generator = torch.Generator().manual_seed(_seed_from(self.seed, self.epoch, index))
        tensor = self.transform(self.dataset[int(index)]["image"], generator)
        if self._cache is not None and tensor.nbytes * len(self.dataset) <= self.max_cache_bytes:
            self._cache[index] = tensor
        return tensor


def use_channels_last(args: argparse.Namespace, mixed_precision: str) -> bool:
    """`--channels_last`, or by default NHWC exactly when training under bf16/fp16 autocast (where it measured faster)."""
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


@torch.no_grad()
def _sample_grid(pipeline: DDPMPipeline, args: argparse.Namespace):
    # Same seed every time, so successive grids show the same x_T's getting better.
    generator = torch.Generator(device=pipeline.device).manual_seed(args.seed)
    images = pipeline(
        batch_size=args.eval_batch_size,
        generator=generator,
        num_inference_steps=args.num_inference_steps,
        output_type="pil",
    ).images
    rows = int(math.sqrt(len(images)))
    while len(images) % rows:
        rows -= 1
    return make_image_grid(images, rows=rows, cols=len(images) // rows)


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
    )
    is_main = accelerator.is_main_process

    # --- The output folder: never silently mix a new run into an old run's checkpoints. -------------------------
    if list_checkpoints(output_dir) and args.resume_from_checkpoint is None and not args.overwrite_output_dir:
        raise ValueError(
            f"--output_dir {str(output_dir)!r} already holds checkpoints "
            f"({', '.join(p.name for p in list_checkpoints(output_dir))}); pass --resume_from_checkpoint "
            f"latest to continue that run or --overwrite_output_dir to start afresh."
        )
    accelerator.wait_for_everyone()  # every rank has looked before the main process deletes anything
    if is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
        remove_incomplete_checkpoints(output_dir)
        if args.overwrite_output_dir and args.resume_from_checkpoint is None:
            for path in list_checkpoints(output_dir):
                shutil.rmtree(path)
    accelerator.wait_for_everyone()

    # --- Model, noise scheduler, EMA. ---------------------------------------------------------------------------
    set_seed(args.seed)  # the same initial weights on every process and in every run
    unet = build_unet(args.model_config, args.resolution, args.variance_type)
    if use_channels_last(args, accelerator.mixed_precision):
        unet.to(memory_format=torch.channels_last)  # the same weights and numbers; the EMA copies keep the layout
    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()  # recompute each block in backward: less memory, about 1/3 more compute
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

    # --- Data. ----------------------------------------------------------------------------------------------------
    check_resolution(args.resolution, unet.num_downsamplings)
    if dataset is None:
        with accelerator.main_process_first():  # the main process downloads/prepares, the others read its cache
            dataset = load_image_dataset(
                args.dataset_name, args.dataset_config_name, args.train_data_dir, args.cache_dir, seed=args.seed
            )
    transform = make_transform(
        args.resolution, unet.config.in_channels, center_crop=args.center_crop, random_flip=use_random_flip(args)
    )
    train_dataloader = torch.utils.data.DataLoader(
        AugmentedImages(dataset, transform, seed=args.seed),
        batch_size=args.train_batch_size,
        shuffle=True,
        num_workers=args.dataloader_num_workers,
    )

    # --- Optimizer and LR schedule (the paper: Adam 2e-4, linear warm-up over 5000 steps, then constant). --------
    optimizer = adamw(
        unet.parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        weight_decay=args.adam_weight_decay,
        eps=args.adam_epsilon,
        implementation=args.adam_implementation,
    )
    # The prepared loader holds this process's share of each epoch; its length sets the steps per epoch.
    train_dataloader = accelerator.prepare(train_dataloader)
    num_update_steps_per_epoch = math.ceil(len(train_dataloader) / args.gradient_accumulation_steps)
    max_train_steps = args.max_train_steps or args.num_epochs * num_update_steps_per_epoch
    num_epochs = math.ceil(max_train_steps / num_update_steps_per_epoch)
    # A prepared LR scheduler steps once per process at each optimizer step, hence the factor: the flags count
    # optimizer steps.
    lr_scheduler = get_scheduler(
        args.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=args.lr_warmup_steps * accelerator.num_processes,
        num_training_steps=max_train_steps * accelerator.num_processes,
    )
    unet, optimizer, lr_scheduler = accelerator.prepare(unet, optimizer, lr_scheduler)

    accelerator.init_trackers(output_dir.name or "train", config=_hparams(args))

    # --- Resume. ------------------------------------------------------------------------------------------------
    global_step = 0
    checkpoint = resolve_checkpoint(output_dir, args.resume_from_checkpoint)
    if checkpoint is not None:
        accelerator.print(f"Resuming from {checkpoint}")
        accelerator.load_state(str(checkpoint))
        global_step = checkpoint_step(checkpoint)
    elif args.resume_from_checkpoint is not None:
        accelerator.print(f"No checkpoint in {str(output_dir)!r}; starting a new run.")
    first_epoch = global_step // num_update_steps_per_epoch
    batches_done_in_epoch = (global_step % num_update_steps_per_epoch) * args.gradient_accumulation_steps
    last_checkpoint = checkpoint

    total_batch_size = args.train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    accelerator.print(
        f"{len(dataset)} images, {num_epochs} epochs, {max_train_steps} steps of {total_batch_size} images "
        f"({accelerator.num_processes} processes × {args.train_batch_size} × {args.gradient_accumulation_steps} "
        f"accumulated), from step {global_step}."
    )
    progress_bar = tqdm(total=max_train_steps, initial=global_step, disable=not is_main, desc="train")
    step_loss, step_start = 0.0, time.perf_counter()

    # --- Algorithm 1: repeat { x_0 ~ q(x_0); t ~ U{1..T}; ε ~ N(0, I); gradient step on L_simple }. --------------
    for epoch in range(first_epoch, num_epochs):
        if global_step >= max_train_steps:
            break
        unet.train()
        train_dataloader.set_epoch(epoch)  # the epoch's permutation and augmentations
        skip = batches_done_in_epoch if epoch == first_epoch else 0
        epoch_loader = accelerator.skip_first_batches(train_dataloader, skip) if skip else train_dataloader
        for batch_index, clean_images in enumerate(epoch_loader, start=skip):
            # t, ε and the dropout masks of this micro-batch depend only on where it is (see module docstring).
            torch.manual_seed(_seed_from(args.seed, accelerator.process_index, epoch, batch_index))
            noise = torch.randn_like(clean_images)
            timesteps = torch.randint(
                0, noise_scheduler.config.num_train_timesteps, (clean_images.shape[0],), device=clean_images.device
            )
            noisy_images = noise_scheduler.add_noise(clean_images, noise, timesteps)  # eq. 4

            with accelerator.accumulate(unet):
                model_output = unet(noisy_images, timesteps).sample
                losses = diffusion_loss(
                    model_output,
                    noise_scheduler,
                    clean_images,
                    noise,
                    noisy_images,
                    timesteps,
                    loss_type=args.loss_type,
                    vlb_weight=args.vlb_weight,
                )
                loss = losses["loss"]
                # Every process sees every process's loss, so all stop together, and before a non-finite loss can
                # reach the weights (or a checkpoint).
                all_losses = accelerator.gather(loss.detach().reshape(1))
                if not torch.isfinite(all_losses).all():
                    accelerator.end_training()  # flush the logs up to the last good step
                    raise FloatingPointError(
                        f"The loss is {all_losses.tolist()} (not finite) at step {global_step + 1} (epoch {epoch}, "
                        f"batch {batch_index}); training stopped. The last good checkpoint is "
                        f"{str(last_checkpoint) if last_checkpoint else 'none (no checkpoint was saved yet)'}: "
                        f"resume from it with a lower --learning_rate or --mixed_precision no."
                    )
                step_loss += all_losses.mean().item() / args.gradient_accumulation_steps
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(unet.parameters(), args.max_grad_norm)
                optimizer.step()
                lr_scheduler.step()
                optimizer.zero_grad()

            if not accelerator.sync_gradients:
                continue
            # --- One optimizer step done. ------------------------------------------------------------------------
            if ema_model is not None:
                ema_model.step(unet.parameters())
            global_step += 1
            now = time.perf_counter()
            logs = {
                "loss": step_loss,
                "lr": lr_scheduler.get_last_lr()[0],
                "img/s": total_batch_size / max(now - step_start, 1e-9),
            }
            if ema_model is not None:
                logs["ema_decay"] = ema_model.cur_decay_value
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{logs['lr']:.2e}", img_s=f"{logs['img/s']:.1f}")
            accelerator.log(logs, step=global_step)
            step_loss = 0.0

            if global_step % args.checkpointing_steps == 0 or global_step == max_train_steps:
                last_checkpoint = save_checkpoint(accelerator, output_dir, global_step, args.checkpoints_total_limit)

            if is_main and global_step % args.save_images_steps == 0:
                unwrapped = accelerator.unwrap_model(unet)
                unwrapped.eval()
                if ema_model is not None:
                    ema_model.store(unwrapped.parameters())
                    ema_model.copy_to(unwrapped.parameters())
                # DDIM (η = 0) for quick grids; the pipeline passes DDIM only a learned variance's prediction half.
                grid_scheduler = DDIMScheduler.from_config(noise_scheduler.config)
                pipeline = DDPMPipeline(unet=unwrapped, scheduler=grid_scheduler)
                pipeline.set_progress_bar_config(disable=True)
                grid = _sample_grid(pipeline, args)
                if ema_model is not None:
                    ema_model.restore(unwrapped.parameters())
                unwrapped.train()
                samples_dir = output_dir / "samples"
                samples_dir.mkdir(exist_ok=True)
                grid.save(samples_dir / f"step-{global_step:07d}.png")
                for tracker in accelerator.trackers:
                    if tracker.name == "tensorboard":
                        tracker.log_images({"samples": np.asarray(grid)[None]}, step=global_step, dataformats="NHWC")
                    elif tracker.name == "wandb":
                        tracker.log_images({"samples": [grid]}, step=global_step)

            step_start = time.perf_counter()
            if global_step >= max_train_steps:
                break
    progress_bar.close()

    # --- The pipeline, with the EMA weights (what the paper samples from), and its model card. -------------------
    accelerator.wait_for_everyone()
    if is_main:
        final_unet = accelerator.unwrap_model(unet)
        if ema_model is not None:
            ema_model.copy_to(final_unet.parameters())
        pipeline = DDPMPipeline(unet=final_unet, scheduler=noise_scheduler)
        pipeline.save_pretrained(output_dir)
        training_args = {**_hparams(args), "global_step": global_step, "num_processes": accelerator.num_processes}
        if args.model_config in DDPMUNet2DModel.presets():
            training_args["preset"] = args.model_config
        write_model_card(
            output_dir,
            pipeline,
            training_args=training_args,
            repo_id=args.hub_model_id if args.push_to_hub else None,
            datasets=[args.dataset_name] if args.dataset_name else None,
        )
        if args.push_to_hub:
            pipeline.push_to_hub(
                args.hub_model_id or output_dir.resolve().name,
                token=args.hub_token,
                private=args.hub_private_repo,
                training_args=training_args,
            )
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return output_dir
