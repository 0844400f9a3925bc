"""Scaling: UNet throughput vs batch size and vs resolution, and data-parallel training in 1 vs 2 processes.

Every figure compares hf_ddpm's DDPMUNet2DModel with stock diffusers UNet2DModel holding the same weights,
interleaved in one process (per rank for the multi-process part).

    python benchmarks/bench_scaling.py                       # CPU defaults (see --help)
    python benchmarks/bench_scaling.py --device cuda --batches 1 8 32 128 512 --resolutions 32 64 128 256

- Batch sweep and resolution sweep: one forward pass (`torch.no_grad`, eval mode: a sampler's unit of work) of the
  `--preset` network (default the CIFAR10 35.7M network; the resolution sweep runs it on larger inputs).
- Processes: one training step (forward, L_simple, backward, gradient all-reduce, AdamW) of `--ddp_preset` under
  `DistributedDataParallel` (gloo on CPU, NCCL on CUDA) with the global batch fixed: one process with
  `--threads` threads vs two processes with `--threads / 2` threads each and half the batch.
"""

from __future__ import annotations

import argparse
import os
import socket

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from bench_utils import interleaved, machine_info, markdown_table, median, paired_models, paired_ratio, write_report


def forward_rows(args, device, sweep: list[tuple[int, int]]) -> list[list[object]]:
    stock, ours = paired_models(args.preset, device, dropout=0.0)
    stock.eval(), ours.eval()
    rows = []
    for batch, size in sweep:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch, ours.config.in_channels, size, size, generator=g).to(device)
        t = torch.randint(0, 1000, (batch,), generator=g).to(device)

        def run(model, x=x, t=t):
            with torch.no_grad():
                model(x, t)

        times = interleaved(
            {"diffusers": lambda: run(stock), "hf_ddpm": lambda: run(ours)}, device, 1, args.reps, args.clock
        )
        ratio, lo, hi = paired_ratio(times["diffusers"], times["hf_ddpm"])
        rows.append(
            [
                args.preset,
                f"{size}²",
                batch,
                f"{batch / median(times['diffusers']):.2f}",
                f"{batch / median(times['hf_ddpm']):.2f}",
                f"**{ratio:.3f}×** ({lo:.2f}–{hi:.2f})",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def _ddp_worker(rank: int, world: int, port: int, args, queue) -> None:
    torch.set_num_threads(max(1, args.threads // world))
    device = torch.device(args.device, rank) if args.device == "cuda" else torch.device("cpu")
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    stock, ours = paired_models(args.ddp_preset, device)
    local_batch = args.ddp_batch // world
    size = ours.config.sample_size
    g = torch.Generator().manual_seed(rank)
    x = torch.randn(local_batch, ours.config.in_channels, size, size, generator=g).to(device)
    noise = torch.randn(x.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (local_batch,), generator=g).to(device)
    steps = {}
    for name, model in (("diffusers", stock), ("hf_ddpm", ours)):
        model.train()
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.AdamW(ddp.parameters(), lr=2e-4)

        def step(ddp=ddp, opt=opt):
            F.mse_loss(ddp(x, t).sample, noise).backward()
            torch.nn.utils.clip_grad_norm_(ddp.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        steps[name] = step
    # Wall clock whatever --clock says: a rank's CPU time would leave out the all-reduce waits being measured.
    times = interleaved(steps, device, 1, args.reps, "wall")
    if rank == 0:
        queue.put(times)
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ddp_rows(args) -> list[list[object]]:
    rows = []
    ctx = mp.get_context("spawn")
    for world in (1, 2):
        queue = ctx.Queue()
        port = _free_port()
        procs = [ctx.Process(target=_ddp_worker, args=(r, world, port, args, queue)) for r in range(world)]
        for p in procs:
            p.start()
        times = queue.get()
        for p in procs:
            p.join()
        ratio, lo, hi = paired_ratio(times["diffusers"], times["hf_ddpm"])
        rows.append(
            [
                args.ddp_preset,
                world,
                max(1, args.threads // world),
                args.ddp_batch,
                f"{args.ddp_batch / median(times['diffusers']):.2f}",
                f"{args.ddp_batch / median(times['hf_ddpm']):.2f}",
                f"**{ratio:.3f}×** ({lo:.2f}–{hi:.2f})",
            ]
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--batches", type=int, nargs="*", default=[1, 2, 4, 8], help="At the preset's resolution.")
    parser.add_argument("--resolutions", type=int, nargs="*", default=[64, 128], help="At batch 1.")
    parser.add_argument("--ddp_preset", default="digits-32")
    parser.add_argument("--ddp_batch", type=int, default=16, help="Global batch of the 1 vs 2 processes runs.")
    parser.add_argument("--no_ddp", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--clock", default="wall", choices=["wall", "cpu"], help="cpu: process CPU time (use with --threads 1)."
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="scaling")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    info = machine_info(device)
    info["timer"] = {"wall": "wall clock (perf_counter)", "cpu": "process CPU time (process_time)"}[args.clock]

    from hf_ddpm.models.presets import PRESETS

    native = PRESETS[args.preset]["sample_size"]
    sweep = [(b, native) for b in args.batches] + [(1, r) for r in args.resolutions if r != native]
    headers = ["preset", "resolution", "batch", "diffusers img/s", "hf_ddpm img/s", "speed-up (min–max)"]
    sections = []
    if sweep:
        sections.append(
            "## UNet forward (no_grad) vs batch size and resolution\n\n"
            + markdown_table(headers, forward_rows(args, device, sweep))
        )
    if not args.no_ddp:
        sections.append(
            "## Training step, DistributedDataParallel, same global batch: 1 vs 2 processes\n\n"
            + markdown_table(
                [
                    "preset",
                    "processes",
                    "threads each",
                    "global batch",
                    "diffusers img/s",
                    "hf_ddpm img/s",
                    "speed-up (min–max)",
                ],
                ddp_rows(args),
            )
        )
    write_report(
        args.output,
        f"Scaling: hf_ddpm vs diffusers ({device.type})",
        info,
        sections,
        [
            f"1 warm-up call, {args.reps} interleaved repetitions per point; speed-up = median over repetitions of "
            "(diffusers time / hf_ddpm time).",
            f"Processes: each of the {{1, 2}} processes runs max(1, {args.threads} // processes) threads, half the "
            "global batch each when there are two; timed by wall clock (a rank's CPU time would leave out the "
            "all-reduce waits).",
        ],
    )


if __name__ == "__main__":
    main()
