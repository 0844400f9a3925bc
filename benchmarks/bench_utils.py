"""Shared machinery of the benchmarks: machine description, paired models, interleaved timing, Markdown output.

Every benchmark compares hf_ddpm with stock diffusers in one process: same config, same weights (stock
`UNet2DModel`'s state_dict loaded strictly into `DDPMUNet2DModel`), same precision. After warm-up the two
candidates run interleaved (A B, B A, A B, ...) so that a change of machine load hits both alike, and the
ratio reported is the median of the per-repetition ratios (each ratio taken from a pair of neighbouring runs).
"""

from __future__ import annotations

import math
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/x.py` puts benchmarks/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO_ROOT))

RESULTS_DIR = Path(__file__).resolve().parent / "results"


# --------------------------------------------------------------------------------------------------- machine
def _lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def machine_info(device: torch.device) -> dict[str, str]:
    """What a reader needs to judge a figure: CPU (or GPU), cores, ISA, threads, versions, load."""
    import diffusers

    cpu = _lscpu()
    flags = cpu.get("Flags", "").split()
    isa = [f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma")]
    info = {
        "cpu": f"{cpu.get('Model name', platform.processor())}, {os.cpu_count()} logical cores",
        "cpu ISA (relevant flags)": " ".join(sorted(isa)) or "n/a",
        "torch CPU capability": torch.backends.cpu.get_cpu_capability(),
        "torch threads": str(torch.get_num_threads()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "load average at start (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg()),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = str(torch.version.cuda)
    return info


def command_line() -> str:
    return "python " + " ".join(shlex.quote(a) for a in [os.path.relpath(sys.argv[0], REPO_ROOT), *sys.argv[1:]])


# ---------------------------------------------------------------------------------------------------- models
def paired_models(preset: str, device: torch.device, seed: int = 0, **overrides):
    """
    Stock `UNet2DModel` with random weights and `DDPMUNet2DModel` holding exactly those weights.

    Args:
        preset (`str`): A name of `DDPMUNet2DModel.presets()`.
        device (`torch.device`): Where both models go.
        seed (`int`, *optional*, defaults to `0`): Seed of the stock model's initialisation.
        overrides: Config fields to change (e.g. `dropout=0.0`).

    Returns:
        `tuple[UNet2DModel, DDPMUNet2DModel]`.
    """
    from diffusers import UNet2DModel

    from hf_ddpm.models.presets import PRESETS
    from hf_ddpm.models.unet_2d import DDPMUNet2DModel

    config = {**PRESETS[preset], **overrides}
    torch.manual_seed(seed)
    stock = UNet2DModel(**config)
    ours = DDPMUNet2DModel(**config)
    ours.load_state_dict(stock.state_dict(), strict=True)
    return stock.to(device), ours.to(device)


def forward_macs(model: torch.nn.Module, in_channels: int, size: int) -> int:
    """
    Multiply-accumulates of one forward at batch 1 (FlopCounterMode's FLOPs / 2: conv, linear, attention).

    Counted on a copy built on the meta device, as `tests/models/test_presets.py` does: there attention runs as
    plain matmuls that FlopCounterMode counts, while on CPU the fused SDPA kernel would be left out.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta_model = type(model).from_config(model.config)
    counter = FlopCounterMode(display=False)
    x = torch.zeros(1, in_channels, size, size, device="meta")
    with counter, torch.no_grad():
        meta_model(x, torch.tensor([10], device="meta"))
    return counter.get_total_flops() // 2


# ---------------------------------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


# The EMA both training scripts build by default (diffusers' train_unconditional.py, hf_ddpm's examples/train.py):
# decay up to 0.9999 with diffusers' warm-up 1 - (1 + n / inv_gamma)^-power.
EMA_SETTINGS = {"decay": 0.9999, "use_ema_warmup": True, "inv_gamma": 1.0, "power": 0.75}


def interleaved(
    candidates: dict[str, Callable[[], object]], device: torch.device, warmup: int, reps: int, clock: str = "wall"
) -> dict[str, list[float]]:
    """
    Seconds per call of each candidate, measured interleaved after `warmup` calls of each.

    The order alternates every repetition (A B, then B A, ...) so neither candidate always runs first after the
    other's allocations. `clock="cpu"` measures this process's CPU time instead of wall time: with one thread on a
    machine shared with other jobs it leaves out the time the thread waited for a core (with several threads it
    also counts their spin-waiting, so it is only meaningful at `--threads 1`).
    """
    now = CLOCKS[clock]
    names = list(candidates)
    for _ in range(warmup):
        for name in names:
            candidates[name]()
    synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            start = now()
            candidates[name]()
            synchronize(device)
            times[name].append(now() - start)
    return times


def paired_ratio(slow: list[float], fast: list[float]) -> tuple[float, float, float]:
    """Median, min and max of the per-repetition speed-ups `slow[i] / fast[i]` (>1: `fast` is faster)."""
    ratios = [s / f for s, f in zip(slow, fast)]
    return statistics.median(ratios), min(ratios), max(ratios)


def median_ci(values: list[float], level: float = 0.95) -> tuple[float, float]:
    """
    Distribution-free confidence interval of the median: the order statistics `x_(j)` and `x_(n+1-j)`, with the
    largest `j` such that P(Binomial(n, 1/2) ≤ j − 1) ≤ (1 − level)/2 (coverage ≥ `level` for any continuous
    distribution of independent samples). With too few samples for `level`, the whole range.
    """
    xs, n = sorted(values), len(values)
    tail, cdf, j = (1 - level) / 2, 0.0, 0
    for i in range(n + 1):
        cdf += math.comb(n, i) / 2**n
        if cdf > tail:
            break
        j = i + 1
    return (xs[j - 1], xs[n - j]) if j > 0 else (xs[0], xs[-1])


def speedup_cell(slow: list[float], fast: list[float], bold: bool = False) -> str:
    """`median× [95 % CI of the median] (min–max)` of the per-repetition speed-ups `slow[i] / fast[i]`."""
    ratios = [s / f for s, f in zip(slow, fast, strict=True)]
    lo, hi = median_ci(ratios)
    text = f"{statistics.median(ratios):.3f}×"
    return f"{f'**{text}**' if bold else text} [{lo:.2f}, {hi:.2f}] ({min(ratios):.2f}–{max(ratios):.2f})"


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def cpu_peak_gflops(dtype: torch.dtype, n: int = 1024, reps: int = 3, clock: str = "wall") -> float:
    """
    Best-of-`reps` GFLOP/s of an n×n×n `torch.mm` (2n³ FLOPs): the attainable matmul peak at these threads, timed
    with the same clock as the benchmark.
    """
    now = CLOCKS[clock]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        start = now()
        torch.mm(a, b)
        best = min(best, now() - start)
    return 2 * n**3 / best / 1e9


def max_rss_mib() -> float:
    """
    Peak resident set size of this process so far, in MiB.

    On Linux this is `VmHWM` of /proc/self/status: `ru_maxrss` would do in a fresh interpreter, but Linux carries
    it over fork + exec, so a child started by a big parent would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_isolated(args: list[str]) -> str:
    """Run `python <args>` in a fresh process (for peak-memory figures that another model cannot pollute)."""
    out = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO_ROOT)
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return out.stdout


# -------------------------------------------------------------------------------------------------- markdown
def markdown_table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_report(name: str, title: str, info: dict[str, str], sections: list[str], notes: list[str]) -> Path:
    """Write `benchmarks/results/<name>.md` (and print it): title, command, machine, tables, notes."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    info = {**info, "load average at end (1/5/15 min)": " / ".join(f"{x:.2f}" for x in os.getloadavg())}
    text = [f"# {title}", "", f"Command: `{command_line()}`", ""]
    text += [markdown_table(["machine", ""], [[k, v] for k, v in info.items()]), ""]
    for section in sections:
        text += [section, ""]
    if notes:
        text += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    path = RESULTS_DIR / f"{name}.md"
    path.write_text("\n".join(text))
    print("\n".join(text))
    return path
