"""Save, load and convert: hf_ddpm's own loader, diffusers' trust_remote_code loader, stock checkpoints in and out."""

import json
import textwrap

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

# Same weights and generator; the only difference a reload may make is float summation order in the UNet.
ATOL = 1e-5


def test_save_pretrained_writes_diffusers_custom_component_layout(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == ["pipeline_ddpm", "DDPMPipeline"]
    assert index["unet"] == ["unet_2d", "DDPMUNet2DModel"]
    assert index["scheduler"] == ["scheduling_ddpm", "DDPMScheduler"]
    assert "from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline" in (tmp_path / "pipeline_ddpm.py").read_text()
    assert "from hf_ddpm.models.unet_2d import DDPMUNet2DModel" in (tmp_path / "unet" / "unet_2d.py").read_text()
    assert "import DDPMScheduler" in (tmp_path / "scheduler" / "scheduling_ddpm.py").read_text()
    weights = sorted(p.name for p in (tmp_path / "unet").iterdir() if "diffusion_pytorch_model" in p.name)
    assert weights == ["diffusion_pytorch_model.safetensors"]


def test_round_trip_through_hf_ddpm_from_pretrained_gives_same_classes_and_images(
    ddpm_pipe, tmp_path, images_of, quiet
):
    ddpm_pipe.save_pretrained(tmp_path)
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(loaded) is DDPMPipeline
    assert type(loaded.unet) is DDPMUNet2DModel and type(loaded.scheduler) is DDPMScheduler
    assert loaded.scheduler.config.num_train_timesteps == ddpm_pipe.scheduler.config.num_train_timesteps
    torch.testing.assert_close(images_of(loaded, seed=2), images_of(ddpm_pipe, seed=2), atol=ATOL, rtol=0)


def test_scheduler_swapped_with_from_config_survives_save_and_load(ddpm_pipe, tmp_path, images_of, quiet):
    ddpm_pipe.scheduler = DDIMScheduler.from_config(ddpm_pipe.scheduler.config, timestep_spacing="trailing")
    ddpm_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == ["scheduling_ddim", "DDIMScheduler"]
    assert (tmp_path / "scheduler" / "scheduling_ddim.py").is_file()
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(loaded.scheduler) is DDIMScheduler
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    kwargs = {"num_inference_steps": 4, "eta": 0.5}
    torch.testing.assert_close(images_of(loaded, **kwargs), images_of(ddpm_pipe, **kwargs), atol=ATOL, rtol=0)


def test_a_stock_diffusers_scheduler_is_kept_as_stock(ddpm_pipe, tmp_path):
    ddpm_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(ddpm_pipe.scheduler.config)
    ddpm_pipe.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "model_index.json").read_text())["scheduler"] == [
        "diffusers",
        "EulerDiscreteScheduler",
    ]
    assert type(DDPMPipeline.from_pretrained(tmp_path).scheduler) is diffusers.EulerDiscreteScheduler


@pytest.mark.parametrize("stock_pipeline_cls", [diffusers.DDPMPipeline, diffusers.DDIMPipeline])
def test_stock_diffusers_folder_loads_as_hf_ddpm_classes_with_the_same_images(
    stock_pipeline_cls, tiny_unet, stock_unet_like, tmp_path, quiet
):
    # The layout of google/ddpm-cifar10-32: UNet2DModel + a stock scheduler, model_index naming "diffusers".
    stock_scheduler_cls = (
        diffusers.DDPMScheduler if stock_pipeline_cls is diffusers.DDPMPipeline else diffusers.DDIMScheduler
    )
    stock = quiet(
        stock_pipeline_cls(unet=stock_unet_like(tiny_unet()), scheduler=stock_scheduler_cls(num_train_timesteps=10))
    )
    stock.save_pretrained(tmp_path)

    ours = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(ours.unet) is DDPMUNet2DModel
    ours_scheduler_cls = DDPMScheduler if stock_scheduler_cls is diffusers.DDPMScheduler else DDIMScheduler
    assert type(ours.scheduler) is ours_scheduler_cls

    steps = 10 if stock_pipeline_cls is diffusers.DDPMPipeline else 5
    theirs = stock(generator=torch.Generator().manual_seed(1), num_inference_steps=steps, output_type="np").images
    mine = ours(generator=torch.Generator().manual_seed(1), num_inference_steps=steps, output_type="np").images
    np.testing.assert_allclose(mine, theirs, atol=2e-5, rtol=0)


def test_to_diffusers_returns_stock_objects_with_the_same_images(ddpm_pipe, images_of):
    stock = ddpm_pipe.to_diffusers()
    stock.set_progress_bar_config(disable=True)
    assert type(stock) is diffusers.DDPMPipeline
    assert type(stock.unet) is diffusers.UNet2DModel and type(stock.scheduler) is diffusers.DDPMScheduler
    T = ddpm_pipe.scheduler.config.num_train_timesteps
    theirs = stock(generator=torch.Generator().manual_seed(6), num_inference_steps=T, output_type="pt").images
    torch.testing.assert_close(theirs, images_of(ddpm_pipe, seed=6, batch_size=1), atol=2e-5, rtol=0)


