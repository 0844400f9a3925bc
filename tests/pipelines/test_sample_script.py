"""examples/sample.py on a tiny saved pipeline: the grid, --mixed_precision running the UNet under autocast, and bad
input refused before sampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from example_scripts import load_example, save_tiny_pipeline
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler


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


@pytest.fixture
def conditional_digits_dir(tmp_path) -> Path:
    """A tiny random class-conditional 1-channel 16 px pipeline (10 classes named "zero" ... "nine") on disk."""
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", in_channels=1, out_channels=1, num_class_embeds=11, sample_size=16)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    pipe = DDPMPipeline(unet.eval(), DDPMScheduler(num_train_timesteps=10), id2label=dict(enumerate(names)))
    with pytest.warns(UserWarning, match="custom-component layout"):
        pipe.save_pretrained(tmp_path / "cond")
    return tmp_path / "cond"


def _unet_labels(monkeypatch) -> list[list[int]]:
    """The class labels of every UNet forward of the script."""
    calls = []
    forward = DDPMUNet2DModel.forward

    def record(self, sample, timestep, class_labels=None, **kwargs):
        calls.append(class_labels.tolist())
        return forward(self, sample, timestep, class_labels=class_labels, **kwargs)

    monkeypatch.setattr(DDPMUNet2DModel, "forward", record)
    return calls


def test_all_classes_fill_one_grid_row_each_and_the_score_reports_class_accuracy(
    conditional_digits_dir, tmp_path, monkeypatch, capsys
):
    calls = _unet_labels(monkeypatch)
    output = tmp_path / "grid.png"
    load_example("sample").main(
        ["--pretrained", str(conditional_digits_dir), "--num_inference_steps", "2", "--samples_per_class", "3",
         "--device", "cpu", "--output", str(output), "--score_digits", "--score_unconditional"]
    )  # fmt: skip
    assert Image.open(output).size == (3 * 16, 10 * 16)  # columns: samples of a class; rows: the 10 classes
    requested = torch.arange(10).repeat_interleave(3).tolist()
    # Two steps at the default scale (2: both halves in one forward), then two at s = 0 (∅ alone).
    assert calls == [requested + [10] * 30] * 2 + [[10] * 30] * 2
    score = json.loads(output.with_suffix(".json").read_text())
    assert score["guidance_scale"] == 2.0 and score["per_class_count"] == [3] * 10 and score["num_samples"] == 30
    for result in (score, score["unconditional"]):
        assert 0 <= result["accuracy"] <= result["confident_share"] <= 1
        right = [a * n for a, n in zip(result["per_class_accuracy"], result["per_class_count"])]
        assert sum(right) / 30 == pytest.approx(result["accuracy"])
    assert score["unconditional"]["guidance_scale"] == 0.0
    out = capsys.readouterr().out
    assert "10 classes × 3 samples" in out and "class accuracy" in out and "unconditional (s = 0)" in out


def test_named_classes_share_the_batch_and_scale_1_runs_the_conditional_model_alone(
    conditional_digits_dir, tmp_path, monkeypatch
):
    calls = _unet_labels(monkeypatch)
    output = tmp_path / "grid.png"
    load_example("sample").main(
        ["--pretrained", str(conditional_digits_dir), "--num_inference_steps", "2", "--batch_size", "5",
         "--class_labels", "seven,3", "--guidance_scale", "1", "--device", "cpu", "--output", str(output)]
    )  # fmt: skip
    assert Image.open(output).size == (2 * 16, 2 * 16)  # 5 // 2 = 2 samples of each of the 2 classes
    assert calls == [[7, 7, 3, 3]] * 2


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--class_labels", "3,12"], ["--class_labels '3,12'", "[0, 9]", "[12]"]),
        (["--class_labels", "3,eleven"], ["--class_labels '3,eleven'", "['eleven'] are not in id2label"]),
        (["--score_unconditional"], ["--score_unconditional", "--score_digits"]),
    ],
)
def test_bad_class_flags_are_refused_before_sampling(flags, words, conditional_digits_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(DDPMPipeline, "__call__", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(ValueError) as error:
        load_example("sample").main(
            ["--pretrained", str(conditional_digits_dir), "--output", str(tmp_path / "g.png"), *flags]
        )
    for word in words:
        assert word in str(error.value)


def test_class_flags_on_an_unconditional_model_are_refused(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(DDPMPipeline, "__call__", lambda *a, **k: pytest.fail("sampling started"))
    with pytest.raises(ValueError, match="--class_labels, --guidance_scale need a class-conditional model"):
        load_example("sample").main(
            ["--pretrained", str(tiny_pipeline_dir), "--output", str(tmp_path / "g.png"), "--class_labels", "1",
             "--guidance_scale", "3"]
        )  # fmt: skip


def test_negative_guidance_scale_is_refused_at_the_flag(capsys):
    with pytest.raises(SystemExit):
        load_example("sample").parse_args(["--guidance_scale", "-1"])
    assert "argument --guidance_scale: must be a number >= 0" in capsys.readouterr().err
