"""Checkpoints: whole or absent, finite, found by name, pruned oldest first."""

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from hf_ddpm.training.args import parse_args
from hf_ddpm.training.checkpoint import (
    checkpoint_step,
    list_checkpoints,
    prune_checkpoints,
    remove_incomplete_checkpoints,
    resolve_checkpoint,
)
from hf_ddpm.training.loop import train


def test_a_save_that_dies_midway_leaves_no_checkpoint_and_resume_uses_the_previous_one(
    tmp_path, image_dataset, tiny_flags, monkeypatch
):
    real_save_state, saves = Accelerator.save_state, []

    def save_state_that_dies_on_the_second_save(self, output_dir=None, **kwargs):
        saves.append(output_dir)
        if len(saves) == 2:
            real_save_state(self, output_dir, **kwargs)  # every file written...
            raise KeyboardInterrupt("killed while saving")  # ...but the process dies before the rename
        return real_save_state(self, output_dir, **kwargs)

    monkeypatch.setattr(Accelerator, "save_state", save_state_that_dies_on_the_second_save)
    flags = tiny_flags(tmp_path, "--max_train_steps", "3", "--checkpointing_steps", "1")
    with pytest.raises(KeyboardInterrupt):
        train(parse_args(flags), dataset=image_dataset)
    assert saves[1].endswith("checkpoint-2.tmp")
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-1"]
    assert resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-1"

    monkeypatch.setattr(Accelerator, "save_state", real_save_state)
    train(parse_args([*flags, "--resume_from_checkpoint", "latest"]), dataset=image_dataset)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-1",
        "checkpoint-2",
        "checkpoint-3",
    ]


def test_checkpoints_sort_by_step_not_by_name_and_prune_oldest(tmp_path):
    for step in (10, 9, 100):
        (tmp_path / f"checkpoint-{step}").mkdir()
    (tmp_path / "checkpoint-500.tmp").mkdir()
    (tmp_path / "checkpoint-x").mkdir()
    assert [checkpoint_step(p) for p in list_checkpoints(tmp_path)] == [9, 10, 100]
    assert resolve_checkpoint(tmp_path, "latest").name == "checkpoint-100"
    assert [p.name for p in prune_checkpoints(tmp_path, 2)] == ["checkpoint-9"]
    assert prune_checkpoints(tmp_path, None) == []
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-10", "checkpoint-100"]


def test_resume_names_a_folder_latest_or_nothing(tmp_path):
    (tmp_path / "checkpoint-4").mkdir()
    assert resolve_checkpoint(tmp_path, None) is None
    assert resolve_checkpoint(tmp_path / "empty", "latest") is None  # a fresh start, as in diffusers
    assert resolve_checkpoint(tmp_path, "checkpoint-4") == tmp_path / "checkpoint-4"
    assert resolve_checkpoint(tmp_path, str(tmp_path / "checkpoint-4")) == tmp_path / "checkpoint-4"
    with pytest.raises(ValueError, match=r"--resume_from_checkpoint must be 'latest' or an existing checkpoint"):
        resolve_checkpoint(tmp_path, "checkpoint-5")
    (tmp_path / "weights").mkdir()
    with pytest.raises(ValueError, match=r"named 'checkpoint-<step>'"):
        resolve_checkpoint(tmp_path, str(tmp_path / "weights"))


def test_an_interrupted_swap_of_a_re_saved_step_is_finished_at_start(tmp_path):
    # Re-saving step 4 (after resuming from an older checkpoint) moves the old checkpoint-4 aside as
    # checkpoint-4.old, renames the new one in, then deletes the old. Interrupted after the first rename, the old
    # one is the only whole copy and comes back; interrupted after the second, it is deleted.
    (tmp_path / "checkpoint-4.old").mkdir()
    (tmp_path / "checkpoint-4.tmp").mkdir()  # the new state, whole or not: never trusted
    (tmp_path / "checkpoint-6").mkdir()
    (tmp_path / "checkpoint-6.old").mkdir()
    removed = remove_incomplete_checkpoints(tmp_path)
    assert sorted(p.name for p in removed) == ["checkpoint-4.tmp", "checkpoint-6.old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-4", "checkpoint-6"]


def test_resuming_an_older_checkpoint_replaces_later_ones_without_leftovers(tmp_path, image_dataset, tiny_flags):
    flags = tiny_flags(tmp_path, "--checkpointing_steps", "2", "--max_train_steps", "4")
    train(parse_args(flags), dataset=image_dataset)
    first = (tmp_path / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    train(
        parse_args([*flags, "--resume_from_checkpoint", "checkpoint-2", "--learning_rate", "1e-3"]),
        dataset=image_dataset,
    )
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert (tmp_path / "checkpoint-4" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() != first


def test_non_finite_weights_are_never_checkpointed(tmp_path, image_dataset, tiny_flags):
    # Adam moves each weight by about the LR: at 1e39 one step overflows float32 while the loss that produced the
    # step was finite, so only a check of the state itself keeps the "last good checkpoint" good.
    flags = tiny_flags(tmp_path, "--checkpointing_steps", "1", "--lr_warmup_steps", "0", "--max_train_steps", "4")
    with pytest.raises(FloatingPointError, match=r"weights .*not finite after step 1.*last good checkpoint is none"):
        train(parse_args([*flags, "--learning_rate", "1e39"]), dataset=image_dataset)
    assert not list(tmp_path.glob("checkpoint-*"))

    # From a good checkpoint, the same blow-up names it, and it resumes.
    train(parse_args([*flags, "--max_train_steps", "2", "--overwrite_output_dir"]), dataset=image_dataset)
    with pytest.raises(FloatingPointError, match=r"after step 3.*last good checkpoint is .*checkpoint-2:"):
        train(parse_args([*flags, "--resume_from_checkpoint", "latest", "--learning_rate", "1e39"]), image_dataset)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    weights = load_file(tmp_path / "checkpoint-2" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.isfinite(w).all() for w in weights.values())
    train(parse_args([*flags, "--resume_from_checkpoint", "latest"]), dataset=image_dataset)
    assert (tmp_path / "checkpoint-4").is_dir()
