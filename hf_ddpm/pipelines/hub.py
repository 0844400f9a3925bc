"""Upload a saved `DDPMPipeline` folder, with its model card, through huggingface_hub's `create_repo` + `upload_folder`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, create_branch, create_repo, upload_folder

from hf_ddpm.pipelines.model_card import write_model_card

__all__ = ["upload_pipeline_folder"]


def upload_pipeline_folder(
    pipeline: Any,
    folder: str | os.PathLike,
    repo_id: str,
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | bool | None = None,
    create_pr: bool = False,
    revision: str | None = None,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> CommitInfo:
    """
    Create the repo if needed, write the model card into `folder` and upload the folder as one commit.

    A `README.md` already in `folder` (e.g. written by training with its metrics) is kept when neither
    `training_args` nor `metrics` is given; otherwise the card is (re)written.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline saved in `folder`, described by the card.
        folder (`str` or `os.PathLike`):
            A folder written by `DDPMPipeline.save_pretrained`.
        repo_id (`str`):
            `namespace/name` (or `name`, completed with the token's namespace by `create_repo`).
        commit_message (`str`, *optional*, defaults to `None`):
            Commit message; `"Upload DDPMPipeline with hf_ddpm"` if `None`.
        private (`bool`, *optional*, defaults to `None`):
            Visibility of a newly created repo.
        token (`str` or `bool`, *optional*, defaults to `None`):
            Hub token; huggingface_hub's stored one if `None`.
        create_pr (`bool`, *optional*, defaults to `False`):
            Open a pull request instead of committing.
        revision (`str`, *optional*, defaults to `None`):
            Branch to commit to; created from `main` if missing.
        training_args (`dict`, *optional*, defaults to `None`):
            Training settings for the card.
        metrics (`dict`, *optional*, defaults to `None`):
            Measured metrics for the card.
        license (`str`, *optional*, defaults to `"apache-2.0"`):
            License identifier for the card.
        datasets (`list[str]`, *optional*, defaults to `None`):
            Hub dataset ids for the card's metadata.

    Returns:
        `huggingface_hub.CommitInfo`
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string 'namespace/name', got {repo_id!r}.")
    folder = Path(folder)
    repo_id = create_repo(repo_id, private=private, token=token, exist_ok=True, repo_type="model").repo_id

    if training_args is not None or metrics is not None or not (folder / "README.md").is_file():
        write_model_card(
            folder,
            pipeline,
            training_args=training_args,
            metrics=metrics,
            repo_id=repo_id,
            license=license,
            datasets=datasets,
        )
    if revision not in (None, "main"):
        create_branch(repo_id, branch=revision, token=token, exist_ok=True)

    return upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        commit_message=commit_message or f"Upload {type(pipeline).__name__} with hf_ddpm",
        token=token,
        create_pr=create_pr,
        revision=revision,
    )
