"""Sampling throughput: hf_ddpm's DDPMPipeline vs diffusers' DDPMPipeline (DDPM, all T steps) and DDIMPipeline (DDIM).

Both pipelines hold the same UNet weights (stock `UNet2DModel` in diffusers', `DDPMUNet2DModel` in ours) and
schedulers with the same config (diffusers' `DDPMScheduler`/`DDIMScheduler` vs hf_ddpm's subclasses), draw from
the same seed and run interleaved in one process. The images they return are compared too (max |Δ| in [0, 1]).
The `hf_ddpm` row calls the pipeline as a user would: nothing set by the benchmark, so it runs in the library's
default memory layout (NHWC on the CPU, see `DDPMPipeline.set_memory_format`).

    python benchmarks/bench_sampling.py                                        # CPU defaults, see --help
    python benchmarks/bench_sampling.py --device cuda --presets ddpm-cifar10 --batch_size 128 --precision bf16

Variants of hf_ddpm (`--variants`), each timed against the same eager diffusers pipeline:
`channels_last` (`set_memory_format(torch.channels_last)`: NHWC on any device), `nchw`
(`set_memory_format(torch.contiguous_format)`: the CPU default turned off), `compile` (`torch.compile` of the UNet, default mode; on CUDA
"max-autotune-no-cudagraphs" is not used, the default inductor mode is), `compile_cudagraphs` (CUDA only:
"reduce-overhead", i.e. CUDA graphs for the fixed shapes). Compile time is reported separately (first call).
"""

from __future__ import annotations

import argparse
import time

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
import torch
from bench_utils import machine_info, markdown_table, median, paired_models, paired_ratio, write_report

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SAMPLERS = {"ddpm": None, "ddim50": 50}  # None: all T steps


def build_pipelines(preset: str, sampler: str, device: torch.device):
    from diffusers import DDIMPipeline as StockDDIMPipeline
    from diffusers import DDIMScheduler as StockDDIMScheduler
    from diffusers import DDPMPipeline as StockDDPMPipeline
    from diffusers import DDPMScheduler as StockDDPMScheduler

    from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
    from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
    from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

    stock_unet, ours_unet = paired_models(preset, device, dropout=0.0)
    stock_unet.eval(), ours_unet.eval()
    if sampler == "ddpm":
        stock = StockDDPMPipeline(unet=stock_unet, scheduler=StockDDPMScheduler())
        ours = DDPMPipeline(unet=ours_unet, scheduler=DDPMScheduler())
    else:
        stock = StockDDIMPipeline(unet=stock_unet, scheduler=StockDDIMScheduler())
        ours = DDPMPipeline(unet=ours_unet, scheduler=DDIMScheduler())
    for pipe in (stock, ours):
        pipe.set_progress_bar_config(disable=True)
    return stock, ours


def make_call(pipe, batch_size: int, steps: int | None, device: torch.device, precision: str, out: dict, key: str):
    dtype = DTYPES[precision]
    kwargs = {} if steps is None else {"num_inference_steps": steps, "eta": 0.0}

    def call():
        generator = torch.Generator(device).manual_seed(0)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out[key] = pipe(batch_size=batch_size, generator=generator, output_type="np", **kwargs).images

    return call


VARIANTS = ("channels_last", "nchw", "compile", "compile_cudagraphs")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["digits-16:ddpm", "digits-32:ddim50", "ddpm-cifar10:ddim50"],
        help="preset:sampler pairs; samplers: ddpm (all T=1000 steps), ddim50.",
    )
    parser.add_argument("--batch_size", type=int, default=None, help="Default: 1 on CPU, 128 on CUDA.")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(DTYPES), help="Autocast dtypes.")
    parser.add_argument("--variants", nargs="*", default=[], choices=VARIANTS)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: process CPU time (use with --threads 1)."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--flush_denormal", action="store_true", help="torch.set_flush_denormal(True): denormals count as zero."
    )
    parser.add_argument("--output", default="sampling")
    return parser.parse_args()


def variant_pipeline(variant: str, preset: str, sampler: str, device: torch.device):
    """A fresh hf_ddpm pipeline with one lever changed (see the module docstring); compiling ones are not yet run."""
    _, pipe = build_pipelines(preset, sampler, device)
    if variant == "channels_last":
        pipe.set_memory_format(torch.channels_last)
    elif variant == "nchw":
        pipe.set_memory_format(torch.contiguous_format)
    elif variant == "compile":
        pipe.unet.compile()
    elif variant == "compile_cudagraphs":
        pipe.unet.compile(mode="reduce-overhead")
    return pipe


