"""Command-line options shared by the scripts that run a pipeline (`examples/sample.py`, `examples/evaluate.py`).

`add_runtime_arguments` adds `--device`, `--channels_last` and `--compile`; `prepare_pipeline` applies them. Both
layout and compilation leave the numbers as they are up to float rounding (tests/pipelines); the speed-ups they
give are measured in `benchmarks/results/sampling*.md`.
"""

from __future__ import annotations

import argparse

import torch

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline

__all__ = ["add_runtime_arguments", "prepare_pipeline"]


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `--device`, `--channels_last/--no-channels_last` (default on) and `--compile` to `parser`."""
    parser.add_argument("--device", default=None, help="Default: cuda if available, else cpu.")
    parser.add_argument(
        "--channels_last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Run the UNet in NHWC memory layout: the same numbers, 1.1-1.35x faster sampling on a CPU (benchmarks/).",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the UNet: faster steps after a one-off compilation (benchmarks/results/sampling_compile.md).",
    )


def prepare_pipeline(pipe: DDPMPipeline, args: argparse.Namespace) -> torch.device:
    """Move `pipe` to `args.device` (CUDA if available when unset), then apply `--channels_last` and `--compile`.

    Returns:
        `torch.device`: where the pipeline runs.
    """
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pipe.to(device)
    if args.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)  # the pipeline keeps x_t in the UNet's layout
    if args.compile:
        pipe.unet.compile()  # the first batch pays the compilation (1-4 min for the digits presets on a CPU)
    return device
