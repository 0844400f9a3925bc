"""The guidance table (Ho & Salimans 2022's trade-off, for digits) and `evaluate.py --tables guidance`, on a tiny
random class-conditional UNet at 16 px: which samples each row draws, how the UNet is called, and what each column
is computed from."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from example_scripts import load_example

from hf_ddpm.evaluation.digit_features import digit_feature_metrics
from hf_ddpm.evaluation.digits import DigitClassifier, class_accuracy
from hf_ddpm.evaluation.report import guidance_markdown_rows, markdown_table
from hf_ddpm.evaluation.tables import guidance_table
from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

NULL = 10  # the null label ∅ of a 10-class model
PER_CLASS = 4


def conditional_digit_pipeline() -> DDPMPipeline:
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset(
        "tiny", in_channels=1, out_channels=1, num_class_embeds=NULL + 1, sample_size=16
    ).eval()
    pipe = DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=10), id2label={i: str(i) for i in range(10)})
    pipe.set_progress_bar_config(disable=True)
    return pipe


class _AllZeros:
    """A stand-in classifier model: every sample a confident 0."""

    def predict_proba(self, features):
        return np.eye(10)[np.zeros(len(features), dtype=int)]


ZERO_CLASSIFIER = DigitClassifier(_AllZeros(), resolution=16, held_out_accuracy=1.0, real_confident_share=1.0)


def test_each_scale_runs_the_unet_once_per_step_and_batches_both_halves_only_when_guiding():
    pipe = conditional_digit_pipeline()
    calls = []
    pipe.unet.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(kwargs["class_labels"].tolist()), with_kwargs=True
    )
    rows = guidance_table(
        pipe, scales=(0, 1, 2.5), samples_per_class=PER_CLASS, num_inference_steps=2, metric="digits",
        batch_size=40, classifier=ZERO_CLASSIFIER, progress=False,
    )  # fmt: skip
    requested = torch.arange(10).repeat_interleave(PER_CLASS).tolist()
    assert calls == [[NULL] * 40] * 2 + [requested] * 2 + [requested + [NULL] * 40] * 2
    assert [(r["guidance_scale"], r["w"], r["model"]) for r in rows] == [
        (0.0, -1.0, "unconditional ε(x, ∅)"), (1.0, 0.0, "conditional ε(x, c)"), (2.5, 1.5, "guided"),
    ]  # fmt: skip
    # The stand-in calls every sample a confident 0: only the 4 samples asked to be 0 are right.
    assert all(r["class_accuracy"] == pytest.approx(0.1) and r["confident_share"] == 1.0 for r in rows)
    assert all(r["num_samples"] == 40 and "fdd" not in r for r in rows)


def test_rows_score_the_samples_a_ddim_call_with_those_labels_draws(digit_feature_space):
    pipe = conditional_digit_pipeline()
    rows = guidance_table(
        pipe, scales=(1, 3), samples_per_class=PER_CLASS, num_inference_steps=3, num_bootstrap=0,
        feature_space=digit_feature_space, progress=False,
    )  # fmt: skip
    # The same samples by hand: DDIM (η = 0, linear = leading spacing, no clipping) from the seed-0 generator.
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing="leading", clip_sample=False)
    by_hand = DDPMPipeline(pipe.unet, scheduler)
    labels = torch.arange(10).repeat_interleave(PER_CLASS)
    for row in rows:
        images = by_hand(
            class_labels=labels, guidance_scale=row["guidance_scale"], num_inference_steps=3, output_type="pt",
            generator=torch.Generator().manual_seed(0),
        ).images * 2 - 1  # fmt: skip
        assert row["class_accuracy"] == class_accuracy(images, labels)["accuracy"]
        per_class = [
            digit_feature_metrics(images[labels == c], reference_class=c, feature_space=digit_feature_space,
                                  num_bootstrap=0)
            for c in range(10)
        ]  # fmt: skip
        assert row["fdd_per_class"] == pytest.approx(np.mean([m.fdd for m in per_class]), rel=1e-9)
        assert row["precision"] == pytest.approx(np.mean([m.precision for m in per_class]), rel=1e-9)
        assert row["recall"] == pytest.approx(np.mean([m.recall for m in per_class]), rel=1e-9)
        overall = digit_feature_metrics(images, feature_space=digit_feature_space, num_bootstrap=0)
        assert row["fdd"] == pytest.approx(overall.fdd, rel=1e-9)
    assert rows[0]["fdd"] != rows[1]["fdd"]  # guidance changed the samples
    text = markdown_table(guidance_markdown_rows(rows))
    assert "| s | w = s − 1 | model | class accuracy |" in text and " ± nan " in text


def test_reference_class_compares_with_the_real_digits_of_that_class_only(digit_feature_space):
    labels = digit_feature_space.reference_labels
    assert labels.shape == (4000,) and sorted(labels.unique().tolist()) == list(range(10))
    sevens = digit_feature_space.reference_features[labels == 7]
    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    kwargs = {"feature_space": digit_feature_space, "num_bootstrap": 2}
    by_class = digit_feature_metrics(images, reference_class=7, **kwargs)
    by_features = digit_feature_metrics(images, reference_features=sevens, **kwargs)
    assert by_class == by_features
    assert by_class.fdd != digit_feature_metrics(images, **kwargs).fdd
    with pytest.raises(ValueError, match="`reference_class` must be a digit 0-9"):
        digit_feature_metrics(images, reference_class=10, **kwargs)
    with pytest.raises(ValueError, match="not both"):
        digit_feature_metrics(images, reference_class=7, reference_features=sevens, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"samples_per_class": 3}, "`samples_per_class` must be an int >= 4"),
        ({"scales": (1, -1)}, "`scales` must be finite guidance scales >= 0"),
        ({"metric": "fid"}, "`metric` must be one of"),
    ],
)
def test_bad_arguments_are_refused_before_sampling(kwargs, words):
    with pytest.raises(ValueError, match=words):
        guidance_table(conditional_digit_pipeline(), **kwargs)


def test_an_unconditional_pipeline_has_no_guidance_table():
    pipe = DDPMPipeline(DDPMUNet2DModel.from_preset("tiny"), DDPMScheduler())
    with pytest.raises(ValueError, match="needs a class-conditional pipeline"):
        guidance_table(pipe)


@pytest.fixture
def conditional_pipeline_dir(tmp_path) -> Path:
    folder = tmp_path / "pipe"
    with pytest.warns(UserWarning, match="custom-component layout"):
        conditional_digit_pipeline().save_pretrained(folder)
    return folder


def test_evaluate_script_writes_the_guidance_table(conditional_pipeline_dir, tmp_path, digit_feature_space):
    out = tmp_path / "eval"
    load_example("evaluate").main(
        ["--pretrained", str(conditional_pipeline_dir), "--output_dir", str(out), "--tables", "guidance",
         "--guidance_scales", "0,1,2", "--samples_per_class", "4", "--guidance_steps", "2",
         "--guidance_bootstrap", "2", "--num_threads", "1", "--device", "cpu"]
    )  # fmt: skip
    with open(out / "guidance.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["guidance_scale"]) for r in rows] == [0.0, 1.0, 2.0]
    assert all(int(r["num_samples"]) == 40 and float(r["fdd"]) > 0 and 0 <= float(r["recall"]) <= 1 for r in rows)
    assert all(float(r["fdd_per_class_std_error"]) > 0 for r in rows)  # two resamples give an error
    assert "FDD per class" in (out / "guidance.md").read_text()
    assert "Classifier-free guidance" in (out / "results.md").read_text()


def test_evaluate_script_refuses_the_guidance_table_of_an_unconditional_model(tmp_path, monkeypatch):
    from example_scripts import save_tiny_pipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a table was started")

    monkeypatch.setattr("hf_ddpm.evaluation.tables.nll_table", refuse)
    with pytest.raises(ValueError, match="--tables guidance .* needs a class-conditional model"):
        load_example("evaluate").main(
            ["--pretrained", str(save_tiny_pipeline(tmp_path / "pipe")), "--output_dir", str(tmp_path / "eval"),
             "--tables", "nll,guidance", "--device", "cpu"]
        )  # fmt: skip
