"""Loading a saved `DDPMPipeline` (local folder or Hub repo) into hf_ddpm's classes, running nothing from it.

`load_pipeline` (behind `DDPMPipeline.from_pretrained`) reads `model_index.json` and builds the components itself:
`UNet2DModel`/`DDPMUNet2DModel` become `DDPMUNet2DModel` (same config fields and weight names), diffusers' or
hf_ddpm's `DDPMScheduler`/`DDIMScheduler` become hf_ddpm's, another diffusers scheduler stays as it is. So it reads
diffusers' own layout (e.g. google/ddpm-cifar10-32), and the custom-component layout without `trust_remote_code`,
which diffusers 0.42 would ask for on every load, even through a subclass's `from_pretrained`.

Repo ids follow the Hub's conventions: the cache is huggingface_hub's (shared with diffusers), `revision=` is a
branch, tag or commit, and with `HF_HUB_OFFLINE=1`, `local_files_only=True` or the Hub unreachable the revision and
files come from the cache.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from huggingface_hub import HfApi, constants, get_cached_repo_tree, snapshot_download
from huggingface_hub.errors import (
    CachedRepoTreeNotFoundError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
    RevisionResolutionError,
)
from huggingface_hub.utils import httpx
from safetensors import safe_open

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

__all__ = ["PICKLE_SUFFIXES", "check_weight_files", "load_pipeline"]

MODEL_INDEX = "model_index.json"
WEIGHTS_NAME = "diffusion_pytorch_model"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Pipelines whose model_index.json this loader understands: ours and the two stock unconditional ones.
SUPPORTED_PIPELINES = ("DDPMPipeline", "DDIMPipeline")
UNET_CLASSES = ("DDPMUNet2DModel", "UNet2DModel")
_HUB_KWARGS = ("revision", "cache_dir", "token", "local_files_only", "force_download")
_UNET_KWARGS = ("low_cpu_mem_usage", "disable_mmap")  # passed on to ModelMixin.from_pretrained
_OWN_KWARGS = (
    "allow_pickle", "unet", "scheduler", "dtype", "torch_dtype", "device_map", "variant", "use_safetensors",
    "trust_remote_code",
)  # fmt: skip
_ONE_DEVICE = "a DDPMPipeline holds one model, placed on one device: pass device_map='cuda:0' (or call .to(device))"
_NO_ONNX = "the pipeline runs in PyTorch; there are no ONNX weights to load"
_NOT_CUSTOM = (
    "hf_ddpm.DDPMPipeline.from_pretrained builds hf_ddpm's DDPMPipeline; use "
    "diffusers.DiffusionPipeline.from_pretrained for other pipeline code"
)
# Keywords of diffusers' DiffusionPipeline.from_pretrained this loader cannot honour, and why; None or False (asking
# for nothing) is accepted.
_REFUSED_KWARGS = {
    "custom_pipeline": _NOT_CUSTOM,
    "custom_revision": _NOT_CUSTOM,
    "load_connected_pipeline": "a DDPMPipeline has no connected pipelines",
    "proxies": "huggingface_hub >= 1.0 takes proxies from the HTTP_PROXY/HTTPS_PROXY environment variables",
    "mirror": "set HF_ENDPOINT to load from a mirror of the Hub",
    "max_memory": _ONE_DEVICE,
    "offload_folder": _ONE_DEVICE,
    "offload_state_dict": _ONE_DEVICE,
    "use_onnx": _NO_ONNX,
    "provider": _NO_ONNX,
    "sess_options": _NO_ONNX,
    "provider_options": _NO_ONNX,
    "quantization_config": "quantizing the DDPM UNet is not supported",
    "use_flashpack": "weights are read from safetensors files",
    "output_loading_info": "missing or mismatched weights are refused with an error instead",
    "dduf_file": "DDUF files are no longer supported, by diffusers either",
}


# ------------------------------------------------------------------------------------------------ keywords
@dataclasses.dataclass(frozen=True)
class _LoadOptions:
    """The keyword arguments of `DDPMPipeline.from_pretrained`, checked (documented there)."""

    allow_pickle: bool = False
    use_safetensors: bool | None = True
    unet: torch.nn.Module | None = None
    scheduler: SchedulerMixin | None = None
    dtype: torch.dtype | None = None
    device: torch.device | None = None
    variant: str | None = None
    hub: dict[str, Any] = dataclasses.field(default_factory=dict)
    unet_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any]) -> _LoadOptions:
        _check_keywords(kwargs)
        allow_pickle = bool(kwargs.get("allow_pickle", False))
        use_safetensors = kwargs.get("use_safetensors")
        if use_safetensors is False and not allow_pickle:
            raise ValueError(
                "use_safetensors=False asks for pickled weights, which hf_ddpm loads only with allow_pickle=True "
                "(unpickling can run arbitrary code)."
            )
        # use_safetensors=True refuses pickle even where it is allowed, as in diffusers.
        allow_pickle = allow_pickle and use_safetensors is not True
        return cls(
            allow_pickle=allow_pickle,
            # None prefers safetensors and falls back to pickle, False reads pickle only (diffusers' meanings).
            use_safetensors=use_safetensors if allow_pickle else True,
            unet=kwargs.get("unet"),
            scheduler=kwargs.get("scheduler"),
            dtype=_resolve_dtype(kwargs.get("dtype"), kwargs.get("torch_dtype")),
            device=_device_from_map(kwargs.get("device_map")),
            variant=kwargs.get("variant"),
            hub={k: kwargs[k] for k in _HUB_KWARGS if kwargs.get(k) is not None},
            unet_kwargs={k: kwargs[k] for k in _UNET_KWARGS if k in kwargs},
        )


def _check_keywords(kwargs: dict[str, Any]) -> None:
    accepted = {*_OWN_KWARGS, *_HUB_KWARGS, *_UNET_KWARGS}
    unknown = sorted(set(kwargs) - accepted - set(_REFUSED_KWARGS))
    if unknown:
        raise TypeError(f"from_pretrained got unexpected keyword arguments {unknown}; accepted: {sorted(accepted)}.")
    for name, reason in _REFUSED_KWARGS.items():
        if kwargs.get(name) is not None and kwargs[name] is not False:
            raise ValueError(f"{name}={kwargs[name]!r} is not supported by hf_ddpm's loader: {reason}.")


def _resolve_dtype(dtype: Any, torch_dtype: Any) -> torch.dtype | None:
    """diffusers 0.42's `dtype` (a dtype, or `{component or "default": dtype}`), or the older `torch_dtype`."""
    if dtype is not None and torch_dtype is not None:
        raise ValueError("You have passed both `dtype` and `torch_dtype`. Please only pass `dtype`.")
    dtype = torch_dtype if dtype is None else dtype
    if isinstance(dtype, dict):
        dtype = dtype.get("unet", dtype.get("default"))
    if dtype is not None and not isinstance(dtype, torch.dtype):
        raise ValueError(f"dtype must be a torch.dtype or a dict of them per component, got {dtype!r}.")
    return dtype


