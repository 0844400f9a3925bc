"""What hf_ddpm saves loads in stock diffusers where hf_ddpm is not installed (the oracle: a fresh interpreter that
cannot import hf_ddpm gives the images hf_ddpm gives), and the custom-component fallback where it is."""

import textwrap

import numpy as np
import pytest
import torch

from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddim import DDIMScheduler

# hf_ddpm is installed (editable) in the test environment, so removing it from sys.path cannot hide it: a finder
# placed first on sys.meta_path refuses it and its submodules.
HIDE_HF_DDPM = textwrap.dedent(
    """
    import importlib.abc, sys

    class HideHfDdpm(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "hf_ddpm" or name.startswith("hf_ddpm."):
                raise ModuleNotFoundError(f"No module named {name!r} (hidden for this test)", name=name)
            return None

    sys.meta_path.insert(0, HideHfDdpm())
    try:
        import hf_ddpm
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError("hf_ddpm is still importable")
    """
)
# Measured (CPU, torch 2.13, diffusers 0.42.1): DDPM 2.5e-6, because stock's step recomputes β_t = 1 − ᾱ_t/ᾱ_{t-1}
# in float32 where hf_ddpm reads float64 tables (shared/PAPERS.md); DDIM 1.8e-7, float32 rounding alone.
ATOL = {"ddpm": 1e-5, "ddim": 1e-6, "hub": 1e-5}


def sample(pipe, steps: int) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(11)
    return pipe(batch_size=2, generator=generator, num_inference_steps=steps, output_type="np").images


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers: ~10-30 s on the shared CPU
def test_stock_diffusers_without_hf_ddpm_loads_saved_folders_and_repos_with_the_same_images(
    hub_server, hub_repo_id, ddpm_pipe, ddim_pipe, tmp_path, run_python
):
    # DDPM: every step of a T = 10 chain. DDIM: "leading" spacing (the default), 5 of 10 steps, η = 0.
    assert ddim_pipe.scheduler.config.timestep_spacing == "leading"
    sources = {"ddpm": (str(tmp_path / "ddpm"), 10), "ddim": (str(tmp_path / "ddim"), 5), "hub": (hub_repo_id, 10)}
    ddpm_pipe.save_pretrained(sources["ddpm"][0])
    ddim_pipe.save_pretrained(sources["ddim"][0])
    ddpm_pipe.push_to_hub(hub_repo_id)

    code = HIDE_HF_DDPM + textwrap.dedent(
        f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline

        for name, (source, steps) in {sources!r}.items():
            pipe = DiffusionPipeline.from_pretrained(source)
            pipe.set_progress_bar_config(disable=True)
            print(name, type(pipe).__name__, type(pipe.unet).__name__, type(pipe.scheduler).__name__)
            generator = torch.Generator().manual_seed(11)
            images = pipe(batch_size=2, generator=generator, num_inference_steps=steps, output_type="np").images
            np.save({str(tmp_path)!r} + f"/{{name}}.npy", images)
        """
    )
    result = run_python(code)
    assert result.stdout.splitlines() == [
        "ddpm DDPMPipeline UNet2DModel DDPMScheduler",
        "ddim DDPMPipeline UNet2DModel DDIMScheduler",
        "hub DDPMPipeline UNet2DModel DDPMScheduler",
    ]
    for name, (source, steps) in sources.items():
        ours = sample(DDPMPipeline.from_pretrained(source), steps)
        np.testing.assert_allclose(np.load(tmp_path / f"{name}.npy"), ours, atol=ATOL[name], rtol=0, err_msg=name)


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers: ~10-30 s on the shared CPU
def test_fresh_process_loads_the_custom_scheduler_fallback_with_trust_remote_code(ddim_pipe, tmp_path, run_python):
    # A fresh interpreter: nothing of hf_ddpm imported beforehand, an empty remote-code module cache.
    ddim_pipe.scheduler = DDIMScheduler.from_config(ddim_pipe.scheduler.config, timestep_spacing="quadratic")
    with pytest.warns(UserWarning, match="scheduler"):
        ddim_pipe.save_pretrained(tmp_path / "model")
    code = textwrap.dedent(
        f"""
        import numpy as np, torch
        from diffusers import DiffusionPipeline

        try:
            DiffusionPipeline.from_pretrained({str(tmp_path / "model")!r})
        except ValueError as err:
            assert "trust_remote_code" in str(err), err
        else:
            raise AssertionError("diffusers loaded a custom component without trust_remote_code")

        pipe = DiffusionPipeline.from_pretrained({str(tmp_path / "model")!r}, trust_remote_code=True)
        pipe.set_progress_bar_config(disable=True)
        print(type(pipe).__module__, type(pipe.unet).__module__, type(pipe.scheduler).__module__)
        generator = torch.Generator().manual_seed(11)
        images = pipe(batch_size=2, generator=generator, num_inference_steps=4, output_type="np").images
        np.save({str(tmp_path / "remote.npy")!r}, images)
        """
    )
    result = run_python(code, env={"HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert result.stdout.split() == [
        "diffusers.pipelines.ddpm.pipeline_ddpm",
        "diffusers.models.unets.unet_2d",
        "hf_ddpm.schedulers.scheduling_ddim",
    ]
    np.testing.assert_allclose(np.load(tmp_path / "remote.npy"), sample(ddim_pipe, 4), atol=ATOL["ddim"], rtol=0)
