"""examples/sample.py on a tiny saved pipeline: the grid, --mixed_precision running the UNet under autocast, and bad
input refused before sampling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from example_scripts import load_example, save_tiny_pipeline
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline


@pytest.fixture
def tiny_pipeline_dir(tmp_path) -> Path:
    return save_tiny_pipeline(tmp_path / "pipe")


def _grid(script, pipeline_dir: Path, output: Path, *flags: str) -> np.ndarray:
    script.main(
        ["--pretrained", str(pipeline_dir), "--num_inference_steps", "5", "--batch_size", "4", "--device", "cpu"]
        + ["--output", str(output), *flags]
    )
    return np.asarray(Image.open(output), dtype=np.float64) / 255


def test_grid_has_every_sample_and_bf16_autocast_stays_close_to_fp32(tiny_pipeline_dir, tmp_path):
    script = load_example("sample")
    fp32 = _grid(script, tiny_pipeline_dir, tmp_path / "fp32.png")
    again = _grid(script, tiny_pipeline_dir, tmp_path / "again.png")
    bf16 = _grid(script, tiny_pipeline_dir, tmp_path / "bf16.png", "--mixed_precision", "bf16")
    size = DDPMUNet2DModel.from_pretrained(tiny_pipeline_dir / "unet").config.sample_size
    assert fp32.shape[:2] == (2 * size, 2 * size)  # 4 samples on a 2×2 grid
    np.testing.assert_array_equal(fp32, again)  # same seed, same grid
    # Autocast really ran (bf16 keeps 8 mantissa bits, so the pixels move) and moved them only by rounding.
    assert np.abs(bf16 - fp32).max() > 0
    assert np.abs(bf16 - fp32).mean() < 0.02


def test_unknown_mixed_precision_is_refused(capsys):
    with pytest.raises(SystemExit):
        load_example("sample").parse_args(["--mixed_precision", "fp8"])
    assert "invalid choice: 'fp8'" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_unet_samples_the_eager_grid(tiny_pipeline_dir, tmp_path):
    script = load_example("sample")
    eager = _grid(script, tiny_pipeline_dir, tmp_path / "eager.png")
    compiled = _grid(script, tiny_pipeline_dir, tmp_path / "compiled.png", "--compile")
    assert np.abs(compiled - eager).max() <= 2 / 255  # 8-bit rounding of float-level differences


# (flags, raised: SystemExit for argparse's "argument --flag: ..." with exit code 2, words the message holds);
# `{tmp}` is the test's temporary folder. A pipeline's folder is added to every command line.
BAD_INPUT = [
    pytest.param(
        ["--device", "cuda"],
        SystemExit,
        ["argument --device", "no 'cuda'", "it has cpu"],
        marks=pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA"),
    ),
    (["--device", "cuda:99"], SystemExit, ["argument --device", "no 'cuda:99'"]),
    (["--device", "tpu"], SystemExit, ["argument --device", "'tpu' is not a torch device"]),
    (["--output", "{tmp}/missing/grid.png"], SystemExit, ["argument --output", "missing", "does not exist"]),
    (["--output", "{tmp}/grid.txt"], SystemExit, ["argument --output", "'.txt'", "no image extension"]),
    (["--batch_size", "0"], SystemExit, ["argument --batch_size", "an integer >= 1", "'0'"]),
    (["--num_inference_steps", "0"], SystemExit, ["argument --num_inference_steps", "an integer >= 1"]),
    (["--score_digits"], ValueError, ["--score_digits", "3-channel"]),
]


@pytest.mark.parametrize(("flags", "raised", "words"), BAD_INPUT)
def test_bad_input_is_refused_before_sampling(flags, raised, words, tiny_pipeline_dir, tmp_path, monkeypatch, capsys):
    def refuse(*args, **kwargs):
        raise AssertionError("sampling started: the bad input was refused too late")

    monkeypatch.setattr(DDPMPipeline, "__call__", refuse)
    flags = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    with pytest.raises(raised) as error:
        load_example("sample").main(
            ["--pretrained", str(tiny_pipeline_dir), "--output", str(tmp_path / "g.png"), *flags]
        )
    message = capsys.readouterr().err if raised is SystemExit else str(error.value)
    if raised is SystemExit:
        assert error.value.code == 2
    for word in words:
        assert word in message, message