def _device_from_map(device_map: Any) -> torch.device | None:
    if device_map is None:
        return None
    if not isinstance(device_map, str):
        raise ValueError(f"`device_map` must be a string, got {device_map!r}.")
    try:
        return torch.device(device_map)
    except RuntimeError as err:
        # diffusers' type for a placement strategy it does not implement.
        raise NotImplementedError(f"device_map={device_map!r} is not supported: {_ONE_DEVICE}.") from err


# ------------------------------------------------------------------------------------------------------- Hub
def _looks_like_repo_id(path: str) -> bool:
    return not path.startswith((".", "/", "~")) and path.count("/") == 1 and not os.path.exists(path)


def resolve_folder(path: str, options: _LoadOptions) -> Path:
    """
    A local folder as is; a repo id downloaded to (or found in) huggingface_hub's cache: the configs, and the UNet
    weights `from_pretrained` will read (those of `options.variant`, or the plain ones; none when `options.unet` is
    given), as diffusers downloads them, so that a repo holding fp32 and fp16 weights costs one of them.
    """
    if os.path.isdir(path):
        return Path(path)
    if not _looks_like_repo_id(path):
        raise ValueError(
            f"pretrained_model_name_or_path={path!r} is neither a local folder nor a Hub repo id of the form "
            "'namespace/name'."
        )
    hub = options.hub
    revision = _resolve_revision(path, hub)
    files = _repo_files(path, revision, hub)
    if files is not None:
        # Refuse from the listing, before anything (pickle least of all) is downloaded.
        if MODEL_INDEX not in files:
            raise ValueError(f"Hub repo {path!r} has no {MODEL_INDEX}: it is not a diffusers pipeline.")
        if options.unet is None:
            check_weight_files(files, "unet", f"Hub repo {path!r}", options.allow_pickle)
            _check_variant(files, options.variant, f"Hub repo {path!r}")
    patterns = [MODEL_INDEX, "*/config.json", "*/scheduler_config.json"]
    if options.unet is None:
        patterns += weight_patterns("unet", options.variant, options.allow_pickle)
    download_options = {k: v for k, v in hub.items() if k != "revision"}
    try:
        return Path(snapshot_download(path, revision=revision, allow_patterns=patterns, **download_options))
    except LocalEntryNotFoundError as err:
        raise OSError(_not_cached_message(path, hub, err)) from err


