"""The UNet a training run builds: read from `--model_config` (a preset or a UNet config), sized for the data."""

from __future__ import annotations

import json
import os

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES

__all__ = ["build_unet", "load_unet_config"]


def _read_config_file(path: str) -> dict:
    """A UNet config JSON file's fields; a malformed file is named with the JSON error's line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"--model_config {path!r} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}."
        ) from e
    if not isinstance(config, dict):
        raise ValueError(
            f"--model_config {path!r} must hold a JSON object of UNet config fields, got a {type(config).__name__}."
        )
    return {key: value for key, value in config.items() if not key.startswith("_")}


def load_unet_config(model_config: str) -> dict:
    """
    The UNet config that `--model_config` (or train_unconditional.py's `--model_config_name_or_path`) names.

    Args:
        model_config (`str`):
            A `DDPMUNet2DModel.presets()` name, or what `ConfigMixin.load_config` reads: a config JSON, a folder or
            Hub repo id holding `config.json`, or a saved pipeline (folder or repo) holding `unet/config.json`.
            UNet2DModel's field names.

    Returns:
        `dict`: the config's fields, without the `_`-prefixed bookkeeping (`_class_name`, `_diffusers_version`, ...).

    Raises:
        `ValueError`: naming the flag and the value, when neither a preset nor a readable config.
    """
    presets = DDPMUNet2DModel.presets()
    if model_config in presets:
        return presets[model_config]
    if os.path.isfile(model_config):
        return _read_config_file(model_config)
    try:
        config = DDPMUNet2DModel.load_config(model_config)
    except (OSError, ValueError) as error:
        try:  # a pipeline keeps its UNet's config in unet/
            config = DDPMUNet2DModel.load_config(model_config, subfolder="unet")
        except (OSError, ValueError):
            raise ValueError(
                f"--model_config {model_config!r} is neither a preset (one of {sorted(presets)}) nor a UNet config "
                f"that can be read (a config JSON, a folder or Hub repo with config.json, or a pipeline with "
                f"unet/config.json): {error}"
            ) from error
    return {key: value for key, value in config.items() if not key.startswith("_")}


def build_unet(
    model_config: str, resolution: int, variance_type: str = "fixed_small", num_classes: int | None = None
) -> DDPMUNet2DModel:
    """
    A freshly initialised UNet from a preset name or a UNet config, sized for the training images (and classes).

    Args:
        model_config (`str`):
            A preset name or a config source, as [`load_unet_config`] takes it.
        resolution (`int`):
            The training resolution; becomes `sample_size`.
        variance_type (`str`, *optional*, defaults to `"fixed_small"`):
            The scheduler's variance type; a learned one doubles `out_channels` (prediction, then variance values).
        num_classes (`int`, *optional*, defaults to `None`):
            The classes of a class-conditional UNet: `num_class_embeds = num_classes + 1`, the last index being the
            null label ∅ of classifier-free guidance. `None` builds an unconditional UNet.

    Returns:
        `DDPMUNet2DModel`: the model.

    Raises:
        `ValueError`: naming `--model_config`, when the config cannot be read, describes a network this model does
            not build, or sets a `num_class_embeds` that does not fit `num_classes`.
    """
    config = load_unet_config(model_config)
    config["num_class_embeds"] = _num_class_embeds(model_config, config.get("num_class_embeds"), num_classes)
    in_channels = config.get("in_channels", 3)
    config["sample_size"] = resolution
    config["out_channels"] = 2 * in_channels if variance_type in LEARNED_VARIANCE_TYPES else in_channels
    try:
        return DDPMUNet2DModel.from_config(config)
    except ValueError as error:
        raise ValueError(f"--model_config {model_config!r}: {error}") from error


def _num_class_embeds(model_config: str, configured: int | None, num_classes: int | None) -> int | None:
    # A config may fix the table's size already (e.g. a conditional pipeline's unet/); it must then fit the data.
    if num_classes is None:
        if configured is not None:
            raise ValueError(
                f"--model_config {model_config!r} sets num_class_embeds={configured}, a class-conditional UNet: train "
                "it with --class_conditional, or use a config without num_class_embeds."
            )
        return None
    if configured is not None and configured != num_classes + 1:
        raise ValueError(
            f"--model_config {model_config!r} sets num_class_embeds={configured}, but the data has {num_classes} "
            f"classes: --class_conditional needs num_class_embeds = {num_classes} + 1 (the null label ∅ last); set "
            "it so, or leave it out of the config."
        )
    return num_classes + 1
