"""The model card: YAML front matter, network/scheduler/training/metrics sections, both load snippets, no secrets."""

import yaml
from huggingface_hub import ModelCard

from hf_ddpm.pipelines.model_card import build_model_card, public_settings, write_model_card

FAKE_TOKEN = "hf_AbCdEfGhIjKlMnOpQrStUvWxYz012345"


def front_matter(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1])


def test_card_has_front_matter_network_scheduler_and_both_load_snippets(ddpm_pipe):
    card = build_model_card(ddpm_pipe, repo_id="someone/tiny-ddpm")
    meta = front_matter(str(card))
    assert meta["license"] == "apache-2.0"
    assert meta["library_name"] == "diffusers"
    assert {"hf_ddpm", "diffusers", "ddpm", "unconditional-image-generation"} <= set(meta["tags"])
    text = card.text
    assert 'DDPMPipeline.from_pretrained("someone/tiny-ddpm")' in text
    assert 'DiffusionPipeline.from_pretrained("someone/tiny-ddpm", trust_remote_code=True)' in text
    n_params = sum(p.numel() for p in ddpm_pipe.unet.parameters())
    assert f"| tiny | {n_params:,} | 8 |" in text  # the preset is recognised from the config
    assert "| DDPMScheduler | 10 | linear | 0.0001 to 0.02 | fixed_small | epsilon |" in text
    assert "Training settings were not recorded" in text and "No metrics were measured" in text


def test_card_lists_training_settings_and_metrics_but_no_token_or_local_path(ddpm_pipe, tmp_path):
    training_args = {
        "learning_rate": 2e-4,
        "train_batch_size": 128,
        "ema": {"decay": 0.9999},
        "hub_token": FAKE_TOKEN,
        "token": True,
        "output_dir": str(tmp_path / "run"),
        "dataset": str(tmp_path / "data"),
        "resume_from": "~/checkpoints/last",
        "note": FAKE_TOKEN,
    }
    metrics = {"fid": 3.1712345, "bits_per_dim": 3.75}
    datasets = ["ylecun/mnist", str(tmp_path / "images")]
    card = write_model_card(
        tmp_path, ddpm_pipe, training_args=training_args, metrics=metrics, repo_id="a/b", datasets=datasets
    )
    written = (tmp_path / "README.md").read_text()
    assert written == str(card)
    assert front_matter(written)["datasets"] == ["ylecun/mnist"]
    assert "| learning_rate | 0.0002 |" in written and "| train_batch_size | 128 |" in written
    assert "| ema.decay | 0.9999 |" in written
    assert "| fid | 3.17123 |" in written and "| bits_per_dim | 3.75 |" in written
    assert FAKE_TOKEN not in written and "hub_token" not in written
    assert str(tmp_path) not in written and "~/checkpoints" not in written
    # The file is a valid card for huggingface_hub.
    assert ModelCard.load(tmp_path / "README.md").data.license == "apache-2.0"


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


def test_card_of_a_folder_saved_without_repo_id_is_named_after_the_folder(ddpm_pipe, tmp_path):
    folder = tmp_path / "digits-run"
    folder.mkdir()
    text = write_model_card(folder, ddpm_pipe).text
    assert "\n# digits-run\n" in text
    assert 'DDPMPipeline.from_pretrained("<namespace>/digits-run")' in text
