"""Flags of examples/train.py: diffusers' names, the paper's defaults, clear errors."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_ddpm.schedulers import PREDICTION_TYPES
from hf_ddpm.schedulers.scheduling_ddpm import BETA_SCHEDULES, VARIANCE_TYPES
from hf_ddpm.training.args import build_parser, parse_args
from hf_ddpm.training.run import use_channels_last, use_random_flip

REPO_ROOT = Path(__file__).resolve().parents[2]

# The flags examples/train.py promises by name: diffusers' train_unconditional.py names where the concept is the same,
# plus the DDPM-specific ones (T, β schedule, variance, loss, model config).
PUBLIC_FLAGS = """
--dataset_name --dataset_config_name --train_data_dir --cache_dir --resolution --center_crop --random_flip
--output_dir --overwrite_output_dir --train_batch_size --eval_batch_size --num_epochs --max_train_steps
--gradient_accumulation_steps --learning_rate --lr_scheduler --lr_warmup_steps --adam_beta1 --adam_beta2
--adam_weight_decay --adam_epsilon --max_grad_norm --use_ema --ema_inv_gamma --ema_power --ema_max_decay
--mixed_precision --seed --checkpointing_steps --checkpoints_total_limit --resume_from_checkpoint --save_images_steps
--logger --logging_dir --push_to_hub --hub_model_id --hub_token --hub_private_repo --prediction_type
--num_train_timesteps --beta_schedule --variance_type --dataloader_num_workers --model_config --loss_type
--save_images_epochs --save_model_steps --save_model_epochs --hub_license
""".split()


def test_parser_has_every_public_flag_and_help_shows_each_default():
    parser = build_parser()
    options = {option for action in parser._actions for option in action.option_strings}
    assert not [flag for flag in PUBLIC_FLAGS if flag not in options]
    help_text = parser.format_help()
    for action in parser._actions:
        if action.dest != "help":
            assert action.help and "%(default)s" not in action.help
    # ArgumentDefaultsHelpFormatter appends "(default: ...)" to every flag's help.
    assert help_text.count("(default:") == len([a for a in parser._actions if a.dest != "help"])


def test_train_script_help_lists_flags_without_training():
    result = subprocess.run(
        [sys.executable, str(REPO_ROOT / "examples" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "--resume_from_checkpoint" in result.stdout and "(default: 0.0002)" in result.stdout


def test_defaults_follow_the_ddpm_paper():
    args = parse_args([])
    # Sec. 4: T = 1000, β linear 1e-4 → 0.02, ε-prediction with L_simple; Appendix B: Adam 2e-4, warm-up 5000,
    # clip 1.0, EMA 0.9999, batch 128, CIFAR10's 32×32.
    assert (args.num_train_timesteps, args.beta_schedule, args.prediction_type) == (1000, "linear", "epsilon")
    assert (args.loss_type, args.variance_type) == ("simple", "fixed_small")
    assert (args.learning_rate, args.lr_warmup_steps, args.lr_scheduler) == (2e-4, 5000, "constant_with_warmup")
    assert (args.adam_beta1, args.adam_beta2, args.adam_epsilon, args.adam_weight_decay) == (0.9, 0.999, 1e-8, 0.0)
    assert (args.max_grad_norm, args.use_ema, args.ema_max_decay) == (1.0, True, 0.9999)
    assert (args.train_batch_size, args.resolution, args.model_config) == (128, 32, "ddpm-cifar10")
    assert args.random_flip is None  # decided by the data, see below
    assert args.adam_implementation == "auto"  # the same Adam step, with torch's fused kernel where it has one


def test_random_flip_defaults_to_on_for_natural_images_and_off_for_digits():
    assert use_random_flip(parse_args([])) is False  # the offline MNIST digits
    assert use_random_flip(parse_args(["--dataset_name", "ylecun/mnist"])) is False
    assert use_random_flip(parse_args(["--dataset_name", "uoft-cs/cifar10"])) is True
    assert use_random_flip(parse_args(["--train_data_dir", "faces"])) is True
    assert use_random_flip(parse_args(["--no-random_flip", "--dataset_name", "uoft-cs/cifar10"])) is False
    assert use_random_flip(parse_args(["--random_flip"])) is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--loss_type", "hybrid"], r"--loss_type 'hybrid' needs a learned --variance_type"),
        (["--variance_type", "learned_range"], r"--variance_type 'learned_range' needs --loss_type 'hybrid'"),
        (["--dataset_name", "a", "--train_data_dir", "b"], r"at most one of --dataset_name"),
    ],
)
def test_bad_flag_combinations_raise_value_error_naming_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        parse_args(flags)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--train_batch_size", "0"], r"argument --train_batch_size: must be an integer >= 1, got '0'"),
        (["--resolution", "8.5"], r"argument --resolution: must be an integer >= 1, got '8.5'"),
        (["--checkpoints_total_limit", "0"], r"argument --checkpoints_total_limit: must be an integer >= 1, got '0'"),
        (
            ["--num_inference_steps", "0"],
            r"argument --num_inference_steps/--ddpm_num_inference_steps: must be an integer >= 1, got '0'",
        ),
        (["--lr_warmup_steps", "-1"], r"argument --lr_warmup_steps: must be an integer >= 0, got '-1'"),
        (["--learning_rate", "0"], r"argument --learning_rate: must be a number > 0, got '0'"),
        (["--max_grad_norm", "nan"], r"argument --max_grad_norm: must be a number > 0, got 'nan'"),
        (["--vlb_weight", "-0.1"], r"argument --vlb_weight: must be a number >= 0, got '-0.1'"),
        (["--ema_max_decay", "1.0"], r"argument --ema_max_decay: must be a number in \[0, 1\), got '1.0'"),
    ],
)
def test_out_of_range_value_is_refused_at_its_flag(flags, message, capsys):
    with pytest.raises(SystemExit):
        parse_args(flags)
    assert re.search(message, capsys.readouterr().err)


def test_training_offers_the_schedulers_choices_except_the_excluded_ones():
    parser = build_parser()
    choices = {action.dest: action.choices for action in parser._actions}
    assert set(choices["prediction_type"]) == set(PREDICTION_TYPES)
    assert set(choices["variance_type"]) == set(VARIANCE_TYPES) - {"fixed_small_log", "fixed_large_log"}
    assert set(choices["beta_schedule"]) == set(BETA_SCHEDULES) - {"laplace"}


def test_unknown_choice_is_refused_by_argparse(capsys):
    with pytest.raises(SystemExit):
        parse_args(["--prediction_type", "x0"])
    assert "invalid choice: 'x0'" in capsys.readouterr().err


def test_channels_last_defaults_to_on_on_the_cpu_and_under_mixed_precision():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_channels_last(parse_args([]), "no", cpu) is True
    assert use_channels_last(parse_args([]), "no", cuda) is False
    assert use_channels_last(parse_args([]), "bf16", cuda) is True
    assert use_channels_last(parse_args(["--no-channels_last"]), "bf16", cpu) is False
    assert use_channels_last(parse_args(["--channels_last"]), "no", cuda) is True
