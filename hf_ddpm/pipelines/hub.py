"""Push a saved `DDPMPipeline` folder, with its model card, through huggingface_hub's `create_repo` +
`create_commit`.

Only the pipeline goes up: `model_index.json`, the re-export modules beside it, its component folders, the card
(`README.md`), `training_summary.json` and `images/samples.png`. Checkpoints, logs and other files of a training
folder stay local. Text files are published without Hub tokens or the local paths diffusers records
(`_name_or_path`), and a push that would still carry the folder's absolute path or the home directory is refused.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo, CommitOperationAdd, create_branch, create_commit, create_repo

from hf_ddpm.pipelines.model_card import (
    CARD_MARKER,
    SAMPLE_GRID_FILE,
    SUMMARY_FILE,
    redact,
    write_model_card,
)

__all__ = ["push_pipeline", "upload_pipeline_folder"]

# The options of `DDPMPipeline.push_to_hub` that describe the model (for the card) rather than the commit.
CARD_OPTIONS = ("training_args", "metrics", "license", "datasets", "sample_grid")
TEXT_SUFFIXES = (".json", ".md", ".py", ".txt", ".yaml", ".yml")
# What `write_model_card` reads from a saved folder besides the pipeline: copied along when that folder is pushed.
CARD_SOURCES = (SUMMARY_FILE, SAMPLE_GRID_FILE, "samples.png")


def _pipeline_files(folder: Path) -> list[str]:
    """The files of the saved pipeline and its card, relative to `folder`, as POSIX paths."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        raise ValueError(f"folder={str(folder)!r} holds no model_index.json: save the pipeline there first.")
    index = json.loads(index_path.read_text(encoding="utf-8"))
    components = [name for name, entry in index.items() if not name.startswith("_") and isinstance(entry, list)]
    files = [folder / name for name in ("model_index.json", "README.md", SUMMARY_FILE, SAMPLE_GRID_FILE)]
    files += sorted(folder.glob("*.py"))
    for name in components:
        files += sorted(p for p in (folder / name).rglob("*") if "__pycache__" not in p.parts)
    return [p.relative_to(folder).as_posix() for p in files if p.is_file()]


def _public_text(text: str, path: str, folder: Path, token: Any) -> str:
    """`text` as it may be published: tokens redacted, local `_name_or_path` entries of JSON configs dropped."""
    text = redact(text, secrets=[token])
    if path.endswith(".json"):
        config = json.loads(text)
        if isinstance(config, dict) and os.path.isabs(str(config.get("_name_or_path", ""))):
            del config["_name_or_path"]
            # Same serialisation as diffusers' ConfigMixin.to_json_string.
            text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    for local in {str(folder.resolve()), os.path.expanduser("~")}:
        if len(local) > 1 and local in text:
            raise ValueError(f"{path} in folder={str(folder)!r} names the local path {local!r}; remove it first.")
    return text


def _commit_operations(folder: Path, token: Any) -> list[CommitOperationAdd]:
    operations = []
    for path in _pipeline_files(folder):
        if path.endswith(TEXT_SUFFIXES):
            text = _public_text((folder / path).read_text(encoding="utf-8"), path, folder, token)
            operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=text.encode("utf-8")))
        else:
            operations.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=str(folder / path)))
    return operations


def _wants_card(folder: Path) -> bool:
    """A README.md written by hand is kept; hf_ddpm's own card is rewritten for the repo it goes to."""
    readme = folder / "README.md"
    return not readme.is_file() or CARD_MARKER in readme.read_text(encoding="utf-8")


def upload_pipeline_folder(pipeline: Any, folder: str | os.PathLike, repo_id: str, **options: Any) -> CommitInfo:
    """
    Create the repo if needed, write the model card into `folder` and upload the pipeline's files as one commit.

    `options` are the keyword arguments of `DDPMPipeline.push_to_hub` (documented there), all optional. A README.md
    in `folder` that hf_ddpm did not write is uploaded as it is. The repo's URL is printed once the commit is made.

    Returns:
        `huggingface_hub.CommitInfo`: the commit that was made.
    """
    if not isinstance(repo_id, str) or not repo_id:
        raise ValueError(f"repo_id must be a non-empty string 'namespace/name', got {repo_id!r}.")
    folder = Path(folder)
    card_options = {name: options.pop(name) for name in CARD_OPTIONS if name in options}
    token, revision, create_pr = options.get("token"), options.get("revision"), options.get("create_pr")
    operations = _commit_operations(folder, token)  # refuses a folder that is not a saved pipeline, before any call
    repo_id = create_repo(
        repo_id, private=options.pop("private", None), token=token, exist_ok=True, repo_type="model"
    ).repo_id

    if _wants_card(folder):
        write_model_card(folder, pipeline, repo_id=repo_id, **card_options)
        operations = _commit_operations(folder, token)
    if revision not in (None, "main"):
        create_branch(repo_id, branch=revision, token=token, exist_ok=True)

    commit_message = options.pop("commit_message", None) or f"Upload {type(pipeline).__name__} with hf_ddpm"
    # What is left is the commit's own options: token, create_pr, revision.
    commit = create_commit(repo_id, operations, commit_message=commit_message, **options)
    url = commit.pr_url if create_pr else commit.repo_url + (f"/tree/{revision}" if revision else "")
    print(f"Pushed {type(pipeline).__name__} to {url}")
    return commit


def push_pipeline(pipeline: Any, repo_id: str, **options: Any) -> CommitInfo:
    """
    `DDPMPipeline.push_to_hub`: save `pipeline` to a temporary folder and upload it with [`upload_pipeline_folder`].

    A pipeline loaded from a local folder brings that folder's training summary and sample grid along, so pushing
    `DDPMPipeline.from_pretrained(trained_folder)` keeps the card's training table, data line and grid.
    """
    with tempfile.TemporaryDirectory() as folder:
        pipeline.save_pretrained(folder)
        source = pipeline.name_or_path
        if isinstance(source, str) and os.path.isdir(source):
            _copy_card_sources(Path(source), Path(folder))
        return upload_pipeline_folder(pipeline, folder, repo_id, **options)


def _copy_card_sources(source: Path, folder: Path) -> None:
    training_grids = sorted((source / "samples").glob("step-*.png"))
    for path in [*CARD_SOURCES, *(p.relative_to(source).as_posix() for p in training_grids[-1:])]:
        if (source / path).is_file():
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / path, folder / path)