def measure(args, preset: str, sampler: str, precision: str, device: torch.device, batch_size: int):
    """Time diffusers, hf_ddpm as a user calls it and each variant, interleaved; return table and compile rows."""
    stock, ours = build_pipelines(preset, sampler, device)
    steps = SAMPLERS[sampler]
    images: dict = {}
    calls = {
        name: make_call(pipe, batch_size, steps, device, precision, images, name)
        for name, pipe in (("diffusers", stock), ("hf_ddpm", ours))
    }
    compile_rows = []
    for variant in args.variants:
        name = f"hf_ddpm+{variant}"
        calls[name] = make_call(
            variant_pipeline(variant, preset, sampler, device), batch_size, steps, device, precision, images, name
        )
        if variant.startswith("compile"):
            start = time.perf_counter()  # the first call compiles: time it apart from the steady state
            calls[name]()
            compile_rows.append([preset, sampler, precision, variant, f"{time.perf_counter() - start:.1f}"])
    times = bench_utils.interleaved(calls, device, args.warmup, args.reps, args.clock)
    n_steps = steps or stock.scheduler.config.num_train_timesteps
    rows = []
    for name in calls:
        if name == "diffusers":
            continue
        ratio, lo, hi = paired_ratio(times["diffusers"], times[name])
        rows.append(
            [
                preset,
                sampler,
                n_steps,
                batch_size,
                precision,
                name,
                f"{batch_size / median(times['diffusers']):.3f}",
                f"{batch_size / median(times[name]):.3f}",
                f"**{ratio:.3f}×** ({lo:.2f}–{hi:.2f})",
                f"{abs(images[name] - images['diffusers']).max():.1e}",
            ]
        )
        print(rows[-1], flush=True)
    return rows, compile_rows


def write_sampling_report(args, device: torch.device, info: dict, rows: list, compile_rows: list) -> None:
    sections = [
        "## Throughput (images/s, median of interleaved repetitions)\n\n"
        + markdown_table(
            [
                "preset",
                "sampler",
                "steps",
                "batch",
                "autocast",
                "hf_ddpm variant",
                "diffusers img/s",
                "hf_ddpm img/s",
                "speed-up (min–max)",
                "max abs diff of images",
            ],
            rows,
        )
    ]
    if compile_rows:
        sections.append(
            "## First call of a compiled UNet (compile + one sampling run), seconds\n\n"
            + markdown_table(["preset", "sampler", "autocast", "variant", "seconds"], compile_rows)
        )
    write_report(
        args.output,
        f"Sampling: hf_ddpm DDPMPipeline vs diffusers DDPMPipeline/DDIMPipeline ({device.type})",
        info,
        sections,
        [
            f"{args.warmup} warm-up run(s), {args.reps} interleaved repetitions; a run is a whole pipeline call "
            "(x_T draw, every UNet forward and scheduler step, postprocessing to numpy).",
            "hf_ddpm: the pipeline as a user calls it, in the library's default layout (NHWC on the CPU); "
            "`+variant` rows change one lever (module docstring).",
            "DDIM: η = 0 and both schedulers at their default config (timestep_spacing 'leading'), so both run the "
            "same 50 timesteps; DDPM: T = 1000, fixed-small variance.",
            "Speed-up = median over repetitions of (diffusers time / hf_ddpm time) from neighbouring runs.",
            "max abs diff: the two pipelines' images (in [0, 1]) from the same seed; small means same samples.",
        ],
    )


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    batch_size = args.batch_size or (128 if device.type == "cuda" else 1)
    torch.set_num_threads(args.threads)
    if args.flush_denormal and not torch.set_flush_denormal(True):
        raise ValueError("--flush_denormal: this CPU does not support flushing denormals.")
    info = machine_info(device)
    info["flush denormals"] = str(args.flush_denormal)
    info["timer"] = {"wall": "wall clock (perf_counter)", "cpu": "process CPU time (process_time)"}[args.clock]
    rows, compile_rows = [], []
    for run in args.runs:
        preset, sampler = run.split(":")
        for precision in args.precision:
            run_rows, run_compile_rows = measure(args, preset, sampler, precision, device, batch_size)
            rows += run_rows
            compile_rows += run_compile_rows
    write_sampling_report(args, device, info, rows, compile_rows)


if __name__ == "__main__":
    main()
