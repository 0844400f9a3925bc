"""The training loop: exact resume, checkpoints, NaN handling, outputs, mixed precision."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.training import loop
from hf_ddpm.training.args import parse_args
from hf_ddpm.training.loop import train

REPO_ROOT = Path(__file__).resolve().parents[2]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "diffusion_pytorch_model.safetensors")


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _tree_digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(
    ("accumulation", "stop", "total", "conditional"), [(1, 3, 6, False), (2, 2, 4, False), (2, 2, 4, True)]
)
def test_resume_mid_epoch_is_bit_identical_to_an_uninterrupted_run(
    tmp_path,
    image_dataset,
    labelled_image_dataset,
    tiny_dropout_config,
    tiny_flags,
    accumulation,
    stop,
    total,
    conditional,
):
    # Dropout on, random flips on, EMA on, LR still warming up, stop mid-epoch (6 batches per epoch), with and
    # without gradient accumulation: data order, augmentations, t, ε, dropout, optimizer, LR schedule and EMA must
    # all come back; and in a class-conditional run, each image's label and the null-label draws.
    common = [
        *("--model_config", tiny_dropout_config, "--random_flip", "--lr_warmup_steps", "5"),
        *("--gradient_accumulation_steps", str(accumulation), "--checkpointing_steps", str(stop)),
    ]
    if conditional:
        common += ["--class_conditional", "--class_dropout_prob", "0.5"]
        image_dataset = labelled_image_dataset
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(parse_args(tiny_flags(straight, *common, "--max_train_steps", str(total))), dataset=image_dataset)
    train(parse_args(tiny_flags(interrupted, *common, "--max_train_steps", str(stop))), dataset=image_dataset)
    assert sorted(p.name for p in interrupted.glob("checkpoint-*")) == [f"checkpoint-{stop}"]
    train(
        parse_args(
            tiny_flags(interrupted, *common, "--max_train_steps", str(total), "--resume_from_checkpoint", "latest")
        ),
        dataset=image_dataset,
    )

    for sub in ("unet", "unet_ema"):
        _assert_bit_identical(
            _weights(straight / f"checkpoint-{total}" / sub), _weights(interrupted / f"checkpoint-{total}" / sub)
        )
    _assert_bit_identical(_weights(straight / "unet"), _weights(interrupted / "unet"))
    # The oracle is not vacuous: training moved the weights between step 3 and step 6.
    before = _weights(straight / f"checkpoint-{stop}" / "unet")
    after = _weights(straight / f"checkpoint-{total}" / "unet")
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # And the final pipeline carries the EMA weights, not the raw ones.
    _assert_bit_identical(_weights(straight / "unet"), _weights(straight / f"checkpoint-{total}" / "unet_ema"))


def test_output_dir_with_checkpoints_is_refused_unless_resume_or_overwrite(tmp_path, image_dataset, tiny_flags):
    (tmp_path / "checkpoint-7").mkdir()
    with pytest.raises(
        ValueError, match="already holds checkpoints.*--resume_from_checkpoint.*--overwrite_output_dir"
    ):
        train(parse_args(tiny_flags(tmp_path, "--max_train_steps", "1")), dataset=image_dataset)
    assert (tmp_path / "checkpoint-7").is_dir()  # untouched


def test_overwrite_output_dir_clears_old_checkpoints_and_limit_prunes_oldest(tmp_path, image_dataset, tiny_flags):
    (tmp_path / "checkpoint-7").mkdir()
    (tmp_path / "checkpoint-9.tmp").mkdir()  # an interrupted save: never a checkpoint, cleaned up at start
    flags = ["--max_train_steps", "3", "--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    train(parse_args(tiny_flags(tmp_path, *flags, "--overwrite_output_dir")), dataset=image_dataset)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2",
        "checkpoint-3",
    ]


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_checkpoint(
    tmp_path, image_dataset, tiny_flags, monkeypatch
):
    real_loss, calls = loop.diffusion_loss, []

    def loss_that_diverges_at_step_3(*args, **kwargs):
        losses = real_loss(*args, **kwargs)
        calls.append(1)
        if len(calls) >= 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(loop, "diffusion_loss", loss_that_diverges_at_step_3)
    flags = tiny_flags(tmp_path, "--max_train_steps", "5", "--checkpointing_steps", "2")
    with pytest.raises(FloatingPointError, match=r"at step 3 .*checkpoint-2"):
        train(parse_args(flags), dataset=image_dataset)
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-2"]
    assert not (tmp_path / "model_index.json").exists()  # no pipeline from a diverged run
    weights = _weights(tmp_path / "checkpoint-2" / "unet")
    assert all(torch.isfinite(w).all() for w in weights.values())

    # The kept checkpoint resumes: the same run continues from it once the loss is sane again.
    monkeypatch.setattr(loop, "diffusion_loss", real_loss)
    digest = _tree_digest(tmp_path / "checkpoint-2")
    train(parse_args([*flags, "--resume_from_checkpoint", "latest", "--max_train_steps", "3"]), dataset=image_dataset)
    assert _tree_digest(tmp_path / "checkpoint-2") == digest
    assert (tmp_path / "checkpoint-3").is_dir() and (tmp_path / "model_index.json").is_file()


def test_grid_settings_the_sampler_refuses_stop_the_run_before_its_first_step(tmp_path, image_dataset, tiny_flags):
    # The DDIM grid sampler owns the bound S <= T. Every run ends with a grid, so it is asked before training, also
    # when no periodic grid falls within the run.
    flags = ["--num_train_timesteps", "10", "--save_images_steps", "1000"]
    with pytest.raises(ValueError, match=r"num_inference_steps.*\b50\b"):
        train(
            parse_args(tiny_flags(tmp_path, "--max_train_steps", "1", *flags, "--num_inference_steps", "50")),
            dataset=image_dataset,
        )
    assert not list(tmp_path.glob("checkpoint-*"))
    train(
        parse_args(tiny_flags(tmp_path, "--max_train_steps", "1", *flags, "--num_inference_steps", "10")),
        dataset=image_dataset,
    )
    assert (tmp_path / "model_index.json").is_file() and (tmp_path / "samples" / "step-0000001.png").is_file()


def test_outputs_pipeline_card_sample_grid_and_tensorboard_scalars(tmp_path, image_dataset, tiny_flags):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    flags = tiny_flags(
        tmp_path, "--max_train_steps", "2", "--save_images_steps", "2", "--logger", "tensorboard", "--no-use_ema"
    )
    train(parse_args(flags), dataset=image_dataset)

    grid = tmp_path / "samples" / "step-0000002.png"
    from PIL import Image

    assert Image.open(grid).size == (2 * 8, 2 * 8)  # eval batch 4 → a 2×2 grid of 8×8 samples
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    _assert_bit_identical(
        {k: v.contiguous() for k, v in pipeline.unet.state_dict().items()},
        _weights(tmp_path / "checkpoint-2" / "unet"),
    )
    assert pipeline.scheduler.config.num_train_timesteps == 1000
    card = (tmp_path / "README.md").read_text()
    assert card.startswith("---") and "hf_ddpm" in card and str(tmp_path) not in card
    assert f"\n# {tmp_path.name}\n" in card and "An unconditional image-generation model" in card

    event_files = [p for p in (tmp_path / "logs").rglob("events.out.tfevents.*")]
    scalars, images = {}, []
    for path in event_files:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [e.step for e in acc.Scalars(tag)]
        images += acc.Tags()["images"]
    assert scalars["loss"] == [1, 2] and scalars["lr"] == [1, 2] and "img/s" in scalars
    assert images == ["samples"]


def test_hybrid_loss_with_learned_variance_trains_and_samples(tmp_path, image_dataset, tiny_flags):
    flags = tiny_flags(tmp_path, "--max_train_steps", "2", "--save_images_steps", "2")
    train(parse_args([*flags, "--variance_type", "learned_range", "--loss_type", "hybrid"]), dataset=image_dataset)
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    assert pipeline.unet.config.out_channels == 2 * pipeline.unet.config.in_channels == 6
    assert pipeline.scheduler.config.variance_type == "learned_range"
    assert (tmp_path / "samples" / "step-0000002.png").is_file()


def test_bf16_mixed_precision_trains_on_cpu(tmp_path, image_dataset, tiny_flags):
    train(
        parse_args(tiny_flags(tmp_path, "--max_train_steps", "2", "--mixed_precision", "bf16")), dataset=image_dataset
    )
    weights = _weights(tmp_path / "checkpoint-2" / "unet")
    assert all(w.dtype == torch.float32 and torch.isfinite(w).all() for w in weights.values())  # fp32 master weights
    pipeline = DDPMPipeline.from_pretrained(tmp_path)
    images = pipeline(batch_size=1, num_inference_steps=2, output_type="np").images
    assert np.isfinite(images).all()


def _launch(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        str(REPO_ROOT / "examples" / "train.py"),
        *args,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_two_gloo_processes_train_resume_and_only_rank_0_writes(tmp_path, tiny_flags):
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(image_dir / f"{i}.png")
    out = tmp_path / "out"
    flags = tiny_flags(
        out, "--train_data_dir", str(image_dir), "--checkpointing_steps", "2", "--logger", "tensorboard"
    )
    result = _launch([*flags, "--max_train_steps", "2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    result = _launch([*flags, "--max_train_steps", "4", "--resume_from_checkpoint", "latest"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]

    # Each rank keeps its own RNG state in the checkpoint (Accelerate's layout); everything else is written once.
    assert sorted(p.name for p in (out / "checkpoint-4").iterdir()) == [
        "optimizer.bin",
        "random_states_0.pkl",
        "random_states_1.pkl",
        "scheduler.bin",
        "training_args.json",
        "unet",
        "unet_ema",
    ]
    assert len(list((out / "logs").rglob("hparams.yml"))) == 2  # one per run, from rank 0 only
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [
            "checkpoint-2",
            "checkpoint-4",
            "images",  # the model card's sample grid
            "logs",
            "model_index.json",
            "README.md",
            "samples",  # the final grid every run ends with
            "scheduler",
            "training_summary.json",  # what the model card was written from
            "unet",
        ]
    )
    pipeline = DDPMPipeline.from_pretrained(out)
    _assert_bit_identical(
        {k: v.contiguous() for k, v in pipeline.unet.state_dict().items()}, _weights(out / "checkpoint-4" / "unet_ema")
    )


def test_push_to_hub_uploads_the_ema_pipeline_with_a_card_without_secrets(
    tmp_path, image_dataset, tiny_flags, hub_repo_id
):
    from huggingface_hub import hf_hub_download

    secret = "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"
    flags = tiny_flags(tmp_path / "out", "--max_train_steps", "1", "--push_to_hub", "--hub_model_id", hub_repo_id)
    train(parse_args([*flags, "--hub_token", secret]), dataset=image_dataset)

    pipeline = DDPMPipeline.from_pretrained(hub_repo_id)
    _assert_bit_identical(
        {k: v.contiguous() for k, v in pipeline.unet.state_dict().items()},
        _weights(tmp_path / "out" / "checkpoint-1" / "unet_ema"),
    )
    card = Path(hf_hub_download(hub_repo_id, "README.md")).read_text()
    assert "hf_ddpm" in card and secret not in card and str(tmp_path) not in card


@pytest.mark.slow  # ~9 s, most of it turning the 5000 digits into PIL images
def test_without_data_flags_it_trains_on_the_offline_mnist_digits(tmp_path, tiny_flags, capsys):
    config = {**DDPMUNet2DModel.presets()["tiny"], "in_channels": 1}
    (tmp_path / "gray.json").write_text(json.dumps(config))
    flags = tiny_flags(tmp_path / "out", "--max_train_steps", "1", "--model_config", str(tmp_path / "gray.json"))
    train(parse_args(flags))
    from hf_ddpm.data import load_image_dataset

    # The digits' training split (the data module keeps held-out digits for the classifier score).
    assert f"{len(load_image_dataset(seed=0))} images" in capsys.readouterr().out
    pipeline = DDPMPipeline.from_pretrained(tmp_path / "out")
    assert pipeline.unet.config.in_channels == pipeline.unet.config.out_channels == 1


def _assert_same_training(expected_dir: Path, actual_dir: Path) -> None:
    """The trained weights and the pipeline's EMA weights of two runs agree up to kernel rounding."""
    for folder in ("checkpoint-2/unet", "unet"):
        expected, actual = _weights(expected_dir / folder), _weights(actual_dir / folder)
        assert actual.keys() == expected.keys()
        for name in expected:
            if name.endswith("to_k.bias"):
                # Softmax ignores a bias shared by all keys: its gradient is 0 up to rounding, which Adam's
                # normalization turns into layout-dependent steps of ~lr·|g|/ε.
                continue
            torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=f"{folder}: {name}")
    # Not vacuous: one step moves the weights by far more than that tolerance.
    step_1, step_2 = _weights(expected_dir / "checkpoint-1" / "unet"), _weights(expected_dir / "checkpoint-2" / "unet")
    assert max((step_2[k] - step_1[k]).abs().max().item() for k in step_1) > 1e-5


