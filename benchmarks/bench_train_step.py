"""Training-step throughput and peak memory: hf_ddpm's DDPMUNet2DModel vs stock diffusers UNet2DModel.

One step is the paper's recipe (DDPM Algorithm 1, Appendix B): x_t = √ᾱ_t x_0 + √(1−ᾱ_t) ε by the scheduler's
`add_noise` (eq. 4), forward, L_simple (eq. 14), backward, gradient-norm clip 1.0, Adam(W) at 2e-4, EMA of the
weights at 0.9999 (with diffusers' warm-up); the preset's dropout is on. Both models hold the same weights, see the
same batches and run interleaved in one process.

Each side runs the optimizer and EMA its training script builds: diffusers' `train_unconditional.py` calls
`torch.optim.AdamW(...)` (torch's default implementation: a for-loop on the CPU, foreach on CUDA) and
`EMAModel(...)` (`foreach=False`); hf_ddpm's `examples/train.py` calls `hf_ddpm.training.optimizer.adamw` (fused
where torch has it) and `hf_ddpm.training.ema.EMAModel` (one lerp). `--no_ema` leaves the EMA out of both.
hf_ddpm also takes its script's memory layout: NHWC (channels_last) on the CPU and under bf16/fp16 autocast, NCHW for
fp32 on a GPU.
`--variants` adds hf_ddpm runs that isolate one lever each: `same_optimizer` (diffusers' optimizer and EMA, i.e.
the network alone), `foreach` (foreach AdamW), `channels_last` / `nchw` (UNet and batch in that layout),
`compile` (`torch.compile` of the UNet, default inductor mode; its compile time is reported).

    python benchmarks/bench_train_step.py                                   # CPU: digits-32 and ddpm-cifar10, batch 8
    python benchmarks/bench_train_step.py --device cuda --batch_size 128 --precision bf16

FLOPs: a forward costs 2·MACs (MACs per image from FlopCounterMode: convolutions, linear layers, attention
products); backward costs about twice the forward (gradients for inputs and for weights), so a training step is
counted as 3 · 2 · MACs · batch FLOPs. Achieved GFLOP/s = that / median step time; on CPU it is set against the
measured peak of a 1024³ `torch.mm` in the same dtype and thread count; on GPU, MFU is against `--peak_tflops`.

Peak memory: on CUDA `torch.cuda.max_memory_allocated` over a step. On CPU each model runs alone in a fresh
process (so the other model's allocations cannot count) and the figure is `ru_maxrss` after three steps minus
`ru_maxrss` once the model, optimizer and batch exist: the step's working set above the weights, including the
Adam state created by the first step (equal for both models). Also reported: the bytes of the distinct tensors
autograd saves for backward (deterministic, independent of the allocator).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
import torch
import torch.nn.functional as F
from bench_utils import (
    EMA_SETTINGS,
    cpu_peak_gflops,
    forward_macs,
    machine_info,
    markdown_table,
    max_rss_mib,
    median,
    paired_models,
    run_isolated,
    speedup_cell,
    write_report,
)

DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


VARIANTS = ("same_optimizer", "foreach", "channels_last", "nchw", "compile")


def make_ema(model: torch.nn.Module, side: str, enabled: bool = True):
    """The EMA of the weights as each side's training script builds it (None without EMA)."""
    if not enabled:
        return None
    if side == "stock":
        from diffusers.training_utils import EMAModel as StockEMAModel

        return StockEMAModel(model.parameters(), **EMA_SETTINGS)
    from hf_ddpm.training.ema import EMAModel

    return EMAModel(model.parameters(), **EMA_SETTINGS)


def make_optimizer(model: torch.nn.Module, side: str, implementation: str | None = None) -> torch.optim.Optimizer:
    """AdamW at the paper's 2e-4 (weight decay 0, i.e. Adam), as each side's training script builds it."""
    if side == "stock" or implementation == "default":
        return torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.0)  # diffusers' train_unconditional.py
    from hf_ddpm.training.optimizer import adamw

    return adamw(model.parameters(), lr=2e-4, weight_decay=0.0, implementation=implementation or "auto")


