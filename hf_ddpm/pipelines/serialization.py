"""Save layout, loading and conversion for `DDPMPipeline`.

A saved folder loads three ways:

- `hf_ddpm.DDPMPipeline.from_pretrained(folder_or_repo_id)`: `load_pipeline` below reads `model_index.json` and
  builds hf_ddpm's components itself. It has to: with the custom-component layout, diffusers 0.42 asks for
  `trust_remote_code` on every load, even through a subclass's `from_pretrained`.
- `diffusers.DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)`: diffusers' custom-component
  layout. `model_index.json` names `["pipeline_ddpm", "DDPMPipeline"]`, `["unet_2d", "DDPMUNet2DModel"]`, ... and a
  tiny module with that name sits beside `model_index.json` (the pipeline) or in the component's folder, re-exporting
  hf_ddpm's class. Diffusers cannot fetch a component whose module is a dotted package path from a repo id, so the
  package path diffusers writes by default is replaced by these short module names.
- Stock checkpoints (UNet2DModel + diffusers' DDPMScheduler/DDIMScheduler) come in as hf_ddpm's classes, and
  `to_stock_pipeline` hands back stock diffusers objects.
"""

from __future__ import annotations

import inspect
import json
import os
from pathlib import Path
from typing import Any

import diffusers
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

__all__ = [
    "PICKLE_SUFFIXES",
    "check_weight_files",
    "load_pipeline",
    "to_stock_pipeline",
    "write_remote_code_layout",
]

MODEL_INDEX = "model_index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Pipelines whose model_index.json this loader understands: ours and the two stock unconditional ones.
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
UNET_CLASSES = ("DDPMUNet2DModel", "UNet2DModel")
_RE_EXPORT = (
    "# Written by hf_ddpm's save_pretrained so that diffusers' `DiffusionPipeline.from_pretrained(...,\n"
    "# trust_remote_code=True)` finds hf_ddpm's class. It only re-exports it: `pip install hf_ddpm` provides the code.\n"
    "from {module} import {name}  # noqa: F401\n"
)
_LOADER_KWARGS = {
    "allow_pickle",
    "unet",
    "scheduler",
    "torch_dtype",
    "variant",
    "revision",
    "cache_dir",
    "token",
    "local_files_only",
    "force_download",
    "trust_remote_code",
}


