"""Class-conditional training (classifier-free guidance, Ho & Salimans 2022): labels from the data reach the UNet,
c ← ∅ with probability --class_dropout_prob from the seeded draws, exact resume, saved class names, grids, bad input."""

import json

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.training import loop
from hf_ddpm.training.args import parse_args
from hf_ddpm.training.checkpoint import read_training_args
from hf_ddpm.training.loop import train
from hf_ddpm.training.loss import drop_class_labels
from hf_ddpm.training.saving import GRID_MAX_CLASSES, grid_layout

CLASS_NAMES = ["cat", "dog", "emu"]
NULL = len(CLASS_NAMES)  # ∅ is the last row of the class embedding


def _row_value(row: int) -> int:
    return 10 + 10 * row


@pytest.fixture(scope="module")
def labelled_dataset() -> datasets.Dataset:
    """22 flat gray 8×8 images, row i of gray level 10 + 10 i (so a clean batch tells its rows), in 3 classes."""
    images = [Image.fromarray(np.full((8, 8, 3), _row_value(i), dtype=np.uint8)) for i in range(22)]
    labels = [(7 * i) % 3 for i in range(22)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASS_NAMES)})
    return datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)


@pytest.fixture
def seen(monkeypatch):
    """Records, per training micro-batch, the dataset rows of its clean images and the labels the UNet got."""
    record = {"rows": [], "labels": []}
    real_step, real_forward = loop.train_step, DDPMUNet2DModel.forward

    def step(run, clean_images, epoch, batch_index, class_labels=None):
        # Flat images in [-1, 1]: the gray level names the row.
        levels = ((clean_images.mean(dim=(1, 2, 3)) + 1) * 127.5).round().long()
        record["rows"].append(((levels - 10) // 10).tolist())
        return real_step(run, clean_images, epoch, batch_index, class_labels)

    def forward(self, sample, timestep, class_labels=None, return_dict=True):
        if self.training:
            record["labels"].append(class_labels.tolist())
        return real_forward(self, sample, timestep, class_labels=class_labels, return_dict=return_dict)

    monkeypatch.setattr(loop, "train_step", step)
    monkeypatch.setattr(DDPMUNet2DModel, "forward", forward)
    return record


def _conditional(tiny_flags, out, *extra: str) -> list[str]:
    return tiny_flags(out, "--class_conditional", "--center_crop", *extra)


def test_without_dropout_each_image_reaches_the_unet_with_its_dataset_label(
    tmp_path, labelled_dataset, tiny_flags, seen
):
    flags = _conditional(tiny_flags, tmp_path, "--class_dropout_prob", "0", "--max_train_steps", "7")
    train(parse_args(flags), dataset=labelled_dataset)
    rows = [r for batch in seen["rows"] for r in batch]
    assert sorted(rows[:22]) == list(range(22))  # a whole epoch of distinct rows, then the next epoch begins
    assert [len(batch) for batch in seen["labels"]] == [4, 4, 4, 4, 4, 2, 4]
    dataset_labels = labelled_dataset["label"]
    assert seen["labels"] == [[dataset_labels[r] for r in batch] for batch in seen["rows"]]


def test_dropout_replaces_about_half_the_labels_by_the_null_label_reproducibly(
    tmp_path, labelled_dataset, tiny_flags, seen
):
    def run(out):
        seen["rows"].clear()
        seen["labels"].clear()
        train(
            parse_args(_conditional(tiny_flags, out, "--class_dropout_prob", "0.5", "--max_train_steps", "12")),
            dataset=labelled_dataset,
        )
        return list(seen["rows"]), list(seen["labels"])

    rows, labels = run(tmp_path / "a")
    flat_rows, flat_labels = sum(rows, []), sum(labels, [])
    dropped = [label == NULL for label in flat_labels]
    assert len(flat_labels) == 44 and 12 <= sum(dropped) <= 32  # Binomial(44, 1/2): outside this is p < 1e-3
    kept = [(r, label) for r, label, d in zip(flat_rows, flat_labels, dropped) if not d]
    assert all(label == labelled_dataset["label"][r] for r, label in kept)
    assert run(tmp_path / "b") == (rows, labels)  # the same draws from the same seed


def test_drop_class_labels_draws_the_null_label_with_probability_p_uncond():
    labels = torch.arange(20_000) % 7
    generator = torch.Generator().manual_seed(0)
    assert torch.equal(drop_class_labels(labels, 0.0, null_label=7, generator=generator), labels)
    dropped = drop_class_labels(labels, 0.2, null_label=7, generator=generator)
    is_null = dropped == 7
    assert torch.equal(dropped[~is_null], labels[~is_null])
    assert abs(is_null.float().mean().item() - 0.2) < 0.01  # 3.5 standard deviations of the mean
    generator.manual_seed(0)
    drop_class_labels(labels, 0.0, null_label=7, generator=generator)
    assert torch.equal(drop_class_labels(labels, 0.2, null_label=7, generator=generator), dropped)  # the same draws
    with pytest.raises(ValueError, match=r"p_uncond.*\[0, 1\).*1.0"):
        drop_class_labels(labels, 1.0, null_label=7)


def test_the_unet_has_a_null_class_and_the_card_and_records_say_how_it_was_trained(
    tmp_path, labelled_dataset, tiny_flags
):
    flags = _conditional(tiny_flags, tmp_path, "--class_dropout_prob", "0.2", "--max_train_steps", "1")
    train(parse_args(flags), dataset=labelled_dataset)
    unet_config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert unet_config["num_class_embeds"] == len(CLASS_NAMES) + 1
    record = read_training_args(tmp_path / "checkpoint-1")
    assert record["class_conditional"] is True and record["class_dropout_prob"] == 0.2
    card = (tmp_path / "README.md").read_text()
    for row in ("num_classes", "class_dropout_prob", "guidance_scale"):
        assert row in card
    # The card is written in a staging folder, but describes the output folder: its name, its last training grid.
    assert f"\n# {tmp_path.name}\n" in card and ".pipeline-staging" not in card
    assert "A class-conditional image-generation model" in card and "- class-conditional" in card
    classes = ", ".join(f'{i} "{name}"' for i, name in enumerate(CLASS_NAMES))
    assert f"the null label ∅ is {len(CLASS_NAMES)}):\n{classes}." in card
    assert f"class_labels={[i % len(CLASS_NAMES) for i in range(4)]}, guidance_scale=2.0" in card
    last_grid = sorted((tmp_path / "samples").glob("step-*.png"))[-1]
    assert (tmp_path / "images" / "samples.png").read_bytes() == last_grid.read_bytes()
    assert "one row per class, guidance scale 2" in card


def test_an_unconditional_run_records_no_conditioning_flags(tmp_path, image_dataset, tiny_flags):
    # So its training_args.json reads as before these flags existed, and older checkpoints resume unchanged.
    train(parse_args(tiny_flags(tmp_path, "--max_train_steps", "1")), dataset=image_dataset)
    record = read_training_args(tmp_path / "checkpoint-1")
    assert not {"class_conditional", "label_column", "class_dropout_prob", "guidance_scale"} & set(record)
    assert "class_dropout_prob" not in (tmp_path / "README.md").read_text()


def test_class_names_are_saved_as_id2label_and_grids_have_one_row_per_class(tmp_path, labelled_dataset, tiny_flags):
    flags = _conditional(tiny_flags, tmp_path, "--max_train_steps", "1", "--eval_batch_size", "4")
    train(parse_args(flags), dataset=labelled_dataset)
    assert json.loads((tmp_path / "model_index.json").read_text())["id2label"] == {"0": "cat", "1": "dog", "2": "emu"}
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    assert pipeline.get_label_ids(["emu", "cat"]) == [2, 0]
    # 3 classes in rows, ceil(4 / 3) = 2 samples of 8×8 each.
    assert Image.open(tmp_path / "samples" / "step-0000001.png").size == (2 * 8, 3 * 8)


def test_grid_layout_puts_the_classes_in_rows():
    assert grid_layout(16) == (4, 4, None)
    assert grid_layout(6) == (2, 3, None)
    assert grid_layout(4, num_classes=3) == (3, 2, [0, 0, 1, 1, 2, 2])
    rows, cols, labels = grid_layout(16, num_classes=100)
    assert (rows, cols) == (GRID_MAX_CLASSES, 2) and labels == [c for c in range(GRID_MAX_CLASSES) for _ in "ab"]


def test_two_class_folders_train_a_two_class_model(tmp_path, tiny_flags):
    rng = np.random.default_rng(0)
    for name in ("ants", "bees"):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                tmp_path / "images" / name / f"{i}.png"
            )
    out = tmp_path / "out"
    flags = tiny_flags(
        out, "--train_data_dir", str(tmp_path / "images"), "--class_conditional", "--max_train_steps", "1"
    )
    train(parse_args([*flags, "--cache_dir", str(tmp_path / "cache")]))
    assert json.loads((out / "unet" / "config.json").read_text())["num_class_embeds"] == 3
    assert DDPMPipeline.from_pretrained(out).id2label == {0: "ants", 1: "bees"}


# ---- bad input ------------------------------------------------------------------------------------------------------


def _config_with_classes(tmp_path, num_class_embeds: int) -> str:
    path = tmp_path / "conditional.json"
    path.write_text(json.dumps({**DDPMUNet2DModel.presets()["tiny"], "num_class_embeds": num_class_embeds}))
    return str(path)


def test_class_conditional_on_data_without_labels_names_the_flag_and_the_columns(tmp_path, image_dataset, tiny_flags):
    with pytest.raises(
        ValueError, match=r"--class_conditional needs a class label.*'label' \(its columns: \['image'\]"
    ):
        train(parse_args(tiny_flags(tmp_path, "--class_conditional", "--max_train_steps", "1")), dataset=image_dataset)


def test_a_label_column_not_in_the_dataset_lists_the_columns(tmp_path, labelled_dataset, tiny_flags):
    flags = tiny_flags(tmp_path, "--class_conditional", "--label_column", "species", "--max_train_steps", "1")
    with pytest.raises(ValueError, match=r"no --label_column 'species' \(its columns: \['image', 'label'\]"):
        train(parse_args(flags), dataset=labelled_dataset)


def test_a_label_column_without_class_conditional_is_refused(tmp_path, tiny_flags):
    with pytest.raises(ValueError, match=r"--label_column 'label'.*--class_conditional"):
        parse_args(tiny_flags(tmp_path, "--label_column", "label"))


def test_a_guidance_scale_the_grid_sampler_refuses_stops_the_run_before_its_first_step(
    tmp_path, labelled_dataset, tiny_flags
):
    with pytest.raises(ValueError, match=r"guidance_scale must be a finite number >= 0, got inf"):
        train(parse_args(_conditional(tiny_flags, tmp_path, "--guidance_scale", "inf")), dataset=labelled_dataset)
    assert not list(tmp_path.glob("checkpoint-*"))


@pytest.mark.parametrize("value", ["1", "-0.1", "x"])
def test_class_dropout_prob_must_lie_in_zero_one(tmp_path, tiny_flags, value, capsys):
    with pytest.raises(SystemExit):
        parse_args(tiny_flags(tmp_path, "--class_conditional", "--class_dropout_prob", value))
    assert "argument --class_dropout_prob: must be a number in [0, 1)" in capsys.readouterr().err


def test_a_config_whose_class_table_does_not_fit_the_data_is_refused(tmp_path, labelled_dataset, tiny_flags):
    flags = tiny_flags(tmp_path / "out", "--class_conditional", "--max_train_steps", "1")
    with pytest.raises(ValueError, match=r"num_class_embeds=5, but the data has 3 classes.*3 \+ 1"):
        train(parse_args([*flags, "--model_config", _config_with_classes(tmp_path, 5)]), dataset=labelled_dataset)
    # The right size is accepted.
    train(parse_args([*flags, "--model_config", _config_with_classes(tmp_path, 4)]), dataset=labelled_dataset)
    assert json.loads((tmp_path / "out" / "unet" / "config.json").read_text())["num_class_embeds"] == 4


def test_a_conditional_config_without_class_conditional_is_refused_before_data_loading(
    tmp_path, tiny_flags, monkeypatch
):
    monkeypatch.setattr(loop, "load_image_dataset", lambda *a, **k: pytest.fail("the data was loaded"))
    flags = tiny_flags(tmp_path / "out", "--max_train_steps", "1", "--model_config", _config_with_classes(tmp_path, 4))
    with pytest.raises(ValueError, match=r"sets num_class_embeds=4, a class-conditional UNet.*--class_conditional"):
        train(parse_args(flags))


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (["--class_dropout_prob", "0.3"], "--class_dropout_prob 0.1 in the checkpoint, 0.3 now"),
        (["--label_column", "kind"], "--label_column 'label' in the checkpoint, 'kind' now"),
    ],
)
def test_resume_refuses_another_conditioning(tmp_path, labelled_dataset, tiny_flags, change, words):
    flags = _conditional(tiny_flags, tmp_path, "--checkpointing_steps", "1")
    train(parse_args([*flags, "--max_train_steps", "1"]), dataset=labelled_dataset)
    resume = [*flags, "--max_train_steps", "2", "--resume_from_checkpoint", "latest"]
    with pytest.raises(ValueError, match="Cannot resume") as error:
        train(parse_args([*resume, *change]), dataset=labelled_dataset)
    assert words in str(error.value)
    # An unconditional resume of a conditional run: its UNet has a class table this run would not build.
    unconditional = [f for f in resume if f not in ("--class_conditional",)]
    with pytest.raises(ValueError, match="num_class_embeds: 4 in the checkpoint, None now"):
        train(parse_args(unconditional), dataset=labelled_dataset)
