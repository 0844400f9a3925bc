"""Save layout of `DDPMPipeline` and its conversion to stock diffusers objects.

`save_pipeline` (behind `DDPMPipeline.save_pretrained`) writes, component by component, what people without hf_ddpm
can load:

- By default diffusers' own layout, as `diffusers.DDPMPipeline(UNet2DModel, DDPMScheduler | DDIMScheduler)` writes
  it: `model_index.json` naming `"DDPMPipeline"` and `["diffusers", ...]` entries, `unet/config.json` with
  UNet2DModel's fields, safetensors weights. Stock `diffusers.DiffusionPipeline.from_pretrained(folder)` loads it with
  no remote code and no hf_ddpm; `hf_ddpm.DDPMPipeline.from_pretrained` loads it into hf_ddpm's classes.
- A component stock diffusers cannot express (`stock_incompatibilities` says which and why, e.g. a scheduler with
  `timestep_spacing="quadratic"`) is saved as hf_ddpm's class in diffusers' custom-component layout instead, with a
  `UserWarning`: its `model_index.json` entry names a short module (`["scheduling_ddim", "DDIMScheduler"]`) that sits
  in the component's folder (or beside `model_index.json` for the pipeline) and re-exports hf_ddpm's class. Loading
  it then needs hf_ddpm installed and `DiffusionPipeline.from_pretrained(..., trust_remote_code=True)`, or
  `hf_ddpm.DDPMPipeline.from_pretrained`. Diffusers cannot fetch a component whose module is a dotted package path
  from a repo id, hence the short module names.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.schedulers.scheduling_ddpm import LEARNED_VARIANCE_TYPES

__all__ = ["save_pipeline", "stock_incompatibilities", "to_stock_pipeline", "write_remote_code_layout"]

MODEL_INDEX = "model_index.json"
# The pipeline's own entry in `stock_incompatibilities` (the components use their attribute names).
PIPELINE = "pipeline"
STOCK_TIMESTEP_SPACINGS = ("linspace", "leading", "trailing")
_RE_EXPORT_HEADER = "# Written by hf_ddpm's save_pretrained"
_RE_EXPORT = (
    _RE_EXPORT_HEADER + " so that diffusers' `DiffusionPipeline.from_pretrained(...,\n"
    "# trust_remote_code=True)` finds hf_ddpm's class. It only re-exports it: `pip install hf_ddpm` provides the code.\n"
    "from {module} import {name}  # noqa: F401\n"
)
# What building a stock object from a config it cannot take raises.
_CONFIG_ERRORS = (ValueError, TypeError, KeyError, NotImplementedError, RuntimeError)


class _NotStock(Exception):
    """A component that stock diffusers cannot express; the message says why."""


# ------------------------------------------------------------------------------------------ stock counterparts
def _plain(value: Any) -> Any:
    """A config value as JSON stores it (tuples become lists, arrays lists), so that equal configs compare equal."""
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def _config_differences(ours: dict[str, Any], stock: Any) -> list[str]:
    """How building the stock object `stock` from the config `ours` lost or changed it."""
    # Keys outside the signature are stored but ignored (diffusers only logs a warning).
    accepted = set(inspect.signature(type(stock).__init__).parameters)
    ignored = [key for key in ours if key not in accepted]
    changed = [key for key in ours if key in accepted and _plain(stock.config.get(key)) != _plain(ours[key])]
    return [f"{key} is ignored" for key in ignored] + [
        f"{key}={ours[key]!r} becomes {stock.config.get(key)!r}" for key in changed
    ]


def _public_config(component: Any) -> dict[str, Any]:
    return {key: value for key, value in component.config.items() if not key.startswith("_")}


def _stock_unet(unet: torch.nn.Module) -> diffusers.UNet2DModel:
    """A `diffusers.UNet2DModel` with `unet`'s config and a copy of its weights, on its device and in its dtype."""
    if not isinstance(unet, (DDPMUNet2DModel, diffusers.UNet2DModel)):
        raise _NotStock(f"{type(unet).__name__} has no stock diffusers counterpart")
    config = _public_config(unet)
    try:
        stock = diffusers.UNet2DModel.from_config(config)
        # strict: every tensor must land in the stock model, or it is not the same network. assign: the copies keep
        # the source's device and dtype.
        weights = {key: tensor.detach().clone() for key, tensor in unet.state_dict().items()}
        stock.load_state_dict(weights, strict=True, assign=True)
    except _CONFIG_ERRORS as err:
        raise _NotStock(f"diffusers.UNet2DModel cannot hold it ({err})") from err
    differences = _config_differences(config, stock)
    if differences:
        raise _NotStock(f"diffusers.UNet2DModel would change its config: {'; '.join(differences)}")
    return stock.eval()


