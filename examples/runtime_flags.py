"""Flags shared by the scripts that run a pipeline (`sample.py`, `evaluate.py`): `--device`, `--channels_last`,
`--compile`.

NHWC (`--channels_last`) is also the pipeline's own default on the CPU; the flag keeps it on other devices too, as
these scripts always did, and `--no-channels_last` is the way to NCHW.

Layout and compilation change the speed, not the numbers (up to float rounding); what they gain is measured in
`benchmarks/README.md`.
"""

from __future__ import annotations

import argparse

import torch

from hf_ddpm import DDPMPipeline

__all__ = ["add_runtime_arguments", "prepare_pipeline"]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--device`, `--channels_last/--no-channels_last` (default on) and `--compile` to `parser`."""
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
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
