"""Sampling throughput: hf_ddpm's DDPMPipeline vs diffusers' DDPMPipeline (DDPM, all T steps) and DDIMPipeline (DDIM).

Both pipelines hold the same UNet weights (stock `UNet2DModel` in diffusers', `DDPMUNet2DModel` in ours) and
schedulers with the same config (diffusers' `DDPMScheduler`/`DDIMScheduler` vs hf_ddpm's subclasses), draw from
the same seed and run interleaved in one process. The images they return are compared too (max |Δ| in [0, 1]).

    python benchmarks/bench_sampling.py                                        # CPU defaults, see --help
    python benchmarks/bench_sampling.py --device cuda --presets ddpm-cifar10 --batch_size 128 --precision bf16

Variants of hf_ddpm (`--variants`), each timed against the same eager diffusers pipeline:
`channels_last` (UNet and latents in NHWC), `compile` (`torch.compile` of the UNet, default mode; on CUDA
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["digits-16:ddpm", "digits-32:ddim50", "ddpm-cifar10:ddim50"],
        help="preset:sampler pairs; samplers: ddpm (all T=1000 steps), ddim50.",
    )
    parser.add_argument("--batch_size", type=int, default=None, help="Default: 1 on CPU, 128 on CUDA.")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(DTYPES), help="Autocast dtypes.")
    parser.add_argument(
        "--variants", nargs="*", default=[], choices=["channels_last", "compile", "compile_cudagraphs"]
    )
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
    args = parser.parse_args()
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
        stock, ours = build_pipelines(preset, sampler, device)
        steps = SAMPLERS[sampler]
        n_steps = steps or stock.scheduler.config.num_train_timesteps
        for precision in args.precision:
            images: dict = {}
            calls = {
                "diffusers": make_call(stock, batch_size, steps, device, precision, images, "diffusers"),
                "hf_ddpm": make_call(ours, batch_size, steps, device, precision, images, "hf_ddpm"),
            }
            extra_pipes = {}
            for variant in args.variants:
                _, variant_pipe = build_pipelines(preset, sampler, device)
                unet = variant_pipe.unet
                if variant == "channels_last":
                    unet.to(memory_format=torch.channels_last)
                elif variant == "compile":
                    unet.compile()
                elif variant == "compile_cudagraphs":
                    unet.compile(mode="reduce-overhead")
                if variant.startswith("compile"):
                    # The first call compiles: time it apart from the steady state.
                    call = make_call(variant_pipe, batch_size, steps, device, precision, images, variant)
                    start = time.perf_counter()
                    call()
                    compile_rows.append([preset, sampler, precision, variant, f"{time.perf_counter() - start:.1f}"])
                extra_pipes[variant] = variant_pipe
                calls[f"hf_ddpm+{variant}"] = make_call(
                    variant_pipe, batch_size, steps, device, precision, images, f"hf_ddpm+{variant}"
                )
            times = bench_utils.interleaved(calls, device, args.warmup, args.reps, args.clock)
            t_stock = median(times["diffusers"])
            for name in calls:
                if name == "diffusers":
                    continue
                ratio, lo, hi = paired_ratio(times["diffusers"], times[name])
                diff = abs(images[name] - images["diffusers"]).max()
                rows.append(
                    [
                        preset,
                        sampler,
                        n_steps,
                        batch_size,
                        precision,
                        name,
                        f"{batch_size / t_stock:.3f}",
                        f"{batch_size / median(times[name]):.3f}",
                        f"**{ratio:.3f}×** ({lo:.2f}–{hi:.2f})",
                        f"{diff:.1e}",
                    ]
                )
                print(rows[-1], flush=True)
            del extra_pipes

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
            "DDIM: η = 0 and both schedulers at their default config (timestep_spacing 'leading'), so both run the "
            "same 50 timesteps; DDPM: T = 1000, fixed-small variance.",
            "Speed-up = median over repetitions of (diffusers time / hf_ddpm time) from neighbouring runs.",
            "max abs diff: the two pipelines' images (in [0, 1]) from the same seed; small means same samples.",
        ],
    )


if __name__ == "__main__":
    main()