@pytest.mark.parametrize(
    ("option", "dropout"),
    [
        # NHWC is the CPU default, so NCHW is the option here. Dropout draws its mask in memory order, so the two
        # layouts draw other (equally distributed) masks: no dropout.
        ("--no-channels_last", False),
        # Dropout on: checkpointing must replay the same masks when it recomputes a block.
        ("--gradient_checkpointing", True),
    ],
)
def test_speed_and_memory_options_take_the_same_steps(
    tmp_path, image_dataset, tiny_dropout_config, tiny_flags, option, dropout
):
    flags = ["--max_train_steps", "2", "--checkpointing_steps", "1"]
    if dropout:
        flags += ["--model_config", tiny_dropout_config]
    train(parse_args(tiny_flags(tmp_path / "plain", *flags)), dataset=image_dataset)
    train(parse_args(tiny_flags(tmp_path / "option", *flags, option)), dataset=image_dataset)
    _assert_same_training(tmp_path / "plain", tmp_path / "option")


@pytest.mark.parametrize(
    ("saved_in", "resumed_in"), [(["--no-channels_last"], []), ([], ["--no-channels_last"])], ids=["nchw", "nhwc"]
)
def test_a_run_resumed_in_the_other_layout_continues_the_same_run(
    tmp_path, image_dataset, tiny_flags, saved_in, resumed_in
):
    # Checkpoints from before NHWC became the CPU default hold NCHW weights and Adam moments (and `--channels_last`
    # can be switched on resume): the other layout must continue the same run up to kernel rounding, not pair the
    # moments with the wrong weights (torch's fused AdamW goes by memory position).
    flags = ["--checkpointing_steps", "1", "--checkpoints_total_limit", "2"]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(parse_args(tiny_flags(straight, *flags, "--max_train_steps", "2", *saved_in)), dataset=image_dataset)
    train(parse_args(tiny_flags(interrupted, *flags, "--max_train_steps", "1", *saved_in)), dataset=image_dataset)
    train(
        parse_args(
            tiny_flags(
                interrupted, *flags, "--max_train_steps", "2", "--resume_from_checkpoint", "latest", *resumed_in
            )
        ),
        dataset=image_dataset,
    )
    _assert_same_training(straight, interrupted)


@pytest.mark.slow
def test_dynamo_inductor_training_follows_the_eager_run(tmp_path, image_dataset, tiny_flags, monkeypatch):
    # `accelerate launch --dynamo_backend inductor` sets this variable; the compiled run must take the eager run's
    # steps (up to kernel rounding) and save plain weights, without torch.compile's `_orig_mod.` prefix.
    flags = ("--max_train_steps", "2", "--checkpointing_steps", "1")
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    train(parse_args(tiny_flags(eager, *flags)), dataset=image_dataset)
    from torch._dynamo.utils import counters

    monkeypatch.setenv("ACCELERATE_DYNAMO_BACKEND", "INDUCTOR")
    AcceleratorState._reset_state(reset_partial_state=True)  # as a fresh `accelerate launch` process would start
    counters.clear()
    train(parse_args(tiny_flags(compiled, *flags)), dataset=image_dataset)
    assert counters["stats"]["unique_graphs"] > 0  # dynamo did compile the UNet
    _assert_same_training(eager, compiled)