def _stock_scheduler_class(scheduler: Any) -> type:
    # hf_ddpm's schedulers subclass diffusers' and keep their config keys.
    for stock_cls in (diffusers.DDIMScheduler, diffusers.DDPMScheduler):
        if isinstance(scheduler, stock_cls):
            return stock_cls
    if type(scheduler).__module__.split(".")[0] == "diffusers":
        return type(scheduler)
    raise _NotStock(f"{type(scheduler).__name__} has no stock diffusers counterpart")


def _stock_scheduler(scheduler: Any) -> Any:
    """The stock diffusers scheduler with `scheduler`'s config, checked to keep every key and the noise schedule."""
    stock_cls = _stock_scheduler_class(scheduler)
    if type(scheduler) is stock_cls:  # already diffusers' own class: a copy, whatever its config holds
        return stock_cls.from_config(scheduler.config)
    config = _public_config(scheduler)
    spacing = config.get("timestep_spacing")
    if spacing is not None and spacing not in STOCK_TIMESTEP_SPACINGS:
        raise _NotStock(
            f"timestep_spacing={spacing!r} exists only in hf_ddpm's schedulers; stock diffusers supports "
            f"{list(STOCK_TIMESTEP_SPACINGS)}"
        )
    try:
        stock = stock_cls.from_config(config)
    except _CONFIG_ERRORS as err:
        raise _NotStock(f"diffusers.{stock_cls.__name__} rejects its config ({err})") from err
    differences = _config_differences(config, stock)
    if differences:
        raise _NotStock(f"diffusers.{stock_cls.__name__} would change its config: {'; '.join(differences)}")
    ours, theirs = getattr(scheduler, "alphas_cumprod", None), getattr(stock, "alphas_cumprod", None)
    # ᾱ_t from the same config; float32 (theirs) against float64 tables drifts by ~1e-6 relative over T = 1000.
    if ours is not None and theirs is not None and not torch.allclose(theirs.double(), ours.double(), rtol=1e-4):
        raise _NotStock(f"diffusers.{stock_cls.__name__} computes a different noise schedule ᾱ_t from its config")
    return stock


def _pipeline_incompatibility(unet: Any, scheduler: Any) -> str | None:
    """Why stock `diffusers.DDPMPipeline.__call__` cannot sample with these components, or None."""
    config = getattr(unet, "config", {})
    learned_variance = config.get("out_channels") == 2 * config.get("in_channels", -1)
    takes_variance = (
        isinstance(scheduler, diffusers.DDPMScheduler) and scheduler.config.variance_type in LEARNED_VARIANCE_TYPES
    )
    if learned_variance and not takes_variance:
        return (
            "its UNet predicts a learned variance (out_channels = 2 × in_channels) that its "
            f"{type(scheduler).__name__} does not use; stock DDPMPipeline would pass all channels to scheduler.step, "
            "hf_ddpm's drops the variance"
        )
    if config.get("num_class_embeds") is not None:
        return (
            "its UNet is class-conditional (num_class_embeds is set); stock DDPMPipeline passes no class_labels, "
            "hf_ddpm's samples classes with classifier-free guidance"
        )
    return None


def _stock_components(pipeline: Any) -> tuple[dict[str, Any], dict[str, str]]:
    """Each component as stock diffusers holds it, or as it is where stock cannot; and why not, per component."""
    components, reasons = {}, {}
    for name, to_stock in (("unet", _stock_unet), ("scheduler", _stock_scheduler)):
        component = getattr(pipeline, name)
        try:
            components[name] = to_stock(component)
        except _NotStock as err:
            components[name], reasons[name] = component, str(err)
    pipeline_reason = _pipeline_incompatibility(pipeline.unet, pipeline.scheduler)
    if pipeline_reason is not None:
        reasons[PIPELINE] = pipeline_reason
    return components, reasons


def stock_incompatibilities(pipeline: Any) -> dict[str, str]:
    """
    What of `pipeline` stock diffusers cannot express, and why.

    Every component not listed is saved by `save_pretrained` in diffusers' own layout; a listed one falls back to the
    custom-component layout. This builds the stock counterparts to compare them (a copy of the UNet's weights).

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline to check.

    Returns:
        `dict[str, str]`: component (`"unet"`, `"scheduler"`, or `"pipeline"` for the pipeline class) → reason; empty
        when stock diffusers holds all of it.
    """
    return _stock_components(pipeline)[1]


def to_stock_pipeline(pipeline: Any) -> diffusers.DDPMPipeline:
    """
    Stock diffusers objects for `pipeline`: `diffusers.DDPMPipeline(UNet2DModel, stock scheduler)`, a copy of the
    weights.

    Args:
        pipeline (`DDPMPipeline`):
            The hf_ddpm pipeline to convert.

    Returns:
        `diffusers.DDPMPipeline`
    """
    components, reasons = _stock_components(pipeline)
    if reasons:
        details = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise ValueError(f"The pipeline has no stock diffusers equivalent: {details}. Change it before converting.")
    stock = diffusers.DDPMPipeline(**components)
    stock.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
    return stock


