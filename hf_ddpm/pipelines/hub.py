"""Upload a saved `DDPMPipeline` folder, with its model card, through huggingface_hub's `create_repo` + `upload_folder`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, create_branch, create_repo, upload_folder

from hf_ddpm.pipelines.model_card import write_model_card

__all__ = ["upload_pipeline_folder"]

# The options of `DDPMPipeline.push_to_hub` that describe the model (for the card) rather than the commit.
CARD_OPTIONS = ("training_args", "metrics", "license", "datasets")


def upload_pipeline_folder(pipeline: Any, folder: str | os.PathLike, repo_id: str, **options: Any) -> CommitInfo:
    """
    Create the repo if needed, write the model card into `folder` and upload the folder as one commit.

    `options` are the keyword arguments of `DDPMPipeline.push_to_hub` (documented there), all optional. A `README.md`
    already in `folder` (e.g. written by training) is kept when neither `training_args` nor `metrics` is given.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string 'namespace/name', got {repo_id!r}.")
    folder = Path(folder)
    card_options = {name: options.pop(name) for name in CARD_OPTIONS if name in options}
    token, revision = options.get("token"), options.get("revision")
    repo_id = create_repo(
        repo_id, private=options.pop("private", None), token=token, exist_ok=True, repo_type="model"
    ).repo_id

    describes_training = card_options.get("training_args") is not None or card_options.get("metrics") is not None
    if describes_training or not (folder / "README.md").is_file():
        write_model_card(folder, pipeline, repo_id=repo_id, **card_options)
    if revision not in (None, "main"):
        create_branch(repo_id, branch=revision, token=token, exist_ok=True)

    options["commit_message"] = options.get("commit_message") or f"Upload {type(pipeline).__name__} with hf_ddpm"
    # What is left is the commit's own options: commit_message, token, create_pr, revision.
    return upload_folder(repo_id=repo_id, folder_path=folder, **options)
