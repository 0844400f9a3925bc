"""Save and convert: diffusers' own layout by default, the custom-component fallback per component, folders saved by
earlier hf_ddpm, stock checkpoints in and out."""

import getpass
import inspect
import json
import shutil
import socket
import warnings
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.pipelines.serialization import stock_incompatibilities
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

# Same weights and generator; the only difference a reload may make is float summation order in the UNet.
ATOL = 1e-5
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
UNET2D_FIELDS = set(inspect.signature(diffusers.UNet2DModel.__init__).parameters) - {"self"}


def read_index(folder) -> dict:
    index = json.loads((Path(folder) / "model_index.json").read_text())
    index.pop("_diffusers_version")
    return index


def public(config) -> dict:
    return {key: value for key, value in config.items() if not key.startswith("_")}


def save_without_warnings(pipe, folder) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipe.save_pretrained(folder)


def save_expecting_fallback(pipe, folder, *words) -> None:
    with pytest.warns(UserWarning) as record:
        pipe.save_pretrained(folder)
    message = " ".join(str(w.message) for w in record if issubclass(w.category, UserWarning))
    for word in (*words, "hf_ddpm", "trust_remote_code=True"):
        assert word in message, f"{word!r} not in the warning: {message}"


# ------------------------------------------------------------------------------------------------ stock layout
@pytest.mark.parametrize("scheduler_cls", [DDPMScheduler, DDIMScheduler])
def test_save_pretrained_writes_stock_diffusers_layout_by_default(scheduler_cls, tiny_unet, tmp_path):
    pipe = DDPMPipeline(unet=tiny_unet(), scheduler=scheduler_cls(num_train_timesteps=10))
    assert stock_incompatibilities(pipe) == {}
    save_without_warnings(pipe, tmp_path)

    assert read_index(tmp_path) == {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["diffusers", scheduler_cls.__name__],
    }
    unet_config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert unet_config["_class_name"] == "UNet2DModel"
    assert set(unet_config) - UNET2D_FIELDS == {"_class_name", "_diffusers_version"}
    scheduler_config = json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler_config["_class_name"] == scheduler_cls.__name__
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == [
        "model_index.json",
        "scheduler/scheduler_config.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    ]


def test_stock_diffusion_pipeline_loads_the_saved_folder_as_stock_classes_with_the_same_images(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    stock = diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    stock.set_progress_bar_config(disable=True)
    assert type(stock) is diffusers.DDPMPipeline
    assert type(stock.unet) is diffusers.UNet2DModel and type(stock.scheduler) is diffusers.DDPMScheduler
    T = ddpm_pipe.scheduler.config.num_train_timesteps
    theirs = stock(generator=torch.Generator().manual_seed(3), num_inference_steps=T, output_type="np").images
    ours = ddpm_pipe(generator=torch.Generator().manual_seed(3), num_inference_steps=T, output_type="np").images
    np.testing.assert_allclose(theirs, ours, atol=2e-5, rtol=0)


def test_auto_model_loads_the_saved_unet(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    unet = diffusers.AutoModel.from_pretrained(str(tmp_path), subfolder="unet")
    assert type(unet) is diffusers.UNet2DModel
    sample = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(unet(sample, 4).sample, ddpm_pipe.unet(sample, 4).sample, atol=1e-5, rtol=0)


def test_round_trip_through_hf_ddpm_from_pretrained_gives_same_classes_and_images(
    ddpm_pipe, tmp_path, images_of, quiet
):
    ddpm_pipe.save_pretrained(tmp_path)
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(loaded) is DDPMPipeline
    assert type(loaded.unet) is DDPMUNet2DModel and type(loaded.scheduler) is DDPMScheduler
    assert public(loaded.scheduler.config) == public(ddpm_pipe.scheduler.config)
    torch.testing.assert_close(images_of(loaded, seed=2), images_of(ddpm_pipe, seed=2), atol=ATOL, rtol=0)


def test_scheduler_swapped_with_from_config_survives_save_and_load(ddpm_pipe, tmp_path, images_of, quiet):
    ddpm_pipe.scheduler = DDIMScheduler.from_config(ddpm_pipe.scheduler.config, timestep_spacing="trailing")
    save_without_warnings(ddpm_pipe, tmp_path)
    assert read_index(tmp_path)["scheduler"] == ["diffusers", "DDIMScheduler"]
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(loaded.scheduler) is DDIMScheduler
    assert loaded.scheduler.config.timestep_spacing == "trailing"
    kwargs = {"num_inference_steps": 4, "eta": 0.5}
    torch.testing.assert_close(images_of(loaded, **kwargs), images_of(ddpm_pipe, **kwargs), atol=ATOL, rtol=0)


def test_a_stock_diffusers_scheduler_is_kept_as_stock(ddpm_pipe, tmp_path):
    ddpm_pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(ddpm_pipe.scheduler.config)
    save_without_warnings(ddpm_pipe, tmp_path)
    assert read_index(tmp_path)["scheduler"] == ["diffusers", "EulerDiscreteScheduler"]
    assert type(DDPMPipeline.from_pretrained(tmp_path).scheduler) is diffusers.EulerDiscreteScheduler


def test_variant_is_saved_and_loaded_by_hf_ddpm_and_stock_diffusers(ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path, variant="ema")
    assert (tmp_path / "unet" / "diffusion_pytorch_model.ema.safetensors").is_file()
    ours = DDPMPipeline.from_pretrained(tmp_path, variant="ema").unet
    theirs = diffusers.DiffusionPipeline.from_pretrained(tmp_path, variant="ema").unet
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = ddpm_pipe.unet(sample, 2).sample
        torch.testing.assert_close(ours(sample, 2).sample, expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(theirs(sample, 2).sample, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["stock", "custom unet"])
def test_saved_folder_holds_no_local_path_user_or_host_name(ddpm_pipe, tmp_path, layout):
    first, second = tmp_path / "first", tmp_path / "second"
    ddpm_pipe.save_pretrained(first)
    loaded = DDPMPipeline.from_pretrained(str(first.resolve()))
    assert loaded.name_or_path == str(first.resolve())  # what diffusers records, and what must not be saved
    if layout == "custom unet":
        # A config key UNet2DModel does not take keeps hf_ddpm's UNet, whose config diffusers saves with its
        # _name_or_path.
        loaded.unet.register_to_config(trained_on="digits")
        assert set(stock_incompatibilities(loaded)) == {"unet"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded.save_pretrained(second)
    assert read_index(second)["unet"][0] == ("diffusers" if layout == "stock" else "unet_2d")
    secrets = [str(first.resolve()), str(tmp_path)]
    secrets += [name for name in (getpass.getuser(), socket.gethostname()) if len(name) > 3]
    for file in (p for p in second.rglob("*") if p.is_file()):
        content = file.read_bytes()
        for secret in secrets:
            assert secret.encode() not in content, f"{secret!r} in {file.relative_to(second)}"


def test_save_pretrained_onto_an_existing_file_is_refused_before_writing(ddpm_pipe, tmp_path):
    target = tmp_path / "model"
    target.write_text("not a folder")
    with pytest.raises(FileExistsError, match=f"save_directory='{target}' is an existing file"):
        ddpm_pipe.save_pretrained(target)
    assert target.read_text() == "not a folder" and sorted(tmp_path.iterdir()) == [target]


# ------------------------------------------------------------------------------------- custom-layout fallback
def test_quadratic_spacing_saves_only_the_scheduler_as_custom_component_with_a_warning(
    ddim_pipe, tmp_path, images_of, quiet
):
    ddim_pipe.scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config, timestep_spacing="quadratic")
    assert set(stock_incompatibilities(ddim_pipe)) == {"scheduler"}
    assert "quadratic" in stock_incompatibilities(ddim_pipe)["scheduler"]
    save_expecting_fallback(ddim_pipe, tmp_path, "scheduler", "quadratic")

    assert read_index(tmp_path) == {
        "_class_name": "DDPMPipeline",
        "unet": ["diffusers", "UNet2DModel"],
        "scheduler": ["scheduling_ddim", "DDIMScheduler"],
    }
    assert (
        "from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler"
        in (tmp_path / "scheduler" / "scheduling_ddim.py").read_text()
    )
    assert sorted(p.name for p in tmp_path.rglob("*.py")) == ["scheduling_ddim.py"]

    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    assert type(loaded.scheduler) is DDIMScheduler and loaded.scheduler.config.timestep_spacing == "quadratic"
    torch.testing.assert_close(
        images_of(loaded, num_inference_steps=4), images_of(ddim_pipe, num_inference_steps=4), atol=ATOL, rtol=0
    )


def test_diffusers_loads_the_custom_scheduler_only_with_trust_remote_code(ddim_pipe, tmp_path):
    ddim_pipe.scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config, timestep_spacing="quadratic")
    with pytest.warns(UserWarning, match="scheduler"):
        ddim_pipe.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="trust_remote_code"):
        diffusers.DiffusionPipeline.from_pretrained(tmp_path)
    pipe = diffusers.DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe) is diffusers.DDPMPipeline and type(pipe.unet) is diffusers.UNet2DModel
    assert type(pipe.scheduler) is DDIMScheduler and pipe.scheduler.config.timestep_spacing == "quadratic"
    # Stock DDPMPipeline runs DDIM with η = 0, as hf_ddpm's does by default.
    theirs = pipe(generator=torch.Generator().manual_seed(8), num_inference_steps=4, output_type="np").images
    ours = ddim_pipe(generator=torch.Generator().manual_seed(8), num_inference_steps=4, output_type="np").images
    np.testing.assert_allclose(theirs, ours, atol=ATOL, rtol=0)


def test_learned_variance_with_ddim_saves_the_pipeline_class_as_custom_component(tiny_unet, tmp_path, quiet):
    torch.manual_seed(0)
    unet = DDPMUNet2DModel.from_preset("tiny", out_channels=6).eval()
    pipe = quiet(DDPMPipeline(unet=unet, scheduler=DDIMScheduler(num_train_timesteps=10)))
    assert set(stock_incompatibilities(pipe)) == {"pipeline"}
    save_expecting_fallback(pipe, tmp_path, "pipeline", "learned variance")
    index = read_index(tmp_path)
    assert index["_class_name"] == ["pipeline_ddpm", "DDPMPipeline"]
    assert index["unet"] == ["diffusers", "UNet2DModel"] and index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert (tmp_path / "pipeline_ddpm.py").is_file()
    assert type(diffusers.DiffusionPipeline.from_pretrained(tmp_path, trust_remote_code=True)) is DDPMPipeline
    loaded = quiet(DDPMPipeline.from_pretrained(tmp_path))
    kwargs = {"num_inference_steps": 3, "output_type": "np", "batch_size": 1}
    np.testing.assert_allclose(
        loaded(generator=torch.Generator().manual_seed(0), **kwargs).images,
        pipe(generator=torch.Generator().manual_seed(0), **kwargs).images,
        atol=ATOL,
        rtol=0,
    )


def test_learned_variance_with_a_learned_variance_ddpm_scheduler_stays_stock(tiny_unet):
    unet = DDPMUNet2DModel.from_preset("tiny", out_channels=6)
    pipe = DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=10, variance_type="learned_range"))
    assert stock_incompatibilities(pipe) == {}


