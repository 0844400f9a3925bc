"""The model card (a repo's README.md) for a saved `DDPMPipeline`, filled from the `model_card.md` template with
huggingface_hub's `ModelCard`/`ModelCardData`.

A card is public: settings whose name says token/secret or whose value is a local path never reach it.
"""

from __future__ import annotations

import importlib.resources
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

__all__ = ["CARD_TAGS", "build_model_card", "public_settings", "write_model_card"]

CARD_TAGS = ["hf_ddpm", "diffusers", "ddpm", "unconditional-image-generation"]
_SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|auth", re.IGNORECASE)
_PATH_KEY = re.compile(r"(^|_)(dir|path|file|folder|root|cache)s?($|_)", re.IGNORECASE)
_TOKEN_VALUE = re.compile(r"^(hf_|api_)[A-Za-z0-9]{16,}$")
_PLACEHOLDER_REPO_ID = "<namespace>/<model-name>"


def _template_text() -> str:
    """The `model_card.md` template shipped with the package (a link to the top-level file in a source checkout)."""
    return (importlib.resources.files("hf_ddpm") / "model_card.md").read_text(encoding="utf-8")


def _looks_like_local_path(value: str) -> bool:
    if value.startswith(("/", "~", "./", "../", ".\\", "..\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    # A relative path that exists here is a local path too (e.g. output_dir="runs/ddpm"), unless it is a plain word.
    return (os.sep in value or "/" in value) and os.path.exists(value)


def public_settings(settings: dict[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """
    The settings that may appear in a public card, flattened to `{"a.b": "value"}` strings.

    Dropped: keys naming a token, secret, password or credential; keys naming a dir/path/file/folder/root/cache;
    string values that look like a token (`hf_...`) or a local path (absolute, `~`, `./`, or an existing relative path).

    Args:
        settings (`dict`, *optional*):
            Raw settings, e.g. training arguments; `None` gives `{}`.
        prefix (`str`, *optional*, defaults to `""`):
            Prefix for flattened nested keys.

    Returns:
        `dict[str, str]`
    """
    public: dict[str, str] = {}
    for key, value in (settings or {}).items():
        key = str(key)
        if _SECRET_KEY.search(key) or _PATH_KEY.search(key):
            continue
        if isinstance(value, dict):
            public.update(public_settings(value, prefix=f"{prefix}{key}."))
            continue
        if isinstance(value, os.PathLike):
            continue
        if isinstance(value, str) and (_TOKEN_VALUE.match(value) or _looks_like_local_path(value)):
            continue
        if isinstance(value, float):
            value = f"{value:.6g}"
        public[f"{prefix}{key}"] = str(value).replace("|", "\\|")
    return public


def _same(a: Any, b: Any) -> bool:
    # Configs come back from JSON with lists where the preset has tuples.
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


def _preset_name(unet: Any, training_args: dict[str, Any] | None) -> str:
    """The preset the UNet was built from: named in the training settings, else the preset its config matches."""
    named = (training_args or {}).get("preset") or (training_args or {}).get("model_preset")
    if isinstance(named, str):
        return named
    presets = unet.presets() if hasattr(unet, "presets") else {}
    for name, preset in presets.items():
        if all(_same(unet.config.get(key), value) for key, value in preset.items()):
            return name
    return "custom"


def _network_summary(unet: Any, training_args: dict[str, Any] | None) -> dict[str, Any]:
    config = unet.config
    preset = _preset_name(unet, training_args)
    return {
        "class_name": type(unet).__name__,
        "preset": preset or "custom",
        "parameters": f"{sum(p.numel() for p in unet.parameters()):,}",
        "sample_size": config.get("sample_size"),
        "in_channels": config.get("in_channels"),
        "out_channels": config.get("out_channels"),
        "block_out_channels": ", ".join(str(c) for c in config.get("block_out_channels", ())),
        "layers_per_block": config.get("layers_per_block"),
        "down_block_types": ", ".join(config.get("down_block_types", ())),
        "dropout": config.get("dropout"),
    }


def _scheduler_summary(scheduler: Any) -> dict[str, Any]:
    config = scheduler.config
    keys = (
        "num_train_timesteps",
        "beta_schedule",
        "beta_start",
        "beta_end",
        "variance_type",
        "prediction_type",
        "clip_sample",
        "timestep_spacing",
    )
    summary = {key: config.get(key, "n/a") for key in keys}
    summary["class_name"] = type(scheduler).__name__
    return summary


def build_model_card(
    pipeline: Any,
    repo_id: str | None = None,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> ModelCard:
    """
    Fill the `model_card.md` template for `pipeline`.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline the card describes (its UNet and scheduler).
        repo_id (`str`, *optional*, defaults to `None`):
            Repo id used in the usage snippets; a placeholder if `None`.
        training_args (`dict`, *optional*, defaults to `None`):
            Training settings; filtered by [`public_settings`].
        metrics (`dict`, *optional*, defaults to `None`):
            Measured metrics, e.g. `{"fid": 3.17, "bits_per_dim": 3.75}`; filtered the same way.
        license (`str`, *optional*, defaults to `"apache-2.0"`):
            License identifier for the YAML front matter.
        datasets (`list[str]`, *optional*, defaults to `None`):
            Hub dataset ids the model was trained on, for the front matter; local paths are dropped.

    Returns:
        `huggingface_hub.ModelCard`
    """
    # Only Hub dataset ids belong in the metadata; a local dataset folder would leak a path.
    datasets = [d for d in datasets or [] if isinstance(d, str) and not _looks_like_local_path(d)] or None
    card_data = ModelCardData(
        license=license,
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=list(CARD_TAGS),
        datasets=datasets,
    )
    repo_id = repo_id or _PLACEHOLDER_REPO_ID
    return ModelCard.from_template(
        card_data,
        template_str=_template_text(),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        network=_network_summary(pipeline.unet, training_args),
        scheduler=_scheduler_summary(pipeline.scheduler),
        scheduler_class=type(pipeline.scheduler).__name__,
        default_steps=getattr(pipeline, "default_num_inference_steps", "the default number of"),
        training_args=public_settings(training_args),
        metrics=public_settings(metrics),
    )


def write_model_card(
    folder: str | os.PathLike,
    pipeline: Any,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    repo_id: str | None = None,
    license: str = "apache-2.0",
    datasets: list[str] | None = None,
) -> ModelCard:
    """
    Write `folder/README.md`, the model card of a saved pipeline (see [`build_model_card`] for the arguments).

    Without `repo_id` the card is titled after the folder and its snippets load `"<namespace>/<folder name>"`: the
    repo that `push_to_hub` creates by default for that folder.

    Returns:
        `huggingface_hub.ModelCard`: the card that was written.
    """
    repo_id = repo_id or f"<namespace>/{Path(folder).resolve().name}"
    card = build_model_card(
        pipeline, repo_id=repo_id, training_args=training_args, metrics=metrics, license=license, datasets=datasets
    )
    card.save(Path(folder) / "README.md")
    return card
