"""Sample a grid of images from a saved hf_ddpm (or stock diffusers) pipeline.

    python examples/sample.py --pretrained outputs/digits --scheduler ddim --num_inference_steps 50 --output grid.png

`--pretrained` is a folder written by `save_pretrained`/`examples/train.py` or a Hub repo id. Without it a
randomly initialised preset is sampled, which only shows that the machinery runs.
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
from hf_ddpm.training.args import positive_int

SCHEDULERS = {"ddpm": DDPMScheduler, "ddim": DDIMScheduler}
# The UNet's forward under torch.autocast; the scheduler's step stays in float32 (its tables are float64).
AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
    parser.add_argument("--batch_size", type=positive_int, default=16, help="Number of samples in the grid.")
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
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.pretrained is not None:
        pipe = DDPMPipeline.from_pretrained(args.pretrained)
    else:
        pipe = DDPMPipeline(unet=DDPMUNet2DModel.from_preset(args.preset), scheduler=DDPMScheduler())
    if args.score_digits and pipe.unet.config.in_channels != 1:
        raise ValueError(
            f"--score_digits scores grayscale digits, but the model makes {pipe.unet.config.in_channels}-channel "
            "images; drop --score_digits or sample a 1-channel (digits) model."
        )
    overrides = {} if args.timestep_spacing is None else {"timestep_spacing": args.timestep_spacing}
    pipe.scheduler = SCHEDULERS[args.scheduler].from_config(pipe.scheduler.config, **overrides)

    device = prepare_pipeline(pipe, args)
    generator = torch.Generator(device).manual_seed(args.seed)
    dtype = AUTOCAST_DTYPES[args.mixed_precision]
    with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
        images = pipe(
            batch_size=args.batch_size,
            generator=generator,
            num_inference_steps=args.num_inference_steps,
            eta=args.eta,
            sigma_hat=args.sigma_hat,
        ).images
    cols = math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    images += [images[0].point(lambda _: 0)] * (rows * cols - len(images))  # blank tiles fill the last row
    make_image_grid(images, rows=rows, cols=cols).save(args.output)
    print(
        f"wrote {args.output} ({args.batch_size} samples, {args.scheduler}, seed {args.seed}, "
        f"mixed precision {args.mixed_precision}, {device})"
    )
    if args.score_digits:
        from hf_ddpm.evaluation.digits import digit_score

        score = digit_score(images[: args.batch_size])
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
