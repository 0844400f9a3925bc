"""A damaged or incomplete pipeline folder is refused at `from_pretrained`, with an error that says what and where."""

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def truncate_model_index(folder):
    text = (folder / "model_index.json").read_text()
    (folder / "model_index.json").write_text(text[: len(text) // 2])


def model_index_not_json(folder):
    (folder / "model_index.json").write_text("<html>Bad gateway</html>")


def unet_config_not_json(folder):
    (folder / "unet" / "config.json").write_text('{"_class_name": "UNet2DModel",')


def widen_second_level_in_config(folder):
    config = json.loads((folder / "unet" / "config.json").read_text())
    config["block_out_channels"] = [8, 24]  # the weights were saved with (8, 16)
    (folder / "unet" / "config.json").write_text(json.dumps(config))


def drop_tensors(folder):
    weights = load_file(folder / WEIGHTS)
    del weights["conv_in.weight"], weights["mid_block.attentions.0.to_q.bias"]
    save_file(weights, folder / WEIGHTS, metadata={"format": "pt"})


def remove_unet_folder(folder):
    shutil.rmtree(folder / "unet")


def remove_unet_weights(folder):
    (folder / WEIGHTS).unlink()


def remove_unet_entry(folder):
    index = json.loads((folder / "model_index.json").read_text())
    del index["unet"]
    (folder / "model_index.json").write_text(json.dumps(index))


# (damage, expected exception type, words the message must contain); "{folder}" stands for the saved folder.
CASES = {
    "truncated model_index.json": (truncate_model_index, OSError, ["{folder}/model_index.json", "not a valid JSON"]),
    "model_index.json not JSON": (model_index_not_json, OSError, ["{folder}/model_index.json", "not a valid JSON"]),
    "unet/config.json not JSON": (unet_config_not_json, OSError, ["{folder}/unet/config.json", "not a valid JSON"]),
    "config mismatching the weights": (
        widen_second_level_in_config,
        ValueError,
        [
            "unet in {folder}",
            "unet/config.json",
            "down_blocks.1.attentions.0.to_k.weight: config.json gives (24, 24), the weights (16, 16)",
            "more]",
        ],
    ),
    "weights missing tensors": (
        drop_tensors,
        ValueError,
        ["unet in {folder}", "missing tensors", "conv_in.weight", "mid_block.attentions.0.to_q.bias"],
    ),
    "no unet folder": (remove_unet_folder, ValueError, ["{folder}", "no weights for 'unet'", "unet/*.safetensors"]),
    "unet folder without weights": (remove_unet_weights, ValueError, ["no weights for 'unet'"]),
    "no unet entry in model_index.json": (remove_unet_entry, ValueError, ["{folder}/model_index.json", "'unet'"]),
}


@pytest.fixture
def saved_folder(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    return tmp_path


@pytest.mark.parametrize("case", list(CASES))
def test_damaged_folder_is_refused_with_a_clear_error(saved_folder, case):
    damage, error_type, words = CASES[case]
    damage(saved_folder)
    with pytest.raises(error_type) as info:
        DDPMPipeline.from_pretrained(saved_folder)
    message = str(info.value)
    for word in words:
        word = word.format(folder=saved_folder)
        assert word in message, f"{word!r} not in: {message}"
