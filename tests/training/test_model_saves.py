"""Saving the pipeline during training: when, what (the EMA weights), how (atomically), and pushing each save."""

import pytest
import torch
from safetensors.torch import load_file

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.training import saving
from hf_ddpm.training.args import parse_args
from hf_ddpm.training.loop import train


def _weights(folder) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k].contiguous(), b[k].contiguous())]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _pipeline_weights(pipeline: DDPMPipeline) -> dict[str, torch.Tensor]:
    return {k: v.contiguous() for k, v in pipeline.unet.state_dict().items()}


def _record_saves(monkeypatch) -> list[int]:
    steps, real = [], saving.save_pipeline

    def recording(run):
        steps.append(run.global_step)
        real(run)

    monkeypatch.setattr(saving, "save_pipeline", recording)
    return steps


def test_epoch_cadences_count_completed_epochs_and_every_run_ends_with_a_grid_and_a_save(
    tmp_path, image_dataset, tiny_flags, monkeypatch
):
    # 22 images in batches of 4: 6 steps per epoch. Neither period divides the 13 steps: the end still saves both.
    saves = _record_saves(monkeypatch)
    flags = ["--max_train_steps", "13", "--save_images_epochs", "1", "--save_model_epochs", "2"]
    train(parse_args(tiny_flags(tmp_path, *flags)), dataset=image_dataset)
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == [
        "step-0000006.png",
        "step-0000012.png",
        "step-0000013.png",
    ]
    assert saves == [12, 13]


def test_periodic_saves_take_nothing_from_training(tmp_path, image_dataset, tiny_dropout_config, tiny_flags):
    # Grids and pipeline saves in the middle of a run swap the EMA weights in and out: the run must not notice.
    common = ["--max_train_steps", "3", "--model_config", tiny_dropout_config, "--random_flip"]
    train(parse_args(tiny_flags(tmp_path / "plain", *common)), dataset=image_dataset)
    often = ["--save_model_steps", "1", "--save_images_steps", "1"]
    train(parse_args(tiny_flags(tmp_path / "saving", *common, *often)), dataset=image_dataset)
    for sub in ("unet", "unet_ema"):
        _assert_bit_identical(
            _weights(tmp_path / "plain" / "checkpoint-3" / sub), _weights(tmp_path / "saving" / "checkpoint-3" / sub)
        )
    _assert_bit_identical(_weights(tmp_path / "saving" / "unet"), _weights(tmp_path / "plain" / "unet"))


def test_each_save_pushes_the_ema_pipeline_of_its_step(tmp_path, image_dataset, tiny_flags, hub_repo_id):
    from huggingface_hub import HfApi

    out = tmp_path / "out"
    flags = ["--max_train_steps", "3", "--save_model_steps", "2", "--checkpointing_steps", "1", "--push_to_hub"]
    train(parse_args(tiny_flags(out, *flags, "--hub_model_id", hub_repo_id)), dataset=image_dataset)

    commits = {c.title: c.commit_id for c in HfApi().list_repo_commits(hub_repo_id)}
    assert {"Step 2", "Step 3"} <= set(commits)
    for step in (2, 3):
        pushed = DDPMPipeline.from_pretrained(hub_repo_id, revision=commits[f"Step {step}"])
        _assert_bit_identical(_pipeline_weights(pushed), _weights(out / f"checkpoint-{step}" / "unet_ema"))
    # Not vacuous: the two pushes hold different weights.
    assert not torch.equal(*(_weights(out / f"checkpoint-{s}" / "unet_ema")["conv_in.weight"] for s in (2, 3)))
    # The local folder holds the last save beside the run's other outputs, and no staging leftovers.
    names = {p.name for p in out.iterdir()}
    assert {"model_index.json", "unet", "scheduler", "README.md", "samples", "checkpoint-3"} <= names
    assert not names & {saving.PIPELINE_STAGING, saving.PIPELINE_REPLACED}
    _assert_bit_identical(_weights(out / "unet"), _weights(out / "checkpoint-3" / "unet_ema"))


def test_an_interrupted_save_leaves_the_previous_pipeline_whole(tmp_path, image_dataset, tiny_flags, monkeypatch):
    real_card, calls = saving.write_model_card, []

    def card_that_dies_on_the_second_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:  # the weights of step 2 are written, the card not yet: the process dies here
            raise KeyboardInterrupt
        return real_card(*args, **kwargs)

    monkeypatch.setattr(saving, "write_model_card", card_that_dies_on_the_second_save)
    flags = tiny_flags(tmp_path, "--max_train_steps", "3", "--save_model_steps", "1", "--checkpointing_steps", "1")
    with pytest.raises(KeyboardInterrupt):
        train(parse_args(flags), dataset=image_dataset)

    assert (tmp_path / saving.PIPELINE_STAGING / "unet").is_dir()  # the half-written save stayed aside
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    _assert_bit_identical(_pipeline_weights(pipeline), _weights(tmp_path / "checkpoint-1" / "unet_ema"))
    assert "| global_step | 1 |" in (tmp_path / "README.md").read_text()  # the card of the same save

    # The next run's save clears the leftovers and replaces the pipeline.
    monkeypatch.setattr(saving, "write_model_card", real_card)
    train(parse_args([*flags, "--resume_from_checkpoint", "latest"]), dataset=image_dataset)
    assert not (tmp_path / saving.PIPELINE_STAGING).exists() and not (tmp_path / saving.PIPELINE_REPLACED).exists()
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    _assert_bit_identical(_pipeline_weights(pipeline), _weights(tmp_path / "checkpoint-3" / "unet_ema"))