# ------------------------------------------------------------------------------------------------------ save
def save_pipeline(
    pipeline: Any,
    save_directory: str | os.PathLike,
    variant: str | None = None,
    max_shard_size: int | str | None = None,
) -> dict[str, str]:
    """
    Write `pipeline` as stock diffusers writes it, each component stock diffusers cannot express in the
    custom-component layout (with a `UserWarning`). See the module docstring for the layouts.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline to save.
        save_directory (`str` or `os.PathLike`):
            Folder to write; created if missing. Re-export modules an earlier save left there are removed.
        variant (`str`, *optional*, defaults to `None`):
            Weight file variant (e.g. `"fp16"`).
        max_shard_size (`int` or `str`, *optional*, defaults to `None`):
            Largest weight file before sharding, as in diffusers.

    Returns:
        `dict[str, str]`: the components saved in the custom-component layout → why (see `stock_incompatibilities`).
    """
    folder = Path(save_directory)
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"save_directory={os.fspath(save_directory)!r} is an existing file, not a folder.")
    components, reasons = _stock_components(pipeline)
    for name, reason in reasons.items():
        warnings.warn(
            f"{name} is saved in diffusers' custom-component layout because stock diffusers cannot express it: "
            f"{reason}. Loading it needs hf_ddpm installed and DiffusionPipeline.from_pretrained(..., "
            "trust_remote_code=True), or hf_ddpm.DDPMPipeline.from_pretrained.",
            UserWarning,
            stacklevel=3,
        )
    pipeline_cls = type(pipeline) if PIPELINE in reasons else diffusers.DDPMPipeline
    to_save = pipeline_cls(**components)
    if getattr(pipeline, "id2label", None) is not None:
        to_save.register_to_config(id2label=pipeline.id2label)  # class names, for get_label_ids after loading
    # The base class's method: hf_ddpm's DDPMPipeline.save_pretrained calls this function.
    DiffusionPipeline.save_pretrained(
        to_save, folder, safe_serialization=True, variant=variant, max_shard_size=max_shard_size
    )
    _remove_re_exports(folder)
    _drop_name_or_path(folder)
    if reasons:
        write_remote_code_layout(folder, to_save)
    return reasons


def _drop_name_or_path(folder: Path) -> None:
    """diffusers writes where a model was loaded from (`_name_or_path`, a local path after
    `from_pretrained("/home/...")`) into its config.json; a shared folder must not carry it."""
    for config_file in [*folder.glob("*/config.json"), *folder.glob("*/scheduler_config.json")]:
        config = json.loads(config_file.read_text(encoding="utf-8"))
        if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
            config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _remove_re_exports(folder: Path) -> None:
    """Re-export modules of an earlier save into the same folder; left there they would look like live code."""
    for module in [*folder.glob("*.py"), *folder.glob("*/*.py")]:
        if module.read_text(encoding="utf-8", errors="replace").startswith(_RE_EXPORT_HEADER):
            module.unlink()


def write_remote_code_layout(folder: str | os.PathLike, pipeline: Any) -> dict:
    """
    Turn the entries of hf_ddpm's classes in a folder written by `DiffusionPipeline.save_pretrained` into diffusers'
    custom-component layout.

    Every hf_ddpm class (the pipeline and each component) gets a re-export module named after the last part of its
    module path, and its `model_index.json` entry points at that module. Stock components keep their
    `["diffusers", ...]` entries.

    Args:
        folder (`str` or `os.PathLike`):
            The folder `save_pretrained` just wrote.
        pipeline (`DiffusionPipeline`):
            The pipeline that was saved.

    Returns:
        `dict`: the new content of `model_index.json`.
    """
    folder = Path(folder)
    index = json.loads((folder / MODEL_INDEX).read_text(encoding="utf-8"))

    pipeline_cls = type(pipeline)
    if _is_hf_ddpm_class(pipeline_cls):
        module_name = _write_re_export(folder, pipeline_cls)
        index["_class_name"] = [module_name, pipeline_cls.__name__]

    for name, entry in list(index.items()):
        if name.startswith("_") or not isinstance(entry, list) or entry[0] is None:
            continue
        component_cls = type(getattr(pipeline, name))
        if _is_hf_ddpm_class(component_cls):
            module_name = _write_re_export(folder / name, component_cls)
            index[name] = [module_name, component_cls.__name__]

    # Same serialisation as diffusers' ConfigMixin.to_json_string, so diffs between saves stay small.
    (folder / MODEL_INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return index


def _is_hf_ddpm_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] == "hf_ddpm"


def _write_re_export(folder: Path, cls: type) -> str:
    module_name = cls.__module__.rsplit(".", 1)[-1]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{module_name}.py").write_text(
        _RE_EXPORT.format(module=cls.__module__, name=cls.__name__), encoding="utf-8"
    )
    return module_name
