"""Flags shared by the scripts that run a pipeline (`sample.py`, `evaluate.py`): `--device`, `--channels_last`,
`--compile`, and the argparse types that check a device and an image path before any work.

NHWC (`--channels_last`) is also the pipeline's own default on the CPU; the flag keeps it on other devices too, as
these scripts always did, and `--no-channels_last` is the way to NCHW.

Layout and compilation change the speed, not the numbers (up to float rounding); what they gain is measured in
`benchmarks/README.md`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from PIL import Image

from hf_ddpm import DDPMPipeline

__all__ = ["add_runtime_arguments", "device_flag", "image_path_flag", "prepare_pipeline"]


def _available_devices() -> list[str]:
    accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
    count = torch.accelerator.device_count() if accelerator is not None else 0
    return ["cpu"] + [f"{accelerator.type}:{i}" for i in range(count)]


def device_flag(text: str) -> torch.device:
    """argparse `type=` of `--device`: a torch device this machine has (cpu, or an index of its accelerator)."""
    try:
        device = torch.device(text)
    except RuntimeError as e:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device ({e})") from e
    available = _available_devices()
    if device.type != "cpu" and f"{device.type}:{device.index or 0}" not in available:
        raise argparse.ArgumentTypeError(f"this machine has no {text!r}; it has {', '.join(available)}")
    return device


def image_path_flag(text: str) -> Path:
    """argparse `type=` of an output image: an extension PIL writes, in a folder that exists."""
    path = Path(text)
    writable = sorted(ext for ext, image_format in Image.registered_extensions().items() if image_format in Image.SAVE)
    if path.suffix.lower() not in writable:
        raise argparse.ArgumentTypeError(
            f"{text!r} has no image extension PIL writes (got {path.suffix or 'none'!r}; e.g. .png, .jpg, .webp)"
        )
    if not path.parent.is_dir():
        raise argparse.ArgumentTypeError(f"the folder {str(path.parent)!r} of {text!r} does not exist")
    return path


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--device`, `--channels_last/--no-channels_last` (default on) and `--compile` to `parser`."""
    parser.add_argument(
        "--device",
        type=device_flag,
        default=None,
        help="A torch device (cpu, cuda:1, ...). Default: cuda if available, else cpu.",
    )
    parser.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run the UNet in NHWC memory layout (`pipe.set_memory_format`): the same numbers. The pipeline does so on "
        "the CPU by itself; the flag also asks for it on other devices, --no-channels_last turns it off. The speed-up "
        "is measured in benchmarks/README.md.",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet: the first batch pays a one-off compilation; the speed-up after it is measured "
        "in benchmarks/README.md.",
    )


def prepare_pipeline(pipe: DDPMPipeline, args: argparse.Namespace) -> torch.device:
    """Move `pipe` to `args.device` (CUDA if available when unset), then apply `--channels_last` and `--compile`.

    Returns:
        `torch.device`: where the pipeline runs.
    """
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.to(device)
    pipe.set_memory_format(torch.channels_last if args.channels_last else torch.contiguous_format)
    if args.compile:
        pipe.unet.compile()  # compiles lazily, on the first batch
    return device