# --------------------------------------------------------------------------------------------------- save layout
def write_remote_code_layout(folder: str | os.PathLike, pipeline: Any) -> dict:
    """
    Turn a folder written by `DiffusionPipeline.save_pretrained` into diffusers' custom-component layout.

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


# --------------------------------------------------------------------------------------------------------- load
def check_weight_files(files: list[str], component: str, where: str, allow_pickle: bool) -> None:
    """
    Refuse a component whose weights exist only as pickle files unless the caller allowed pickle.

    Args:
        files (`list[str]`):
            Paths relative to the pipeline folder (or repo), with `/` separators.
        component (`str`):
            The component folder to check, e.g. `"unet"`.
        where (`str`):
            The folder or repo id, for the error message.
        allow_pickle (`bool`):
            Whether pickled weights may be loaded.
    """
    mine = [f for f in files if f.startswith(f"{component}/")]
    if any(f.endswith(".safetensors") for f in mine):
        return
    pickled = [f for f in mine if f.endswith(PICKLE_SUFFIXES)]
    if not pickled:
        raise ValueError(f"{where} has no weights for {component!r}: expected {component}/*.safetensors.")
    if not allow_pickle:
        raise ValueError(
            f"{where} holds only pickled weights for {component!r} ({', '.join(sorted(pickled))}) and no safetensors "
            "file. hf_ddpm loads safetensors only, because unpickling can run arbitrary code. If you trust the "
            "source, pass allow_pickle=True (then re-save with save_pretrained to get safetensors)."
        )


def _resolve_folder(path: str, hub_kwargs: dict, allow_pickle: bool) -> Path:
    """A local folder as is; a repo id downloaded (configs and weights only, never code) with huggingface_hub."""
    if os.path.isdir(path):
        return Path(path)
    if os.path.exists(path) or path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ValueError(
            f"pretrained_model_name_or_path={path!r} is neither a local folder nor a Hub repo id of the form "
            "'namespace/name'."
        )

    patterns = [
        MODEL_INDEX,
        "*/config.json",
        "*/scheduler_config.json",
        "*/*.safetensors",
        "*/*.safetensors.index.json",
    ]
    if allow_pickle:
        patterns += [f"*/*{suffix}" for suffix in PICKLE_SUFFIXES] + ["*/*.bin.index.json"]
    try:
        revision = hub_kwargs.get("revision")
        if not hub_kwargs.get("local_files_only"):
            # List the repo first so a pickle-only repo is refused before anything is downloaded, and pin the commit
            # so the listing and the download see the same files.
            info = HfApi().model_info(path, revision=revision, token=hub_kwargs.get("token"))
            files = [s.rfilename for s in info.siblings or []]
            if MODEL_INDEX not in files:
                raise ValueError(f"Hub repo {path!r} has no {MODEL_INDEX}: it is not a diffusers pipeline.")
            check_weight_files(files, "unet", f"Hub repo {path!r}", allow_pickle)
            revision = info.sha or revision
        return Path(snapshot_download(path, allow_patterns=patterns, **{**hub_kwargs, "revision": revision}))
    except RepositoryNotFoundError as err:
        raise ValueError(
            f"pretrained_model_name_or_path={path!r} is not a local folder and no model repo {path!r} exists on "
            f"{constants.ENDPOINT} (or it is private and no valid token was given)."
        ) from err
    except RevisionNotFoundError as err:
        raise ValueError(f"revision={hub_kwargs.get('revision')!r} does not exist in Hub repo {path!r}.") from err


def _scheduler_class(library: str | None, class_name: str) -> type:
    ours = {"DDPMScheduler": DDPMScheduler, "DDIMScheduler": DDIMScheduler}
    if class_name in ours:
        return ours[class_name]
    stock = getattr(diffusers, class_name, None) if library == "diffusers" else None
    if isinstance(stock, type) and issubclass(stock, SchedulerMixin):
        return stock
    raise ValueError(
        f"scheduler [{library!r}, {class_name!r}] in {MODEL_INDEX} is not supported: expected DDPMScheduler, "
        "DDIMScheduler (loaded as hf_ddpm's) or a diffusers scheduler."
    )


def load_pipeline(pipeline_cls: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs) -> Any:
    """
    Build a `DDPMPipeline` from a saved folder or repo id without executing anything it contains.

    See `DDPMPipeline.from_pretrained` for the arguments.
    """
    unknown = set(kwargs) - _LOADER_KWARGS
    if unknown:
        raise TypeError(
            f"from_pretrained got unexpected keyword arguments {sorted(unknown)}; accepted: {sorted(_LOADER_KWARGS)}."
        )
    allow_pickle = bool(kwargs.pop("allow_pickle", False))
    unet = kwargs.pop("unet", None)
    scheduler = kwargs.pop("scheduler", None)
    torch_dtype = kwargs.pop("torch_dtype", None)
    variant = kwargs.pop("variant", None)
    kwargs.pop("trust_remote_code", None)  # nothing from the folder is executed, so there is nothing to trust
    hub_kwargs = {k: v for k, v in kwargs.items() if v is not None}

    path = os.fspath(pretrained_model_name_or_path)
    folder = _resolve_folder(path, hub_kwargs, allow_pickle)
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        raise ValueError(
            f"{path!r} has no {MODEL_INDEX}: it is not a saved pipeline. Save one with DDPMPipeline.save_pretrained, "
            "or load a lone UNet with DDPMUNet2DModel.from_pretrained."
        )
    index = json.loads(index_file.read_text(encoding="utf-8"))

    class_name = index.get("_class_name")
    class_name = class_name[1] if isinstance(class_name, list) else class_name
    if class_name not in SUPPORTED_PIPELINES:
        raise ValueError(f"{path!r} holds a {class_name!r}; DDPMPipeline loads only {list(SUPPORTED_PIPELINES)}.")
    for name in ("unet", "scheduler"):
        if not isinstance(index.get(name), list) or len(index[name]) != 2:
            raise ValueError(f"{MODEL_INDEX} in {path!r} has no {name!r} component entry [library, class].")

    if unet is None:
        library, unet_class_name = index["unet"]
        if unet_class_name not in UNET_CLASSES:
            raise ValueError(
                f"unet class {unet_class_name!r} in {MODEL_INDEX} is not supported: expected one of {list(UNET_CLASSES)}."
            )
        files = [p.relative_to(folder).as_posix() for p in (folder / "unet").rglob("*") if p.is_file()]
        check_weight_files(files, "unet", repr(path), allow_pickle)
        unet = DDPMUNet2DModel.from_pretrained(
            folder,
            subfolder="unet",
            torch_dtype=torch_dtype,
            variant=variant,
            # True refuses pickle inside diffusers too; None prefers safetensors and falls back to pickle.
            use_safetensors=None if allow_pickle else True,
        )
    if scheduler is None:
        library, scheduler_class_name = index["scheduler"]
        scheduler = _scheduler_class(library, scheduler_class_name).from_pretrained(folder, subfolder="scheduler")

    pipeline = pipeline_cls(unet=unet, scheduler=scheduler, id2label=index.get("id2label"))
    pipeline.register_to_config(_name_or_path=path)
    return pipeline


# ------------------------------------------------------------------------------------------------------ convert
def to_stock_pipeline(pipeline: Any) -> diffusers.DDPMPipeline:
    """
    Stock diffusers objects for `pipeline`: `diffusers.DDPMPipeline(UNet2DModel, stock scheduler)`, same weights.

    Args:
        pipeline (`DDPMPipeline`):
            The hf_ddpm pipeline to convert.

    Returns:
        `diffusers.DDPMPipeline`
    """
    source_unet = pipeline.unet
    # Keys only hf_ddpm's UNet knows (none carry weights) are left out; every UNet2DModel field is copied.
    stock_fields = set(inspect.signature(diffusers.UNet2DModel.__init__).parameters) - {"self"}
    config = {k: v for k, v in source_unet.config.items() if k in stock_fields}
    unet = diffusers.UNet2DModel.from_config(config)
    # strict: every weight must land in the stock model, or the conversion is not the same network.
    unet.load_state_dict(source_unet.state_dict(), strict=True)
    unet.to(device=source_unet.device, dtype=source_unet.dtype).eval()

    source_scheduler = pipeline.scheduler
    scheduler_config = dict(source_scheduler.config)
    if isinstance(source_scheduler, diffusers.DDIMScheduler):
        stock_scheduler_cls = diffusers.DDIMScheduler
    elif isinstance(source_scheduler, diffusers.DDPMScheduler):
        stock_scheduler_cls = diffusers.DDPMScheduler
    elif type(source_scheduler).__module__.split(".")[0] == "diffusers":
        stock_scheduler_cls = type(source_scheduler)
    else:
        raise ValueError(
            f"scheduler {type(source_scheduler).__name__} has no stock diffusers counterpart; to_diffusers supports "
            "DDPMScheduler, DDIMScheduler and diffusers' own schedulers."
        )
    spacing = scheduler_config.get("timestep_spacing")
    if spacing is not None and spacing not in ("linspace", "leading", "trailing"):
        raise ValueError(
            f"timestep_spacing={spacing!r} exists only in hf_ddpm's schedulers; stock diffusers supports "
            "['linspace', 'leading', 'trailing']. Change it before calling to_diffusers()."
        )
    scheduler = stock_scheduler_cls.from_config(scheduler_config)

    stock = diffusers.DDPMPipeline(unet=unet, scheduler=scheduler)
    stock.set_progress_bar_config(**getattr(pipeline, "_progress_bar_config", {}))
    return stock