def script_uses_channels_last(precision: str, device: torch.device) -> bool:
    """Whether `examples/train.py` trains in NHWC by default at this precision on this device."""
    from hf_ddpm.training.loop import use_channels_last

    return use_channels_last(
        argparse.Namespace(channels_last=None), "no" if precision == "fp32" else precision, device
    )


def in_layout(model, batch, channels_last: bool):
    """`model` and `batch` in NHWC (`channels_last`) or NCHW memory layout; the model is converted in place."""
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x0, noise, timesteps = batch
    return model.to(memory_format=memory_format), (x0.contiguous(memory_format=memory_format), noise, timesteps)


def variant_step(name: str, ours, scheduler, batch, device, precision: str, ema: bool):
    """One hf_ddpm step with one lever changed (see the module docstring), on a copy of `ours`."""
    channels_last = {"channels_last": True, "nchw": False}.get(name, script_uses_channels_last(precision, device))
    model, batch = in_layout(copy.deepcopy(ours), batch, channels_last)
    implementation = {"same_optimizer": "default", "foreach": "foreach"}.get(name)
    ema_model = make_ema(model, "stock" if name == "same_optimizer" else "ours", ema)
    optimizer = make_optimizer(model, "ours", implementation)
    step = make_step(model, scheduler, optimizer, ema_model, batch, device, precision)
    compile_seconds = None
    if name == "compile":
        model.compile()
        start = time.perf_counter()
        step()  # the first call compiles forward and backward
        compile_seconds = time.perf_counter() - start
    return step, compile_seconds


def make_step(model, scheduler, optimizer, ema, batch, device, precision: str):
    """A closure running one training step of `model` on the fixed `batch`."""
    x0, noise, timesteps = batch
    dtype = DTYPES[precision]

    def step():
        x_t = scheduler.add_noise(x0, noise, timesteps)  # DDPM eq. 4
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            prediction = model(x_t, timesteps).sample
        loss = F.mse_loss(prediction.float(), noise)  # L_simple, eq. 14, in fp32 as the training loop does
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(model.parameters())

    return step


