"""Where a training step's time goes: torch.profiler on one step of both models, same weights and batch.

    python benchmarks/profile_train_step.py --preset ddpm-cifar10 --batch_size 8 --steps 2

Prints, per model, the operators with the most self time and the number of calls of the copy-type operators, and
writes `benchmarks/results/profile_train_step.md` (or `--output NAME`.md).
"""

from __future__ import annotations

import argparse

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
import torch
import torch.nn.functional as F
from bench_utils import machine_info, markdown_table, paired_models, write_report
from torch.profiler import ProfilerActivity, profile

COPY_OPS = ("aten::copy_", "aten::cat", "aten::contiguous", "aten::clone", "aten::to")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="ddpm-cifar10")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=2, help="Profiled steps (after one warm-up step).")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--channels_last", action="store_true", help="Both models and the batch in NHWC (default: NCHW)."
    )
    parser.add_argument(
        "--output", default="profile_train_step", help="Name of the Markdown file in benchmarks/results/."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    info = machine_info(device)

    stock, ours = paired_models(args.preset, device)
    size = ours.config.sample_size
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch_size, ours.config.in_channels, size, size, generator=g)
    t = torch.randint(0, 1000, (args.batch_size,), generator=g)
    noise = torch.randn(x.shape, generator=g)
    layout = torch.channels_last if args.channels_last else torch.contiguous_format
    x = x.contiguous(memory_format=layout)

    sections = []
    for name, model in (("diffusers UNet2DModel", stock), ("hf_ddpm DDPMUNet2DModel", ours)):
        model.train().to(memory_format=layout)
        opt = torch.optim.AdamW(model.parameters(), lr=2e-4)

        def step(model=model, opt=opt):
            loss = F.mse_loss(model(x, t).sample, noise)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)

        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step()
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events)
        rows = []
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
            share = 100 * e.self_cpu_time_total / total
            rows.append(
                [e.key, e.count // args.steps, f"{e.self_cpu_time_total / args.steps / 1e3:.1f}", f"{share:.1f}"]
            )
        copies = {e.key: e.count // args.steps for e in events if e.key in COPY_OPS}
        sections.append(
            f"## {name}\n\nself CPU time per step: {total / args.steps / 1e3:.0f} ms; copy-type calls per step: "
            f"{copies}\n\n" + markdown_table(["op", "calls/step", "self ms/step", "% of self time"], rows)
        )
        print(sections[-1])

    write_report(
        args.output,
        f"Profile of one training step: {args.preset}, batch {args.batch_size}, fp32, "
        f"{'NHWC' if args.channels_last else 'NCHW'}, CPU",
        info,
        sections,
        [
            "Step = forward + MSE loss + backward + grad-norm clip 1.0 + AdamW (torch default implementation).",
            "Profiler overhead inflates small ops; use for shares and call counts, not absolute speed.",
        ],
    )


if __name__ == "__main__":
    main()