def _resolve_revision(repo_id: str, hub: dict[str, Any]) -> str:
    """The commit `hub["revision"]` (branch, tag, commit, default branch) names: asked from the Hub, which records it
    under the cache's `refs/`, or read from there offline."""
    try:
        return HfApi().resolve_revision(
            repo_id,
            revision=hub.get("revision"),
            cache_dir=hub.get("cache_dir"),
            local_files_only=bool(hub.get("local_files_only")),
            token=hub.get("token"),
        )
    except RepositoryNotFoundError as err:
        raise OSError(
            f"pretrained_model_name_or_path={repo_id!r} is not a local folder and no model repo {repo_id!r} exists on "
            f"{constants.ENDPOINT} (or it is private and no valid token was given)."
        ) from err
    except RevisionNotFoundError as err:
        raise OSError(
            f"revision={hub.get('revision')!r} is no branch, tag or commit of Hub repo {repo_id!r} on "
            f"{constants.ENDPOINT}."
        ) from err
    except RevisionResolutionError as err:
        raise OSError(_not_cached_message(repo_id, hub, err)) from err


def _repo_files(repo_id: str, revision: str, hub: dict[str, Any]) -> list[str] | None:
    """The repo's files at the resolved commit: from the cache's listing, else from the Hub; None if neither has it
    (offline, nothing listed yet: `snapshot_download` then finds what is cached or says what is missing)."""
    commit = getattr(revision, "resolved", revision)
    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=commit, cache_dir=hub.get("cache_dir"))]
    except CachedRepoTreeNotFoundError:
        pass
    if hub.get("local_files_only"):
        return None
    try:
        info = HfApi().model_info(repo_id, revision=commit, token=hub.get("token"))
    except (OfflineModeIsEnabled, httpx.TransportError):
        return None
    return [sibling.rfilename for sibling in info.siblings or []]


def _not_cached_message(repo_id: str, hub: dict[str, Any], err: Exception) -> str:
    local_files_only = bool(hub.get("local_files_only"))
    if local_files_only:
        why = "local_files_only=True forbids asking the Hub"
    elif constants.HF_HUB_OFFLINE:
        why = "HF_HUB_OFFLINE=1 forbids asking the Hub"
    else:
        why = f"the Hub at {constants.ENDPOINT} could not be reached"
    return (
        f"Cannot load Hub repo {repo_id!r} at revision {hub.get('revision') or constants.DEFAULT_REVISION!r}: it is "
        f"not in the cache ({hub.get('cache_dir') or constants.HF_HUB_CACHE}) and {why} (endpoint "
        f"{constants.ENDPOINT}, local_files_only={local_files_only}). Load it once while the Hub is reachable, or "
        f"pass a local folder. ({type(err).__name__}: {err})"
    )


