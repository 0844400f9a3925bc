"""What a run does with what `--output_dir` already holds, and which flags a resumed run may change."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training import loop
from hf_ddpm.training.args import parse_args
from hf_ddpm.training.checkpoint import TRAINING_ARGS_NAME, read_training_args, resume_flag_changes
from hf_ddpm.training.loop import train


def _digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*")
            if p.is_file()}  # fmt: skip


def _unet(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


@pytest.fixture
def no_data_loading(monkeypatch):
    """Fail the test if training gets as far as building its data loader."""

    def refuse(*args, **kwargs):
        raise AssertionError("the data loader was built: the refusal came too late")

    monkeypatch.setattr(loop, "build_dataloader", refuse)


# ---- the output folder ----------------------------------------------------------------------------------------------


def test_a_saved_pipeline_without_checkpoints_is_not_overwritten(tmp_path, image_dataset, tiny_flags):
    saved = tmp_path / "pipe"
    DDPMPipeline(unet=DDPMUNet2DModel.from_preset("tiny"), scheduler=DDPMScheduler()).save_pretrained(saved)
    (saved / "README.md").write_text("my model\n")
    before = _digest(saved)
    for extra in ([], ["--resume_from_checkpoint", "latest"]):  # "latest" finds no checkpoint: a new run
        with pytest.raises(ValueError) as error:
            train(parse_args(tiny_flags(saved, "--max_train_steps", "1", *extra)), dataset=image_dataset)
        message = str(error.value)
        for words in (
            str(saved),
            "a saved pipeline",
            "model_index.json",
            "--resume_from_checkpoint",
            "--overwrite_output_dir",
        ):
            assert words in message
    assert _digest(saved) == before

    train(parse_args(tiny_flags(saved, "--max_train_steps", "1", "--overwrite_output_dir")), dataset=image_dataset)
    assert (
        _digest(saved)["unet/diffusion_pytorch_model.safetensors"]
        != before["unet/diffusion_pytorch_model.safetensors"]
    )


def test_any_other_non_empty_folder_is_refused_and_an_empty_one_is_used(tmp_path, image_dataset, tiny_flags):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me\n")
    with pytest.raises(ValueError, match=r"already holds 1 files or folders \(todo.txt\)"):
        train(parse_args(tiny_flags(tmp_path / "notes", "--max_train_steps", "1")), dataset=image_dataset)
    (tmp_path / "empty").mkdir()
    train(parse_args(tiny_flags(tmp_path / "empty", "--max_train_steps", "1")), dataset=image_dataset)
    assert (tmp_path / "empty" / "model_index.json").is_file()


# ---- flags on resume ------------------------------------------------------------------------------------------------


def _trained_two_steps(tmp_path, image_dataset, tiny_flags, *extra: str) -> tuple[Path, list[str]]:
    flags = ["--lr_warmup_steps", "0", "--lr_scheduler", "constant", "--checkpointing_steps", "1", *extra]
    run = tmp_path / "run"
    train(parse_args(tiny_flags(run, *flags, "--max_train_steps", "2")), dataset=image_dataset)
    return run, flags


def test_a_new_learning_rate_on_resume_is_used_from_the_resumed_step(tmp_path, image_dataset, tiny_flags, capsys):
    # Adam's update from a given state and batch is lr · m̂ / (√v̂ + ε): step 3 resumed at 10× the LR moves every
    # weight 10× as far as step 3 resumed at the saved LR (same checkpoint, same batch, same gradient).
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags, "--learning_rate", "1e-4")
    same, faster = tmp_path / "same", tmp_path / "faster"
    shutil.copytree(run, same)
    shutil.copytree(run, faster)
    resume = ["--resume_from_checkpoint", "latest", "--max_train_steps", "3", "--learning_rate"]
    train(parse_args(tiny_flags(same, *flags, *resume, "1e-4")), dataset=image_dataset)
    capsys.readouterr()
    train(parse_args(tiny_flags(faster, *flags, *resume, "1e-3")), dataset=image_dataset)
    assert "Applied from step 2: --learning_rate 0.0001 -> 0.001" in capsys.readouterr().out

    start = _unet(run / "checkpoint-2")
    step_same, step_faster = _unet(same / "checkpoint-3"), _unet(faster / "checkpoint-3")
    for name, theta in start.items():
        torch.testing.assert_close(step_faster[name] - theta, 10 * (step_same[name] - theta), rtol=1e-3, atol=2e-6)
    assert any(not torch.equal(step_same[name], theta) for name, theta in start.items())  # the step moved them
    assert read_training_args(faster / "checkpoint-3")["learning_rate"] == 1e-3


def test_a_longer_run_rebuilds_the_lr_schedule_at_the_resumed_step(tmp_path, image_dataset, tiny_flags):
    # Linear decay without warm-up: lr(k) = η (T - k) / T. Resumed at k = 2 with η' and T', the LR after step 3 is
    # η' (T' - 3) / T', whatever the saved η and T were.
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags, "--lr_scheduler", "linear")
    resume = ["--resume_from_checkpoint", "latest", "--learning_rate", "1e-3", "--max_train_steps", "8"]
    train(parse_args(tiny_flags(run, *flags, "--lr_scheduler", "linear", *resume)), dataset=image_dataset)
    optimizer = torch.load(run / "checkpoint-3" / "optimizer.bin", weights_only=True)
    assert optimizer["param_groups"][0]["lr"] == pytest.approx(1e-3 * (8 - 3) / 8, rel=1e-12)
    scheduler = torch.load(run / "checkpoint-3" / "scheduler.bin", weights_only=True)
    assert scheduler["base_lrs"] == [1e-3] and scheduler["last_epoch"] == 3


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--seed", "1"], "--seed 0 in the checkpoint, 1 now"),
        (["--num_train_timesteps", "500"], "--num_train_timesteps 1000 in the checkpoint, 500 now"),
        (["--beta_schedule", "squaredcos_cap_v2"], "--beta_schedule 'linear' in the checkpoint"),
        (["--prediction_type", "v_prediction"], "--prediction_type 'epsilon' in the checkpoint"),
        (["--random_flip"], "--random_flip None in the checkpoint, True now"),
        (["--train_batch_size", "2"], "4 × 1 × 1 = 4 in the checkpoint, '2 × 1 × 1 = 2' now"),
        (["--resolution", "4"], "sample_size: 8 in the checkpoint, 4 now"),
    ],
)
def test_flags_that_define_the_saved_run_are_refused_before_data_loading(
    tmp_path, image_dataset, tiny_flags, change, words, request
):
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags)
    request.getfixturevalue("no_data_loading")
    with pytest.raises(ValueError) as error:
        train(
            parse_args(
                tiny_flags(run, *flags, "--max_train_steps", "3", "--resume_from_checkpoint", "latest", *change)
            )
        )
    assert str(run / "checkpoint-2") in str(error.value)
    assert words.replace("'", "") in str(error.value).replace("'", "")


def test_another_model_config_names_both_configs_not_a_size_mismatch(tmp_path, image_dataset, tiny_flags, request):
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags)
    request.getfixturevalue("no_data_loading")
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({**DDPMUNet2DModel.presets()["tiny"], "block_out_channels": [16, 32]}))
    with pytest.raises(ValueError) as error:
        train(parse_args(tiny_flags(run, *flags, "--resume_from_checkpoint", "latest", "--model_config", str(wider))))
    message = str(error.value)
    assert "--model_config 'tiny' there" in message and repr(str(wider)) in message
    assert "block_out_channels: [8, 16] in the checkpoint, [16, 32] now" in message
    assert "size mismatch" not in message


def test_the_same_images_per_step_split_otherwise_resume(tmp_path, image_dataset, tiny_flags):
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags)
    resplit = ["--train_batch_size", "2", "--gradient_accumulation_steps", "2", "--max_train_steps", "3"]
    train(parse_args(tiny_flags(run, *flags, *resplit, "--resume_from_checkpoint", "latest")), dataset=image_dataset)
    assert (run / "checkpoint-3").is_dir()


def test_a_checkpoint_without_recorded_flags_still_resumes(tmp_path, image_dataset, tiny_flags, capsys):
    run, flags = _trained_two_steps(tmp_path, image_dataset, tiny_flags)
    (run / "checkpoint-2" / TRAINING_ARGS_NAME).unlink()
    train(
        parse_args(tiny_flags(run, *flags, "--max_train_steps", "3", "--resume_from_checkpoint", "latest")),
        dataset=image_dataset,
    )
    assert "records no flags (no training_args.json); the current ones apply" in capsys.readouterr().out
    assert read_training_args(run / "checkpoint-3")["max_train_steps"] == 3


def test_flag_changes_split_into_applied_and_refused():
    saved = {"learning_rate": 1e-4, "seed": 0, "train_batch_size": 4, "num_processes": 2,
             "gradient_accumulation_steps": 1, "output_dir": "a", "hub_token": None}  # fmt: skip
    current = {**saved, "learning_rate": 1e-3, "output_dir": "b", "train_batch_size": 8, "num_processes": 1}
    assert resume_flag_changes(saved, current) == ({"learning_rate": (1e-4, 1e-3)}, {})  # 4 × 2 = 8 × 1
    applied, refused = resume_flag_changes(saved, {**current, "seed": 3, "num_processes": 2})
    assert applied == {"learning_rate": (1e-4, 1e-3)}
    assert refused == {
        "seed": (0, 3),
        "train_batch_size × num_processes × gradient_accumulation_steps": ("4 × 2 × 1 = 8", "8 × 2 × 1 = 16"),
    }
