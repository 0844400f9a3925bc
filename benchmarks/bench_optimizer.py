"""The weight updates after backward, on a preset's parameters: one AdamW step and one EMA step.

AdamW: diffusers' `train_unconditional.py` builds `torch.optim.AdamW(...)`, whose default on the CPU is the for-loop
implementation (on CUDA: foreach); hf_ddpm's `examples/train.py` takes the fused kernel where torch has one
(`hf_ddpm.training.optimizer.adamw`). This times `optimizer.step()` alone, on gradients drawn once, after a warm-up
step that creates Adam's state, interleaved.

EMA (decay 0.9999 with diffusers' warm-up, as both training scripts set it): diffusers' `EMAModel` as
`train_unconditional.py` builds it (`foreach=False`), the same with `foreach=True`, and hf_ddpm's
`hf_ddpm.training.ema.EMAModel` (one `torch._foreach_lerp_`).

    python benchmarks/bench_optimizer.py --presets ddpm-cifar10 --threads 1 --clock cpu
"""

from __future__ import annotations

import argparse

import bench_utils  # noqa: F401  (puts the repo root on sys.path)
import torch
from bench_utils import EMA_SETTINGS, interleaved, machine_info, markdown_table, median, paired_ratio, write_report
from diffusers.training_utils import EMAModel as StockEMAModel

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.training.ema import EMAModel
from hf_ddpm.training.optimizer import adamw

IMPLEMENTATIONS = ("for-loop", "foreach", "fused")
EMA_IMPLEMENTATIONS = {
    "diffusers EMAModel": (StockEMAModel, {}),
    "diffusers EMAModel foreach=True": (StockEMAModel, {"foreach": True}),
    "hf_ddpm EMAModel": (EMAModel, {}),
}


def make_optimizer(preset: str, implementation: str, device: torch.device) -> torch.optim.AdamW:
    """AdamW on the preset's parameters, with gradients set and Adam's state (m, v) created by one step."""
    torch.manual_seed(0)
    model = DDPMUNet2DModel.from_preset(preset).to(device)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer = adamw(model.parameters(), lr=2e-4, implementation=implementation)
    optimizer.step()  # as after the first training step
    return optimizer


def make_ema_step(preset: str, implementation: str, device: torch.device):
    """`ema.step` on the preset's parameters, after one step (the EMA's first step copies the weights)."""
    torch.manual_seed(0)
    parameters = list(DDPMUNet2DModel.from_preset(preset).to(device).parameters())
    ema_class, kwargs = EMA_IMPLEMENTATIONS[implementation]
    ema = ema_class(parameters, **EMA_SETTINGS, **kwargs)
    ema.step(parameters)
    return lambda: ema.step(parameters)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["digits-16", "ddpm-cifar10"])
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", default="cpu", choices=["wall", "cpu"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default="optimizer_step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    info = machine_info(device)
    rows, ema_rows = [], []
    for preset in args.presets:
        optimizers = {name: make_optimizer(preset, name, device) for name in IMPLEMENTATIONS}
        num_parameters = sum(p.numel() for p in optimizers["fused"].param_groups[0]["params"])
        times = interleaved({n: o.step for n, o in optimizers.items()}, device, args.warmup, args.reps, args.clock)
        for name in IMPLEMENTATIONS:
            ratio, lo, hi = paired_ratio(times["for-loop"], times[name])
            rows.append(
                [
                    preset,
                    f"{num_parameters / 1e6:.1f}M",
                    name,
                    f"{1e3 * median(times[name]):.1f}",
                    f"{ratio:.2f}× ({lo:.2f}–{hi:.2f})",
                ]
            )
            print(rows[-1], flush=True)
        steps = {name: make_ema_step(preset, name, device) for name in EMA_IMPLEMENTATIONS}
        times = interleaved(steps, device, args.warmup, args.reps, args.clock)
        baseline = next(iter(EMA_IMPLEMENTATIONS))
        for name in EMA_IMPLEMENTATIONS:
            ratio, lo, hi = paired_ratio(times[baseline], times[name])
            ema_rows.append([preset, name, f"{1e3 * median(times[name]):.1f}", f"{ratio:.2f}× ({lo:.2f}–{hi:.2f})"])
            print(ema_rows[-1], flush=True)
    write_report(
        args.output,
        f"Weight updates: AdamW and EMA steps ({device.type})",
        info,
        [
            "## AdamW: torch's implementations\n\n"
            + markdown_table(
                ["preset", "parameters", "implementation", "ms per step (median)", "speed-up over for-loop"], rows
            ),
            "## EMA of the weights\n\n"
            + markdown_table(
                ["preset", "implementation", "ms per step (median)", "speed-up over diffusers' default"], ema_rows
            ),
        ],
        [
            f"`optimizer.step()` only (lr 2e-4, weight decay 0), Adam state present; {args.warmup} warm-up step(s), "
            f"{args.reps} interleaved repetitions; speed-up = median of per-repetition ratios.",
            "for-loop is what diffusers' train_unconditional.py gets on the CPU; fused is examples/train.py's default.",
            "EMA: `ema.step(parameters)` only, decay 0.9999 with warm-up (inv_gamma 1, power 3/4), after one step; "
            "diffusers' default (`foreach=False`) is what train_unconditional.py builds, hf_ddpm's is examples/train.py's.",
        ],
    )


if __name__ == "__main__":
    main()