# ---------------------------------------------------------------------------------------------- the folder
def check_weight_files(files: list[str], component: str, where: str, allow_pickle: bool) -> None:
    """
    Refuse a component without weights, or whose weights exist only as pickle files unless the caller allowed pickle.

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


def _read_model_index(folder: Path, where: str) -> dict[str, Any]:
    index_file = folder / MODEL_INDEX
    if not index_file.is_file():
        raise ValueError(
            f"{where!r} has no {MODEL_INDEX}: it is not a saved pipeline. Save one with DDPMPipeline.save_pretrained, "
            "or load a lone UNet with DDPMUNet2DModel.from_pretrained."
        )
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        # OSError, as diffusers' load_config raises for a config that is not JSON.
        raise OSError(f"{index_file} is not a valid JSON file ({err}).") from err
    class_name = index.get("_class_name") if isinstance(index, dict) else None
    class_name = class_name[1] if isinstance(class_name, list) else class_name
    if class_name not in SUPPORTED_PIPELINES:
        raise ValueError(f"{where!r} holds a {class_name!r}; DDPMPipeline loads only {list(SUPPORTED_PIPELINES)}.")
    for name in ("unet", "scheduler"):
        if not isinstance(index.get(name), list) or len(index[name]) != 2:
            raise ValueError(f"{index_file} has no {name!r} component entry [library, class].")
    return index


def weight_patterns(component: str, variant: str | None, allow_pickle: bool) -> list[str]:
    """
    The `fnmatch` patterns of the weight files `ModelMixin.from_pretrained` reads for `component`.

    With a `variant`, diffusers' names for it (`diffusion_pytorch_model.fp16.safetensors`, its shards
    `.fp16-00001-of-00002.safetensors` and index `.safetensors.index.fp16.json`, and the older
    `-00001-of-00002.fp16.safetensors` / `.safetensors.fp16.index.json`); without one, the plain names. Pickle
    suffixes only when `allow_pickle`.
    """
    stem = f"{component}/{WEIGHTS_NAME}"
    shard = "-?????-of-?????"
    patterns = []
    for suffix in ["safetensors"] + ([s.lstrip(".") for s in PICKLE_SUFFIXES] if allow_pickle else []):
        if variant is None:
            patterns += [f"{stem}.{suffix}", f"{stem}{shard}.{suffix}", f"{stem}.{suffix}.index.json"]
        else:
            patterns += [
                f"{stem}.{variant}.{suffix}",
                f"{stem}.{variant}{shard}.{suffix}",
                f"{stem}.{suffix}.index.{variant}.json",
                f"{stem}{shard}.{variant}.{suffix}",
                f"{stem}.{suffix}.{variant}.index.json",
            ]
    return patterns


def _check_variant(files: list[str], variant: str | None, where: str) -> None:
    """Refuse a `variant` the UNet's weights do not come in, or no variant when they come only in variants."""
    weights = sorted(f for f in files if f.startswith(f"unet/{WEIGHTS_NAME}"))
    if any(fnmatch.fnmatch(f, p) for f in weights for p in weight_patterns("unet", variant, allow_pickle=True)):
        return
    if variant is not None:
        # diffusers' words and type for the same mistake.
        raise ValueError(
            f"You are trying to load the model files of the `variant={variant}`, but no such modeling files are "
            f"available in {where} (found: {weights})."
        )
    if weights:
        raise ValueError(
            f"{where} has no plain UNet weights ({WEIGHTS_NAME}.safetensors), only variants: {weights}. Pass the "
            "variant their names carry, e.g. variant='fp16'."
        )


