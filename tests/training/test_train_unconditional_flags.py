"""A user of diffusers' train_unconditional.py keeps their command line: its flags, its names, clear differences."""

import json
import sys
from pathlib import Path

import pytest
import yaml

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler
from hf_ddpm.training.args import ALIASES, TRAIN_UNCONDITIONAL_DEFAULTS, build_parser, parse_args
from hf_ddpm.training.loop import build_unet, train

# Every flag of diffusers' examples/unconditional_image_generation/train_unconditional.py.
TRAIN_UNCONDITIONAL_FLAGS = """
--dataset_name --dataset_config_name --model_config_name_or_path --train_data_dir --output_dir --overwrite_output_dir
--cache_dir --resolution --center_crop --random_flip --train_batch_size --eval_batch_size --dataloader_num_workers
--num_epochs --save_images_epochs --save_model_epochs --gradient_accumulation_steps --learning_rate --lr_scheduler
--lr_warmup_steps --adam_beta1 --adam_beta2 --adam_weight_decay --adam_epsilon --use_ema --ema_inv_gamma --ema_power
--ema_max_decay --push_to_hub --hub_token --hub_model_id --hub_private_repo --logger --logging_dir --local_rank
--mixed_precision --prediction_type --ddpm_num_steps --ddpm_num_inference_steps --ddpm_beta_schedule
--checkpointing_steps --checkpoints_total_limit --resume_from_checkpoint --enable_xformers_memory_efficient_attention
""".split()

# A value for each alias that is not the default, so that "same namespace" is not met by both ignoring the flag.
ALIAS_VALUES = {
    "--ddpm_num_steps": "10",
    "--ddpm_beta_schedule": "squaredcos_cap_v2",
    "--ddpm_num_inference_steps": "7",
    "--model_config_name_or_path": "tiny",
}


def test_parser_accepts_every_train_unconditional_flag():
    options = {option for action in build_parser()._actions for option in action.option_strings}
    assert [flag for flag in TRAIN_UNCONDITIONAL_FLAGS if flag not in options] == []
    assert set(ALIAS_VALUES) == set(ALIASES)


def test_the_train_unconditional_readme_command_line_parses():
    args = parse_args(
        "--dataset_name=huggan/flowers-102-categories --resolution=64 --center_crop --random_flip "
        "--output_dir=ddpm-ema-flowers-64 --train_batch_size=16 --num_epochs=100 --gradient_accumulation_steps=1 "
        "--use_ema --learning_rate=1e-4 --lr_warmup_steps=500 --mixed_precision=no --push_to_hub".split()
    )
    assert (args.resolution, args.random_flip, args.use_ema, args.learning_rate) == (64, True, True, 1e-4)


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_every_alias_resolves_to_the_same_run_as_our_name(alias):
    ours, value = ALIASES[alias], ALIAS_VALUES[alias]
    with_alias, with_ours = parse_args([alias, value]), parse_args([ours, value])
    assert vars(with_alias) == vars(with_ours)
    dest = ours.removeprefix("--")
    assert str(getattr(with_ours, dest)) == value != str(build_parser().get_default(dest))


def test_alias_and_our_name_with_different_values_is_an_error_naming_both():
    with pytest.raises(ValueError, match=r"--ddpm_num_steps 10 and --num_train_timesteps 20"):
        parse_args(["--ddpm_num_steps", "10", "--num_train_timesteps", "20"])
    # The same value twice says one thing.
    assert parse_args(["--num_train_timesteps", "10", "--ddpm_num_steps", "10"]).num_train_timesteps == 10


def test_parsed_flags_carry_no_parser_bookkeeping_and_resolve_once():
    args = parse_args(["--ddpm_num_steps", "10"])
    fresh = build_parser().parse_args(["--ddpm_num_steps", "10"])
    assert set(vars(args)) == {action.dest for action in build_parser()._actions if action.dest != "help"}
    assert set(vars(fresh)) - set(vars(args)) == {"_given_flags"}  # removed by validate_args


def test_save_cadences_default_to_steps_for_grids_and_epochs_for_the_pipeline():
    args = parse_args([])
    assert (args.save_images_steps, args.save_images_epochs) == (1000, None)
    assert (args.save_model_steps, args.save_model_epochs) == (None, 10)  # train_unconditional.py's default
    # One unit given: only that one.
    args = parse_args(["--save_images_epochs", "5", "--save_model_steps", "300"])
    assert (args.save_images_steps, args.save_images_epochs) == (None, 5)
    assert (args.save_model_steps, args.save_model_epochs) == (300, None)


