"""Checkpoints: whole or absent, found by name, pruned oldest first."""

import pytest
from accelerate import Accelerator

from hf_ddpm.training.args import parse_args
from hf_ddpm.training.checkpoint import checkpoint_step, list_checkpoints, prune_checkpoints, resolve_checkpoint
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
