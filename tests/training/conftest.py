"""Fixtures of the training tests: a tiny image dataset, tiny UNet configs, and a clean Accelerate state per test."""

import json

import datasets
import numpy as np
import pytest
from accelerate.state import AcceleratorState, GradientState
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel


@pytest.fixture(autouse=True)
def _fresh_accelerate_state():
    # Accelerate keeps process-wide singletons; each training run in a test gets its own (mixed precision included).
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


@pytest.fixture(scope="session")
def image_dataset() -> datasets.Dataset:
    """22 random 11×8 (W×H) RGB images with an `image` column (the layout `load_image_dataset` returns).

    Wider than tall, so training at 8×8 takes a random crop offset as well as a random flip. 22 images in batches of
    4 is 6 batches per epoch (the last one of 2), so 3 steps stop mid-epoch and 6 steps cross into the second epoch.
    """
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (8, 11, 3), dtype=np.uint8)) for _ in range(22)]
    return datasets.Dataset.from_dict({"image": images})


@pytest.fixture(scope="session")
def labelled_image_dataset(image_dataset) -> datasets.Dataset:
    """`image_dataset` with a `label` `ClassLabel` column of 3 classes, for class-conditional runs."""
    labels = datasets.ClassLabel(names=["a", "b", "c"])
    return image_dataset.add_column("label", [i % 3 for i in range(len(image_dataset))]).cast_column("label", labels)


@pytest.fixture(scope="session")
def tiny_dropout_config(tmp_path_factory) -> str:
    """The "tiny" preset with dropout 0.1 as a UNet config JSON, so exact resume must also restore dropout masks."""
    config = {**DDPMUNet2DModel.presets()["tiny"], "dropout": 0.1}
    path = tmp_path_factory.mktemp("configs") / "tiny_dropout.json"
    path.write_text(json.dumps(config))
    return str(path)


def _tiny_flags(output_dir, *extra: str) -> list[str]:
    return [
        "--model_config",
        "tiny",
        "--resolution",
        "8",
        "--train_batch_size",
        "4",
        "--output_dir",
        str(output_dir),
        "--lr_warmup_steps",
        "2",
        "--save_images_steps",
        "1000",
        "--num_inference_steps",
        "2",
        "--eval_batch_size",
        "4",
        "--logger",
        "none",
        *extra,
    ]


@pytest.fixture
def tiny_flags():
    """`tiny_flags(output_dir, *extra)`: flags of a fast CPU run (tiny UNet at 8×8, batch 4, warm-up 2, no sample
    grids and no tracker unless `extra` asks), then `extra`."""
    return _tiny_flags
