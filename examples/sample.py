"""Sample a grid of images from a saved hf_ddpm (or stock diffusers) pipeline.

    python examples/sample.py --pretrained outputs/digits --scheduler ddim --num_inference_steps 50 --output grid.png

`--pretrained` is a folder written by `save_pretrained`/`examples/train.py` or a Hub repo id. Without it a
randomly initialised preset is sampled, which only shows that the machinery runs.

A class-conditional model samples each class in turn by default, one grid row per class, with classifier-free
guidance (`--guidance_scale`, the pipeline's default without it); on a digits model `--score_digits` then reports the
class accuracy (the share of samples a classifier trained on real digits gives their requested digit with confidence
>= 0.9), and `--score_unconditional` the same model at s = 0 beside it:

    python examples/sample.py --pretrained outputs/digits --samples_per_class 8 --score_digits --score_unconditional
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from diffusers.utils import make_image_grid
from runtime_flags import add_runtime_arguments, image_path_flag, prepare_pipeline

from hf_ddpm import DDIMScheduler, DDPMPipeline, DDPMScheduler, DDPMUNet2DModel
from hf_ddpm.pipelines.guidance import DEFAULT_GUIDANCE_SCALE
from hf_ddpm.training.args import non_negative_float, positive_int

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
# The UNet's forward under torch.autocast; the scheduler's step stays in float32 (its tables are float64).
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}
CONDITIONAL_FLAGS = ("class_labels", "samples_per_class", "guidance_scale", "score_unconditional")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--pretrained", default=None, help="Pipeline folder or Hub repo id.")
    parser.add_argument("--preset", default="tiny", help="UNet preset to sample at random init when no --pretrained.")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="ddim", help="Sampler to swap in.")
    parser.add_argument("--timestep_spacing", default=None, help="Override the scheduler's timestep spacing.")
    parser.add_argument(
        "--num_inference_steps", type=positive_int, default=None, help="Default: T for DDPM, 50 for DDIM."
    )
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's η (eq. 16).")
    parser.add_argument("--sigma_hat", action="store_true", help="DDIM's σ̂ sampler (Table 1's larger variance).")
    parser.add_argument(
        "--batch_size",
        type=positive_int,
        default=16,
        help="Number of samples in the grid; for a class-conditional model, shared equally by the requested classes "
        "(at least one each) unless --samples_per_class is given.",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mixed_precision",
        choices=sorted(AUTOCAST_DTYPES),
        default="no",
        help="Run the UNet under torch.autocast in this dtype (as training's --mixed_precision).",
    )
    add_runtime_arguments(parser)
    parser.add_argument(
        "--output",
        type=image_path_flag,
        default="samples.png",
        help="Where to write the grid: an image extension PIL writes, in a folder that exists.",
    )
    parser.add_argument(
        "--score_digits",
        action="store_true",
        help="Score the samples with hf_ddpm.evaluation.digit_score (a classifier trained on real digits) and write "
        "the result as JSON beside the grid.",
    )
    _add_conditional_arguments(parser)
    return parser.parse_args(argv)


def _add_conditional_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("class-conditional models")
    group.add_argument(
        "--class_labels",
        default=None,
        help="Classes to sample, one grid row each: 'all' (every class in turn; the default), or comma-separated "
        "class ids or names of the pipeline's id2label (e.g. 3,7 or cat,dog).",
    )
    group.add_argument(
        "--samples_per_class", type=positive_int, default=None, help="Samples of each class (grid columns)."
    )
    group.add_argument(
        "--guidance_scale",
        type=non_negative_float,
        default=None,
        help=f"Classifier-free guidance s = 1 + w: 0 samples the unconditional model, 1 the conditional one alone; "
        f"default: the pipeline's ({DEFAULT_GUIDANCE_SCALE:g}).",
    )
    group.add_argument(
        "--score_unconditional",
        action="store_true",
        help="With --score_digits: sample the same labels again at s = 0 (the unconditional model) and report its "
        "confident share and its accuracy against the labels (a chance floor, about 10%%) beside.",
    )


def load_pipeline(args: argparse.Namespace) -> DDPMPipeline:
    """The pipeline of --pretrained (or a random preset), after refusing flags it cannot honour."""
    if args.pretrained is not None:
        pipe = DDPMPipeline.from_pretrained(args.pretrained)
    else:
        pipe = DDPMPipeline(unet=DDPMUNet2DModel.from_preset(args.preset), scheduler=DDPMScheduler())
    if args.score_digits and pipe.unet.config.in_channels != 1:
        raise ValueError(
            f"--score_digits scores grayscale digits, but the model makes {pipe.unet.config.in_channels}-channel "
            "images; drop --score_digits or sample a 1-channel (digits) model."
        )
    given = [f"--{name}" for name in CONDITIONAL_FLAGS if getattr(args, name) not in (None, False)]
    if pipe.num_classes is None and given:
        raise ValueError(f"{', '.join(given)} need a class-conditional model; this one is unconditional.")
    if args.score_unconditional and not args.score_digits:
        raise ValueError("--score_unconditional adds to --score_digits; give both.")
    if args.score_digits and pipe.num_classes not in (None, 10):
        raise ValueError(
            f"--score_digits on a class-conditional model needs its 10 classes to be the digits 0-9, but it has "
            f"{pipe.num_classes} classes."
        )
    return pipe


def requested_classes(pipe: DDPMPipeline, text: str) -> list[int]:
    """The class ids of --class_labels: 'all', or comma-separated ids and id2label names."""
    if text == "all":
        return list(range(pipe.num_classes))
    items = [item.strip() for item in text.split(",") if item.strip()]
    names = [item for item in items if not item.isdigit()]
    try:
        name_ids = dict(zip(names, pipe.get_label_ids(names))) if names else {}
    except ValueError as e:
        raise ValueError(f"--class_labels {text!r}: {e}") from e
    classes = [name_ids[item] if item in name_ids else int(item) for item in items]
    outside = [c for c in classes if c >= pipe.num_classes]
    if not classes or outside:
        raise ValueError(
            f"--class_labels {text!r}: give 'all' or class ids in [0, {pipe.num_classes - 1}] or id2label names"
            + (f"; {outside} are not classes of this model." if outside else ".")
        )
    return classes


def class_plan(pipe: DDPMPipeline, args: argparse.Namespace) -> tuple[torch.Tensor | None, int | None, int | None]:
    """The label of each sample (`None` for an unconditional model) and the grid's rows and columns: one row per
    requested class, its samples along the row."""
    if pipe.num_classes is None:
        return None, None, None
    classes = requested_classes(pipe, args.class_labels or "all")
    per_class = args.samples_per_class or max(1, args.batch_size // len(classes))
    return torch.tensor(classes).repeat_interleave(per_class), len(classes), per_class


def sample(
    pipe: DDPMPipeline,
    args: argparse.Namespace,
    device: torch.device,
    labels: torch.Tensor | None = None,
    guidance_scale: float | None = None,
) -> list:
    """PIL samples from the seed of --seed: `args.batch_size` of them, or one per label of `labels`."""
    generator = torch.Generator(device).manual_seed(args.seed)
    conditioning = {} if labels is None else {"class_labels": labels, "guidance_scale": guidance_scale}
    dtype = AUTOCAST_DTYPES[args.mixed_precision]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        return pipe(
            batch_size=args.batch_size if labels is None else len(labels),
            generator=generator,
            num_inference_steps=args.num_inference_steps,
            eta=args.eta,
            sigma_hat=args.sigma_hat,
            **conditioning,
        ).images


def write_grid(images: list, path: Path, rows: int | None = None, cols: int | None = None) -> None:
    """The samples as one image: `rows` × `cols`, or the squarest grid, blank tiles filling the last row."""
    if rows is None:
        cols = math.ceil(math.sqrt(len(images)))
        rows = math.ceil(len(images) / cols)
    images = images + [images[0].point(lambda _: 0)] * (rows * cols - len(images))
    make_image_grid(images, rows=rows, cols=cols).save(path)


def score_conditional(
    pipe: DDPMPipeline, args: argparse.Namespace, device: torch.device, images: list, labels: torch.Tensor
) -> None:
    """Write and summarize the class accuracy of `images`, and with --score_unconditional that of s = 0 beside it."""
    from hf_ddpm.evaluation.digits import class_accuracy

    scale = DEFAULT_GUIDANCE_SCALE if args.guidance_scale is None else args.guidance_scale
    score = {"guidance_scale": scale, **class_accuracy(images, labels)}
    summary = (
        f"class accuracy {score['accuracy']:.1%} at guidance scale {scale:g} (classified as the requested digit "
        f"with confidence >= {score['confidence']}; per digit "
        + ", ".join(f"{c}: {a:.0%}" for c, a in enumerate(score["per_class_accuracy"]) if a is not None)
        + f"), confident share {score['confident_share']:.1%}"
    )
    if args.score_unconditional:
        unconditional = class_accuracy(sample(pipe, args, device, labels, 0.0), labels)
        score["unconditional"] = {"guidance_scale": 0.0, **unconditional}
        summary += (
            f"; unconditional (s = 0): confident share {unconditional['confident_share']:.1%}, "
            f"accuracy {unconditional['accuracy']:.1%} (a chance floor, ≈ 10%)"
        )
    score_path = Path(args.output).with_suffix(".json")
    score_path.write_text(json.dumps(score, indent=2) + "\n")
    print(
        f"{summary}; the classifier: {score['classifier_accuracy']:.1%} accurate and "
        f"{score['real_confident_share']:.1%} confident on real digits it never saw. Wrote {score_path}"
    )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    pipe = load_pipeline(args)
    labels, rows, cols = class_plan(pipe, args)
    overrides = {} if args.timestep_spacing is None else {"timestep_spacing": args.timestep_spacing}
    pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config, **overrides)

    device = prepare_pipeline(pipe, args)
    images = sample(pipe, args, device, labels, args.guidance_scale)
    write_grid(images, args.output, rows, cols)
    what = f"{args.batch_size} samples" if labels is None else f"{rows} classes × {cols} samples"
    print(
        f"wrote {args.output} ({what}, {args.scheduler}, seed {args.seed}, "
        f"mixed precision {args.mixed_precision}, {device})"
    )
    if args.score_digits and labels is not None:
        score_conditional(pipe, args, device, images, labels)
    elif args.score_digits:
        from hf_ddpm.evaluation.digits import digit_score

        score = digit_score(images)
        score_path = Path(args.output).with_suffix(".json")
        score_path.write_text(json.dumps(score, indent=2) + "\n")
        print(
            f"{score['confident_share']:.1%} of samples classified with confidence >= {score['confidence']}, "
            f"classes {score['class_histogram']} (normalized entropy {score['class_entropy']:.3f}); "
            f"the classifier: {score['classifier_accuracy']:.1%} accurate and {score['real_confident_share']:.1%} "
            f"confident on real digits it never saw. Wrote {score_path}"
        )


if __name__ == "__main__":
    main()