def _safetensors_shapes(unet_folder: Path, variant: str | None) -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of the safetensors weights `from_pretrained` will read (headers only); {} if none."""
    suffix = f".{variant}" if variant else ""
    single = unet_folder / f"{WEIGHTS_NAME}{suffix}.safetensors"
    index = unet_folder / f"{WEIGHTS_NAME}.safetensors.index{suffix}.json"
    if single.is_file():
        files = [single]
    elif index.is_file():
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        files = [unet_folder / name for name in sorted(set(weight_map.values()))]
    else:
        return {}
    shapes = {}
    for file in files:
        with safe_open(file, framework="pt") as weights:
            shapes.update({key: tuple(weights.get_slice(key).get_shape()) for key in weights.keys()})
    return shapes


def _check_weights_fit_config(unet_folder: Path, variant: str | None) -> None:
    """Refuse weights with missing tensors or other shapes than `config.json` gives (diffusers would leave the missing
    ones on the meta device, or fail without naming the component)."""
    found = _safetensors_shapes(unet_folder, variant)
    if not found:
        return
    with torch.device("meta"):
        model = DDPMUNet2DModel.from_config(DDPMUNet2DModel.load_config(unet_folder))
    expected = {key: tuple(tensor.shape) for key, tensor in model.state_dict().items()}
    missing = sorted(set(expected) - set(found))
    mismatched = [
        f"{key}: config.json gives {expected[key]}, the weights {found[key]}"
        for key in sorted(set(expected) & set(found))
        if expected[key] != found[key]
    ]
    problems = ([f"missing tensors {_first(missing)}"] if missing else []) + (
        [_first(mismatched)] if mismatched else []
    )
    if problems:
        raise ValueError(
            f"unet in {unet_folder.parent}: the weights do not match unet/config.json: {'; '.join(problems)}."
        )


def _first(items: list[str], n: int = 8) -> str:
    """The first `n` of a long list (a whole mismatched network would fill the screen)."""
    shown = ", ".join(items[:n])
    return f"[{shown}, ... {len(items) - n} more]" if len(items) > n else f"[{shown}]"


def _load_unet(folder: Path, where: str, entry: list, options: _LoadOptions) -> DDPMUNet2DModel:
    if entry[1] not in UNET_CLASSES:
        raise ValueError(
            f"unet class {entry[1]!r} in {MODEL_INDEX} is not supported: expected one of {list(UNET_CLASSES)}."
        )
    unet_folder = folder / "unet"
    files = [p.relative_to(folder).as_posix() for p in unet_folder.rglob("*") if p.is_file()]
    check_weight_files(files, "unet", repr(where), options.allow_pickle)
    _check_variant(files, options.variant, repr(where))
    if options.use_safetensors is not False:
        _check_weights_fit_config(unet_folder, options.variant)
    unet, info = DDPMUNet2DModel.from_pretrained(
        folder,
        subfolder="unet",
        torch_dtype=options.dtype,
        variant=options.variant,
        use_safetensors=options.use_safetensors,
        output_loading_info=True,
        **options.unet_kwargs,
    )
    if info["missing_keys"]:  # pickled weights, whose shapes are only known once unpickled
        raise ValueError(f"unet in {where!r}: the weights lack tensors {sorted(info['missing_keys'])}.")
    return unet


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


def load_pipeline(pipeline_cls: type, pretrained_model_name_or_path: str | os.PathLike, **kwargs: Any) -> Any:
    """
    Build a `DDPMPipeline` from a saved folder or repo id without executing anything it contains.

    See `DDPMPipeline.from_pretrained` for the arguments.
    """
    options = _LoadOptions.from_kwargs(kwargs)
    path = os.fspath(pretrained_model_name_or_path)
    folder = resolve_folder(path, options)
    index = _read_model_index(folder, path)
    unet = options.unet if options.unet is not None else _load_unet(folder, path, index["unet"], options)
    scheduler = options.scheduler
    if scheduler is None:
        scheduler = _scheduler_class(*index["scheduler"]).from_pretrained(folder, subfolder="scheduler")
    pipeline = pipeline_cls(unet=unet, scheduler=scheduler, id2label=index.get("id2label"))
    if options.device is not None:
        pipeline.to(options.device)
    pipeline.register_to_config(_name_or_path=path)
    return pipeline