def test_to_diffusers_maps_ddim_to_stock_ddim_and_refuses_hf_only_spacing(ddim_pipe):
    assert type(ddim_pipe.to_diffusers().scheduler) is diffusers.DDIMScheduler
    ddim_pipe.scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config, timestep_spacing="quadratic")
    with pytest.raises(ValueError, match="quadratic"):
        ddim_pipe.to_diffusers()


def test_diffusers_loads_the_saved_folder_as_hf_ddpm_classes_with_trust_remote_code(ddpm_pipe, tmp_path, images_of):
    ddpm_pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is DDPMPipeline
    assert type(pipe.unet) is DDPMUNet2DModel and type(pipe.scheduler) is DDPMScheduler
    torch.testing.assert_close(images_of(pipe, seed=8), images_of(ddpm_pipe, seed=8), atol=ATOL, rtol=0)


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers: ~5-15 s on the shared CPU
def test_fresh_process_loads_with_diffusers_trust_remote_code_and_stock_without_hf_ddpm(
    ddpm_pipe, tmp_path, images_of, run_python
):
    # A fresh interpreter: nothing of hf_ddpm imported beforehand, an empty remote-code module cache.
    ours_dir, stock_dir = tmp_path / "ours", tmp_path / "stock"
    ddpm_pipe.save_pretrained(ours_dir)
    ddpm_pipe.to_diffusers().save_pretrained(stock_dir)
    T = ddpm_pipe.scheduler.config.num_train_timesteps
    code = textwrap.dedent(
        f"""
        import sys, torch
        from diffusers import DiffusionPipeline, DDPMPipeline

        # 1. The to_diffusers() folder needs nothing from hf_ddpm.
        stock = DDPMPipeline.from_pretrained({str(stock_dir)!r})
        assert "hf_ddpm" not in sys.modules, "loading the stock folder imported hf_ddpm"
        stock.set_progress_bar_config(disable=True)
        images = stock(generator=torch.Generator().manual_seed(7), num_inference_steps={T}, output_type="pt").images
        torch.save(images, {str(tmp_path / "stock.pt")!r})

        # 2. Without trust_remote_code diffusers refuses our folder (why hf_ddpm has its own from_pretrained) ...
        try:
            DiffusionPipeline.from_pretrained({str(ours_dir)!r})
        except ValueError as err:
            assert "trust_remote_code" in str(err), err
        else:
            raise AssertionError("diffusers loaded custom components without trust_remote_code")

        # 3. ... and with it, builds hf_ddpm's classes.
        pipe = DiffusionPipeline.from_pretrained({str(ours_dir)!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        print(type(pipe).__module__, type(pipe.unet).__module__, type(pipe.scheduler).__module__)
        images = pipe(generator=torch.Generator().manual_seed(7), output_type="pt").images
        torch.save(images, {str(tmp_path / "ours.pt")!r})
        """
    )
    result = run_python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result.stdout.split() == [
        "hf_ddpm.pipelines.pipeline_ddpm",
        "hf_ddpm.models.unet_2d",
        "hf_ddpm.schedulers.scheduling_ddpm",
    ]
    expected = images_of(ddpm_pipe, seed=7, batch_size=1)
    torch.testing.assert_close(torch.load(tmp_path / "ours.pt"), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.load(tmp_path / "stock.pt"), expected, atol=2e-5, rtol=0)


# ------------------------------------------------------------------------------------------------- refusals
def test_folder_with_only_pickled_weights_is_refused_unless_allowed(tiny_unet, stock_unet_like, tmp_path, quiet):
    stock = diffusers.DDPMPipeline(
        unet=stock_unet_like(tiny_unet()), scheduler=diffusers.DDPMScheduler(num_train_timesteps=10)
    )
    stock.save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "unet" / "diffusion_pytorch_model.bin").is_file()
    with pytest.raises(ValueError, match=r"only pickled weights.*diffusion_pytorch_model\.bin.*allow_pickle=True"):
        DDPMPipeline.from_pretrained(tmp_path)
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path, allow_pickle=True))
    sample = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.unet(sample, 3).sample, stock.unet(sample, 3).sample, atol=1e-5, rtol=0)


def test_save_pretrained_refuses_pickle(ddpm_pipe, tmp_path):
    with pytest.raises(ValueError, match="safe_serialization"):
        ddpm_pipe.save_pretrained(tmp_path, safe_serialization=False)


def test_folder_without_model_index_is_refused(ddpm_pipe, tmp_path):
    ddpm_pipe.unet.save_pretrained(tmp_path / "unet")
    with pytest.raises(ValueError, match="model_index.json"):
        DDPMPipeline.from_pretrained(tmp_path)


def test_path_that_is_neither_a_folder_nor_a_repo_id_is_refused(tmp_path):
    with pytest.raises(ValueError, match="neither a local folder nor a Hub repo id"):
        DDPMPipeline.from_pretrained(str(tmp_path / "missing"))


def test_folder_of_another_pipeline_is_refused(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    index = json.loads((tmp_path / "model_index.json").read_text())
    index["_class_name"] = "StableDiffusionPipeline"
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match="StableDiffusionPipeline.*DDPMPipeline"):
        DDPMPipeline.from_pretrained(tmp_path)


def test_unknown_from_pretrained_argument_is_refused(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    with pytest.raises(TypeError, match="custom_pipeline"):
        DDPMPipeline.from_pretrained(tmp_path, custom_pipeline="x")
