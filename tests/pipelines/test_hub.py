"""push_to_hub and loading from a repo id, with huggingface_hub's real client against the local Hub (tests/conftest.py)."""

import os
import textwrap

import diffusers
import pytest
import torch
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

ATOL = 1e-5


@pytest.fixture
def pushed(hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    """`ddpm_pipe` pushed to a fresh repo, with training settings that hold a token and a local path."""
    training_args = {"learning_rate": 2e-4, "hub_token": os.environ["HF_TOKEN"], "output_dir": str(tmp_path)}
    commit = ddpm_pipe.push_to_hub(
        hub_repo_id, training_args=training_args, metrics={"fid": 99.5}, datasets=["ylecun/mnist", str(tmp_path)]
    )
    return hub_repo_id, commit


def test_push_to_hub_uploads_the_loadable_folder_and_a_model_card(pushed, hub_server, tmp_path):
    repo_id, commit = pushed
    info = HfApi().model_info(repo_id)
    assert info.sha == commit.oid
    files = {s.rfilename for s in info.siblings}
    # diffusers' own layout: no code, no pickle.
    assert files - {".gitattributes"} == {
        "README.md",
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
    }
    # Weights went through the LFS protocol, as on the real Hub.
    assert hub_server.file_entry(repo_id, "unet/diffusion_pytorch_model.safetensors").lfs_sha256

    card = open(hf_hub_download(repo_id, "README.md"), encoding="utf-8").read()
    assert f'DDPMPipeline.from_pretrained("{repo_id}")' in card
    assert f'DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)' in card
    assert "| learning_rate | 0.0002 |" in card and "| fid | 99.5 |" in card
    assert ModelCard(card).data.datasets == ["ylecun/mnist"]  # the local dataset path was dropped
    assert os.environ["HF_TOKEN"] not in card
    assert str(tmp_path) not in card and os.environ["HF_HOME"] not in card and "/tmp" not in card


def test_hf_ddpm_from_pretrained_of_a_repo_id_gives_same_classes_and_images(pushed, ddpm_pipe, images_of, quiet):
    repo_id, _ = pushed
    loaded = quiet(DDPMPipeline.from_pretrained(repo_id))
    assert type(loaded.unet) is DDPMUNet2DModel and type(loaded.scheduler) is DDPMScheduler
    torch.testing.assert_close(images_of(loaded, seed=4), images_of(ddpm_pipe, seed=4), atol=ATOL, rtol=0)


def test_stock_diffusers_from_pretrained_of_a_repo_id_gives_stock_classes_with_the_same_weights(
    pushed, ddpm_pipe, tmp_path
):
    repo_id, _ = pushed
    # A cache of its own: everything comes from the Hub now. Same images: tests/pipelines/test_stock_loading.py.
    pipe = diffusers.DiffusionPipeline.from_pretrained(repo_id, cache_dir=tmp_path / "cache")
    assert type(pipe) is diffusers.DDPMPipeline
    assert type(pipe.unet) is diffusers.UNet2DModel and type(pipe.scheduler) is diffusers.DDPMScheduler
    assert pipe.scheduler.config.num_train_timesteps == ddpm_pipe.scheduler.config.num_train_timesteps
    ours = ddpm_pipe.unet.state_dict()
    for key, tensor in pipe.unet.state_dict().items():
        torch.testing.assert_close(tensor, ours[key], atol=0, rtol=0)


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers: ~5-15 s on the shared CPU
def test_fresh_process_with_an_empty_cache_loads_the_repo_both_ways(
    pushed, ddpm_pipe, images_of, tmp_path, run_python
):
    repo_id, _ = pushed
    code = textwrap.dedent(
        f"""
        import os, sys, torch
        assert not os.listdir(os.environ["HF_HOME"]), "the cache is not empty"
        from diffusers import DiffusionPipeline
        pipe = DiffusionPipeline.from_pretrained({repo_id!r})
        assert "hf_ddpm" not in sys.modules, "loading the stock layout imported hf_ddpm"
        pipe.set_progress_bar_config(disable=True)
        print(type(pipe).__module__, type(pipe.unet).__module__, type(pipe.scheduler).__module__)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(9), num_inference_steps=10,
                      output_type="np").images
        torch.save(torch.from_numpy(images).permute(0, 3, 1, 2), {str(tmp_path / "stock.pt")!r})

        from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
        pipe = DDPMPipeline.from_pretrained({repo_id!r})
        pipe.set_progress_bar_config(disable=True)
        images = pipe(batch_size=2, generator=torch.Generator().manual_seed(9), output_type="pt").images
        torch.save(images, {str(tmp_path / "ours.pt")!r})
        """
    )
    (tmp_path / "home").mkdir()
    result = run_python(code, env={"HF_HOME": str(tmp_path / "home")})
    assert result.stdout.split() == [
        "diffusers.pipelines.ddpm.pipeline_ddpm",
        "diffusers.models.unets.unet_2d",
        "diffusers.schedulers.scheduling_ddpm",
    ]
    expected = images_of(ddpm_pipe, seed=9)
    torch.testing.assert_close(torch.load(tmp_path / "ours.pt"), expected, atol=ATOL, rtol=0)
    torch.testing.assert_close(torch.load(tmp_path / "stock.pt"), expected, atol=2e-5, rtol=0)


def test_save_pretrained_with_push_to_hub_uploads_too(hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path, push_to_hub=True, repo_id=hub_repo_id)
    files = set(HfApi().list_repo_files(hub_repo_id))
    assert {"README.md", "model_index.json", "unet/config.json", "scheduler/scheduler_config.json"} <= files


def test_save_pretrained_with_push_to_hub_refuses_an_unknown_option_before_writing(ddpm_pipe, tmp_path):
    with pytest.raises(TypeError, match="licence"):
        ddpm_pipe.save_pretrained(tmp_path / "out", push_to_hub=True, repo_id="user/model", licence="mit")
    assert not (tmp_path / "out").exists()


def test_repo_id_that_does_not_exist_is_refused_with_diffusers_exception_type(hub_server):
    missing = f"{hub_server.user}/no-such-model"
    with pytest.raises(OSError) as stock_error:
        diffusers.DDPMPipeline.from_pretrained(missing)
    with pytest.raises(OSError, match=f"no model repo '{missing}' exists on {hub_server.endpoint}") as our_error:
        DDPMPipeline.from_pretrained(missing)
    assert isinstance(our_error.value, type(stock_error.value))


def test_repo_with_only_pickled_weights_is_refused_before_download(
    hub_server, hub_repo_id, tiny_unet, stock_unet_like, tmp_path
):
    stock = diffusers.DDPMPipeline(
        unet=stock_unet_like(tiny_unet()), scheduler=diffusers.DDPMScheduler(num_train_timesteps=10)
    )
    stock.save_pretrained(tmp_path, safe_serialization=False)
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    with pytest.raises(ValueError, match=r"Hub repo .* only pickled weights.*allow_pickle=True"):
        DDPMPipeline.from_pretrained(hub_repo_id)
    fetched = [r.path for r in hub_server.request_log if f"/{hub_repo_id}/resolve/" in r.path]
    assert fetched == []  # refused from the listing: nothing, pickle least of all, was downloaded
    loaded = DDPMPipeline.from_pretrained(hub_repo_id, allow_pickle=True)
    assert type(loaded.unet) is DDPMUNet2DModel
    fetched = [r.path for r in hub_server.request_log if f"/{hub_repo_id}/resolve/" in r.path]
    assert any(path.endswith("unet/diffusion_pytorch_model.bin") for path in fetched)