def test_logger_that_is_not_installed_fails_at_the_flag(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # what an environment without wandb looks like to an import
    with pytest.raises(SystemExit):
        parse_args(["--logger", "wandb"])
    assert "argument --logger: 'wandb' is not installed (`pip install wandb`)" in capsys.readouterr().err
    assert parse_args(["--logger", "tensorboard"]).logger == "tensorboard"  # installed with the train extra


def test_train_unconditional_defaults_name_existing_flags_and_differ_from_ours():
    defaults = {action.dest: action.default for action in build_parser()._actions}
    assert set(TRAIN_UNCONDITIONAL_DEFAULTS) <= set(defaults)
    # Only real differences are listed (random_flip and mixed_precision are resolved at run time).
    for name, theirs in TRAIN_UNCONDITIONAL_DEFAULTS.items():
        assert defaults[name] != theirs, name


def _tiny_unet_config(folder: Path) -> dict:
    unet = DDPMUNet2DModel.from_preset("tiny")
    unet.save_pretrained(folder)
    return dict(unet.config)


def _same_network(unet: DDPMUNet2DModel, config: dict) -> bool:
    keys = ("block_out_channels", "down_block_types", "up_block_types", "layers_per_block", "norm_num_groups")
    return all(list(unet.config[key]) == list(config[key]) for key in keys if isinstance(config[key], tuple | list))


def test_model_config_reads_a_json_a_unet_folder_and_a_saved_pipeline(tmp_path):
    config = _tiny_unet_config(tmp_path / "unet_folder")
    pipeline_dir = tmp_path / "pipeline"
    DDPMPipeline(unet=DDPMUNet2DModel.from_preset("tiny"), scheduler=DDPMScheduler()).save_pretrained(pipeline_dir)
    json_file = tmp_path / "tiny.json"
    json_file.write_text(json.dumps(DDPMUNet2DModel.presets()["tiny"]))
    for source in (json_file, tmp_path / "unet_folder", tmp_path / "unet_folder" / "config.json", pipeline_dir):
        unet = build_unet(str(source), resolution=16, variance_type="learned_range")
        assert _same_network(unet, config), source
        assert (unet.config.sample_size, unet.config.out_channels) == (16, 6)  # from the flags, not the file


def test_model_config_reads_a_hub_repo_holding_a_pipeline(tmp_path, hub_repo_id):
    from huggingface_hub import HfApi

    DDPMPipeline(unet=DDPMUNet2DModel.from_preset("tiny"), scheduler=DDPMScheduler()).save_pretrained(tmp_path)
    api = HfApi()
    api.create_repo(hub_repo_id)
    api.upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    unet = build_unet(hub_repo_id, resolution=8)
    assert _same_network(unet, DDPMUNet2DModel.presets()["tiny"])


def test_unreadable_model_config_names_the_flag_and_the_value(tmp_path):
    with pytest.raises(ValueError, match=r"--model_config '.*empty' is neither a preset .* nor a UNet config"):
        build_unet(str(tmp_path / "empty"), resolution=8)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**DDPMUNet2DModel.presets()["tiny"], "down_block_types": ["SkipDownBlock2D"] * 2}))
    with pytest.raises(ValueError, match=r"--model_config '.*bad.json': `down_block_types`='SkipDownBlock2D'"):
        build_unet(str(bad), resolution=8)


def _card_table(card: str) -> dict[str, str]:
    rows = [line.strip("|").split("|") for line in card.splitlines() if line.startswith("| ")]
    return {cells[0].strip(): cells[1].strip() for cells in rows if len(cells) == 2}


def test_a_run_says_which_defaults_differ_and_records_the_resolved_values(tmp_path, image_dataset, tiny_flags, capsys):
    flags = tiny_flags(tmp_path, "--max_train_steps", "1", "--logger", "tensorboard", "--lr_warmup_steps", "50")
    with pytest.warns(UserWarning) as caught:
        train(parse_args([*flags, "--enable_xformers_memory_efficient_attention"]), dataset=image_dataset)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("--enable_xformers_memory_efficient_attention is ignored") for m in messages)
    assert any("--lr_warmup_steps 50 is longer than the run (1 steps)" in m for m in messages)

    out = capsys.readouterr().out
    assert "--use_ema True (train_unconditional.py's default: False)\n" in out
    assert "--adam_beta1 0.9 (train_unconditional.py's default: 0.95)\n" in out
    assert "--mixed_precision" not in out and "--random_flip" not in out  # resolved to what train_unconditional does

    (hparams_file,) = (tmp_path / "logs").rglob("hparams.yml")
    hparams = yaml.safe_load(hparams_file.read_text())
    assert (hparams["random_flip"], hparams["mixed_precision"], hparams["channels_last"]) == (False, "no", True)
    assert (hparams["num_train_images"], hparams["data"]) == (22, "a dataset passed to train()")

    card = (tmp_path / "README.md").read_text()
    table = _card_table(card)
    assert table["random_flip"] == "False" and table["use_ema"] == "True" and table["mixed_precision"] == "no"
    assert (table["global_step"], table["epochs"], table["num_train_images"]) == ("1", "0.17", "22")
    assert "train_data_dir" not in table and "license:" not in card  # no --hub_license: no license claimed
    assert "local_rank" not in table and "enable_xformers_memory_efficient_attention" not in table  # no effect


def test_an_image_folder_run_describes_the_folder_without_its_path(tmp_path, tiny_flags):
    from PIL import Image

    images = tmp_path / "private-faces"
    images.mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(images / f"{i}.png")
    out = tmp_path / "out"
    train(
        parse_args(tiny_flags(out, "--max_train_steps", "1", "--train_data_dir", str(images), "--hub_license", "mit"))
    )
    card = (out / "README.md").read_text()
    table = _card_table(card)
    assert (table["data"], table["num_train_images"], table["random_flip"]) == ("a local image folder", "4", "True")
    assert "private-faces" not in card and "license: mit" in card
    assert "Trained on a local image folder, 4 training images." in card and "MNIST" not in card