def make_batch(model, batch_size: int, device: torch.device, seed: int = 0):
    size = model.config.sample_size
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(batch_size, model.config.in_channels, size, size, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    timesteps = torch.randint(0, 1000, (batch_size,), generator=g)
    return x0.to(device), noise.to(device), timesteps.to(device)


def schedulers():
    from diffusers import DDPMScheduler as StockDDPMScheduler

    from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

    return StockDDPMScheduler(), DDPMScheduler()


def saved_activation_mib(model, step_inputs, precision: str, device: torch.device) -> float:
    """MiB of the distinct tensors autograd keeps for backward in one forward (what checkpointing would save)."""
    x0, noise, timesteps = step_inputs
    storages = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    dtype = DTYPES[precision]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            out = model(x0, timesteps).sample
    out.float().sum().backward()
    model.zero_grad(set_to_none=True)
    return sum(storages.values()) / 2**20


def memory_probe(args) -> None:
    """Child process: one model alone, print its peak step memory as JSON."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from diffusers import UNet2DModel

    from hf_ddpm.models.presets import PRESETS
    from hf_ddpm.models.unet_2d import DDPMUNet2DModel

    # Only the measured model is built (the weights' values do not matter for memory): building both would raise
    # the process's peak before the first step.
    torch.manual_seed(0)
    model_class = UNet2DModel if args.memory_probe == "stock" else DDPMUNet2DModel
    model = model_class(**PRESETS[args.preset]).to(device)
    stock_sched, ours_sched = schedulers()
    scheduler = stock_sched if args.memory_probe == "stock" else ours_sched
    model.train()
    batch = make_batch(model, args.batch_size, device)
    if args.memory_probe == "ours":
        model, batch = in_layout(model, batch, script_uses_channels_last(args.precision, device))
    optimizer = make_optimizer(model, args.memory_probe)
    ema = make_ema(model, args.memory_probe, not args.no_ema)
    step = make_step(model, scheduler, optimizer, ema, batch, device, args.precision)
    base = max_rss_mib()
    for _ in range(3):
        step()
    print(json.dumps({"rss_delta_mib": max_rss_mib() - base, "rss_total_mib": max_rss_mib()}))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["digits-32", "ddpm-cifar10"])
    parser.add_argument("--batch_size", type=int, default=None, help="Default: 8 on CPU, 128 on CUDA.")
    parser.add_argument("--precision", nargs="+", default=["fp32"], choices=list(DTYPES), help="Autocast dtypes.")
    parser.add_argument(
        "--variants", nargs="*", default=[], choices=VARIANTS, help="Extra hf_ddpm runs, one lever each."
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--reps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: process CPU time (use with --threads 1)."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak_tflops", type=float, default=989.0, help="GPU dense bf16 peak (H100 SXM: 989).")
    parser.add_argument("--no_memory", action="store_true", help="Skip the fresh-process peak-memory runs.")
    parser.add_argument("--no_ema", action="store_true", help="Leave the EMA step out of both sides.")
    parser.add_argument("--output", default="train_step", help="Name of the Markdown file in benchmarks/results/.")
    parser.add_argument("--memory_probe", choices=["stock", "ours"], help=argparse.SUPPRESS)
    parser.add_argument("--preset", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.batch_size is None:
        args.batch_size = 128 if args.device.startswith("cuda") else 8
    return args


@dataclasses.dataclass
class Pair:
    """One preset's two models (same weights), their schedulers and the batch both see."""

    preset: str
    stock: torch.nn.Module
    ours: torch.nn.Module
    stock_sched: object
    ours_sched: object
    batch: tuple
    macs: int


def make_pair(preset: str, batch_size: int, device: torch.device) -> Pair:
    stock, ours = paired_models(preset, device)
    stock.train(), ours.train()
    macs = forward_macs(ours, ours.config.in_channels, ours.config.sample_size)
    stock_sched, ours_sched = schedulers()
    return Pair(preset, stock, ours, stock_sched, ours_sched, make_batch(ours, batch_size, device), macs)


def utilisation_cells(flops_per_step: float, seconds: list[float], device: torch.device, peak: float) -> list[str]:
    """Achieved GFLOP/s per side, against the CPU's measured matmul peak (GFLOP/s) or the GPU's (TFLOP/s, MFU)."""
    if device.type == "cpu":
        return [f"{flops_per_step / t / 1e9:.1f} ({100 * flops_per_step / t / 1e9 / peak:.0f} %)" for t in seconds]
    return [f"{flops_per_step / t / 1e9:.0f} (MFU {100 * flops_per_step / t / 1e12 / peak:.1f} %)" for t in seconds]


def measure_throughput(args, pair: Pair, precision: str, ours_model, ours_batch, device, peak: float):
    """Time diffusers, hf_ddpm (its script's setup) and each variant, interleaved; the throughput row, the variant
    rows and the compile rows."""
    ema = not args.no_ema
    steps = {
        "diffusers": make_step(
            pair.stock,
            pair.stock_sched,
            make_optimizer(pair.stock, "stock"),
            make_ema(pair.stock, "stock", ema),
            pair.batch,
            device,
            precision,
        ),
        "hf_ddpm": make_step(
            ours_model,
            pair.ours_sched,
            make_optimizer(ours_model, "ours"),
            make_ema(ours_model, "ours", ema),
            ours_batch,
            device,
            precision,
        ),
    }
    compile_rows = []
    for variant in args.variants:
        steps[f"hf_ddpm+{variant}"], seconds = variant_step(
            variant, pair.ours, pair.ours_sched, pair.batch, device, precision, ema
        )
        if seconds is not None:
            compile_rows.append([pair.preset, args.batch_size, precision, f"{seconds:.0f}"])
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = bench_utils.interleaved(steps, device, args.warmup, args.reps, args.clock)
    t_stock, t_ours = median(times["diffusers"]), median(times["hf_ddpm"])
    util = utilisation_cells(3 * 2 * pair.macs * args.batch_size, [t_stock, t_ours], device, peak)
    row = [
        pair.preset,
        args.batch_size,
        precision,
        f"{args.batch_size / t_stock:.2f}",
        f"{args.batch_size / t_ours:.2f}",
        speedup_cell(times["diffusers"], times["hf_ddpm"], bold=True),
        *util,
    ]
    variant_rows = [
        [
            pair.preset,
            precision,
            name.split("+")[1],
            f"{args.batch_size / median(times[name]):.2f}",
            speedup_cell(times["diffusers"], times[name]),
        ]
        for name in steps
        if name.startswith("hf_ddpm+")
    ]
    return row, variant_rows, compile_rows


def cuda_step_memory(args, pair: Pair, precision: str, ours_model, ours_batch, device) -> list[str]:
    """MiB that CUDA allocates at most over one (second) training step, per side."""
    mem = []
    for model, sched, side_batch, side in (
        (pair.stock, pair.stock_sched, pair.batch, "stock"),
        (ours_model, pair.ours_sched, ours_batch, "ours"),
    ):
        optimizer, ema = make_optimizer(model, side), make_ema(model, side, not args.no_ema)
        step = make_step(model, sched, optimizer, ema, side_batch, device, precision)
        step()
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        step()
        mem.append(f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f}")
    return mem


def cpu_step_memory(args, preset: str, precision: str) -> list[str]:
    """Peak RSS growth (MiB) over three steps of each model alone in a fresh process (`memory_probe`)."""
    mem = []
    for which in ("stock", "ours"):
        out = run_isolated(
            [
                "benchmarks/bench_train_step.py",
                "--memory_probe",
                which,
                "--preset",
                preset,
                "--batch_size",
                str(args.batch_size),
                "--precision",
                precision,
                "--threads",
                str(args.threads),
                "--device",
                args.device,
                *(["--no_ema"] if args.no_ema else []),
            ]
        )
        mem.append(f"{json.loads(out.strip().splitlines()[-1])['rss_delta_mib']:.0f}")
    return mem


def memory_row(args, pair: Pair, precision: str, ours_model, ours_batch, device) -> list:
    """Peak step memory per side (CUDA allocator, or fresh-process RSS on CPU) and the saved activations."""
    act = [
        saved_activation_mib(m, b, precision, device) for m, b in ((pair.stock, pair.batch), (ours_model, ours_batch))
    ]
    if device.type == "cuda":
        mem = cuda_step_memory(args, pair, precision, ours_model, ours_batch, device)
    elif args.no_memory:
        mem = ["skipped", "skipped"]
    else:
        mem = cpu_step_memory(args, pair.preset, precision)
    return [pair.preset, args.batch_size, precision, mem[0], mem[1], f"{act[0]:.0f}", f"{act[1]:.0f}"]


def report_sections(device: torch.device, rows, memory_rows, variant_rows, compile_rows) -> list[str]:
    mem_header = (
        "peak step memory, CUDA max allocated (MiB)"
        if device.type == "cuda"
        else "peak RSS growth over 3 steps, fresh process (MiB)"
    )
    sections = [
        "## Throughput (img/s, median of interleaved repetitions)\n\n"
        + markdown_table(
            [
                "preset",
                "batch",
                "autocast",
                "diffusers img/s",
                "hf_ddpm img/s",
                "speed-up [95 % CI] (min–max)",
                "diffusers GFLOP/s (of peak)",
                "hf_ddpm GFLOP/s (of peak)",
            ],
            rows,
        ),
        "## Memory\n\n"
        + markdown_table(
            [
                "preset",
                "batch",
                "autocast",
                f"diffusers {mem_header}",
                f"hf_ddpm {mem_header}",
                "diffusers saved activations (MiB)",
                "hf_ddpm saved activations (MiB)",
            ],
            memory_rows,
        ),
    ]
    if variant_rows:
        sections.append(
            "## hf_ddpm with one lever changed (speed-up over diffusers)\n\n"
            + markdown_table(
                ["preset", "autocast", "variant", "hf_ddpm img/s", "speed-up [95 % CI] (min–max)"], variant_rows
            )
        )
    if compile_rows:
        sections.append(
            "## torch.compile: time of the first step (compiling forward and backward)\n\n"
            + markdown_table(["preset", "batch", "autocast", "seconds"], compile_rows)
        )
    return sections


def report_notes(args, macs_per_preset: dict[str, int]) -> list[str]:
    return [
        "Step: add_noise (eq. 4) + forward + L_simple (eq. 14) + backward + clip_grad_norm 1.0 + AdamW lr 2e-4 "
        "(diffusers: torch's default implementation, as its train_unconditional.py; hf_ddpm: "
        "`hf_ddpm.training.optimizer.adamw`, fused, as examples/train.py)"
        + (
            ""
            if args.no_ema
            else " + EMA 0.9999 with warm-up (diffusers: `EMAModel`, foreach=False, as train_unconditional.py "
            "with --use_ema; hf_ddpm: `hf_ddpm.training.ema.EMAModel`, as examples/train.py)"
        )
        + f"; preset dropout on; hf_ddpm in its script's memory layout (NHWC on the CPU and under autocast); "
        f"{args.warmup} warm-up steps, {args.reps} interleaved repetitions.",
        "Speed-up = median over repetitions of (diffusers time / hf_ddpm time) from neighbouring runs; "
        "[95 % CI]: distribution-free confidence interval of that median (order statistics); "
        "min–max shows the spread under the shared machine's load.",
        "FLOPs per step = 3 × 2 × forward MACs × batch (backward ≈ 2× forward); forward MACs per image: "
        + ", ".join(f"{p} {m / 1e9:.3f} G" for p, m in macs_per_preset.items())
        + ".",
    ]


def main() -> None:
    args = parse_args()
    device = torch.device(args.device)
    if args.memory_probe:
        args.precision = args.precision[0]
        return memory_probe(args)

    torch.set_num_threads(args.threads)
    info = machine_info(device)
    info["timer"] = {"wall": "wall clock (perf_counter)", "cpu": "process CPU time (process_time)"}[args.clock]
    peaks = {p: args.peak_tflops for p in args.precision}
    if device.type == "cpu":
        peaks = {p: cpu_peak_gflops(DTYPES[p] or torch.float32, clock=args.clock) for p in args.precision}
        info["measured CPU matmul peak (GFLOP/s)"] = ", ".join(f"{p}: {v:.0f}" for p, v in peaks.items())

    rows, memory_rows, variant_rows, compile_rows = [], [], [], []
    macs_per_preset = {}
    for preset in args.presets:
        pair = make_pair(preset, args.batch_size, device)
        macs_per_preset[preset] = pair.macs
        for precision in args.precision:
            # hf_ddpm in the layout examples/train.py picks at this precision and device, on a copy.
            ours_model, ours_batch = in_layout(
                copy.deepcopy(pair.ours), pair.batch, script_uses_channels_last(precision, device)
            )
            row, more_variant_rows, more_compile_rows = measure_throughput(
                args, pair, precision, ours_model, ours_batch, device, peaks[precision]
            )
            rows.append(row)
            variant_rows += more_variant_rows
            compile_rows += more_compile_rows
            print(rows[-1], flush=True)
            memory_rows.append(memory_row(args, pair, precision, ours_model, ours_batch, device))
            print(memory_rows[-1], flush=True)
        del pair

    write_report(
        args.output,
        f"Training step: hf_ddpm vs diffusers ({device.type})",
        info,
        report_sections(device, rows, memory_rows, variant_rows, compile_rows),
        report_notes(args, macs_per_preset),
    )


if __name__ == "__main__":
    main()