def test_a_config_key_the_stock_scheduler_would_drop_is_an_incompatibility(ddpm_pipe):
    ddpm_pipe.scheduler.register_to_config(sigma_hat_scale=2.0)
    assert stock_incompatibilities(ddpm_pipe) == {"scheduler": "diffusers.DDPMScheduler would change its config: "
                                                  "sigma_hat_scale is ignored"}  # fmt: skip


def test_saving_the_stock_layout_over_an_older_custom_layout_removes_its_re_export_modules(tmp_path, quiet):
    folder = tmp_path / "model"
    pipe = quiet(DDPMPipeline.from_pretrained(FIXTURES / "legacy_custom_layout"))
    shutil.copytree(FIXTURES / "legacy_custom_layout", folder)
    (folder / "unet" / "notes.py").write_text("# the user's own file\n")
    pipe.save_pretrained(folder)
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*.py")) == ["unet/notes.py"]
    assert read_index(folder)["unet"] == ["diffusers", "UNet2DModel"]


# ------------------------------------------------------------------------------------ folders of earlier saves
def test_folder_saved_by_earlier_hf_ddpm_in_the_custom_layout_still_loads_with_its_outputs(quiet):
    # Written by tests/fixtures/make_legacy_custom_layout.py with the code before the stock layout was the default.
    folder = FIXTURES / "legacy_custom_layout"
    assert read_index(folder)["_class_name"] == ["pipeline_ddpm", "DDPMPipeline"]
    pipe = quiet(DDPMPipeline.from_pretrained(folder))
    assert type(pipe.unet) is DDPMUNet2DModel and type(pipe.scheduler) is DDPMScheduler
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        eps = pipe.unet(x, 3).sample.numpy()
    # Measured up to 7.7e-7 (ε) and 1.2e-7 (images): the thread count changes the UNet's summation order.
    np.testing.assert_allclose(eps, np.load(FIXTURES / "legacy_custom_layout_unet_output.npy"), atol=5e-6, rtol=0)
    images = pipe(batch_size=1, generator=torch.Generator().manual_seed(0), output_type="np").images
    np.testing.assert_allclose(images, np.load(FIXTURES / "legacy_custom_layout_images.npy"), atol=1e-6, rtol=0)


# --------------------------------------------------------------------------------------------------- convert
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


def test_to_diffusers_copies_the_weights(ddpm_pipe):
    stock = ddpm_pipe.to_diffusers()
    with torch.no_grad():
        stock.unet.conv_in.weight.zero_()
    assert ddpm_pipe.unet.conv_in.weight.abs().sum() > 0


def test_to_diffusers_maps_ddim_to_stock_ddim_and_refuses_hf_only_spacing(ddim_pipe):
    assert type(ddim_pipe.to_diffusers().scheduler) is diffusers.DDIMScheduler
    ddim_pipe.scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config, timestep_spacing="quadratic")
    with pytest.raises(ValueError, match="scheduler: timestep_spacing='quadratic' exists only in hf_ddpm"):
        ddim_pipe.to_diffusers()


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
