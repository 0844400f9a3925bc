"""Every bad flag of `examples/train.py` is refused before any data is loaded, naming the flag, the value and what is
allowed.

One row per bad command line: the flags (added to a tiny run's), what is raised (an exception type, or
`SystemExit` for argparse's own errors, which exit with code 2 and print `argument --flag: ...`), and words the
message must hold. `{tmp}` in a flag is replaced by the test's temporary folder.
"""

import pytest

from hf_ddpm import data
from hf_ddpm.training import loop
from hf_ddpm.training.args import parse_args
from hf_ddpm.training.loop import train

BAD_FLAGS = [
    # argparse type= and choices=
    (["--learning_rate", "0"], SystemExit, ["argument --learning_rate", "a number > 0", "'0'"]),
    (["--train_batch_size", "0"], SystemExit, ["argument --train_batch_size", "an integer >= 1"]),
    (["--ddp_timeout", "-5"], SystemExit, ["argument --ddp_timeout", "an integer >= 1", "'-5'"]),
    (["--ema_max_decay", "1"], SystemExit, ["argument --ema_max_decay", "[0, 1)"]),
    (["--mixed_precision", "fp8"], SystemExit, ["argument --mixed_precision", "invalid choice: 'fp8'"]),
    (["--lr_scheduler", "step"], SystemExit, ["argument --lr_scheduler", "invalid choice: 'step'"]),
    # ranges the optimizer, the EMA and the seeding need
    (["--adam_beta1", "1.5"], SystemExit, ["argument --adam_beta1", "'1.5'", "[0, 1)"]),
    (["--adam_beta2", "1"], SystemExit, ["argument --adam_beta2", "'1'", "[0, 1)"]),
    (["--adam_epsilon=-1e-8"], SystemExit, ["argument --adam_epsilon", "'-1e-8'", ">= 0"]),
    (["--adam_weight_decay", "-0.1"], SystemExit, ["argument --adam_weight_decay", "'-0.1'", ">= 0"]),
    (["--ema_inv_gamma", "0"], SystemExit, ["argument --ema_inv_gamma", "'0'", "> 0"]),
    (["--ema_power", "-0.5"], SystemExit, ["argument --ema_power", "'-0.5'", "> 0"]),
    (["--seed", "-1"], SystemExit, ["argument --seed", "'-1'", "[0, 2**32 - 1]"]),
    # combinations
    (["--variance_type", "learned_range"], ValueError, ["--variance_type 'learned_range'", "--loss_type 'hybrid'"]),
    (["--dataset_name", "x", "--train_data_dir", "y"], ValueError, ["--dataset_name", "--train_data_dir"]),
    # files
    (["--model_config", "{tmp}/broken.json"], ValueError, ["--model_config", "broken.json", "line 3"]),
    (["--model_config", "{tmp}/list.json"], ValueError, ["--model_config", "list.json", "JSON object"]),
    (
        ["--model_config", "no-such-preset"],
        ValueError,
        ["--model_config", "'no-such-preset'", "neither a preset", "UNet config"],
    ),
    (["--output_dir", "{tmp}/a_file"], ValueError, ["--output_dir", "a_file", "is a file"]),
    (["--resume_from_checkpoint", "checkpoint-5"], ValueError, ["--resume_from_checkpoint", "'checkpoint-5'"]),
    # the model
    (["--resolution", "9"], ValueError, ["`resolution`=9", "multiple of 2**1=2"]),
]


@pytest.fixture
def files(tmp_path):
    (tmp_path / "broken.json").write_text('{\n  "in_channels": 3,\n  "layers_per_block": ,\n}\n')
    (tmp_path / "list.json").write_text("[1, 2]\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    return tmp_path


@pytest.fixture
def no_data_loading(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the dataset was loaded: the bad flag was refused too late")

    monkeypatch.setattr(loop, "load_image_dataset", refuse)
    monkeypatch.setattr(data, "load_image_dataset", refuse)


@pytest.mark.parametrize(
    ("flags", "raised", "words"), BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else ""
)
def test_bad_flag_is_refused_before_data_loading(flags, raised, words, files, tiny_flags, no_data_loading, capsys):
    flags = [f.replace("{tmp}", str(files)) for f in flags]
    with pytest.raises(raised) as error:
        train(parse_args(tiny_flags(files / "out", "--max_train_steps", "1", *flags)))
    if raised is SystemExit:
        assert error.value.code == 2
        message = capsys.readouterr().err
    else:
        message = str(error.value)
    for word in words:
        assert word.replace("{tmp}", str(files)) in message, message
