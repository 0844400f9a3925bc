"""Loading a repo id as the Hub's other libraries do: from huggingface_hub's cache when offline (`HF_HUB_OFFLINE=1`,
`local_files_only=True`, the Hub unreachable), `revision=` as a branch, tag or commit, and a clear error for what was
never cached. Real client, local Hub (tests/conftest.py)."""

import socket
import textwrap

import numpy as np
import pytest
import torch
from huggingface_hub import HfApi, constants

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.pipeline_ddpm import DDPMPipeline
from hf_ddpm.schedulers.scheduling_ddpm import DDPMScheduler

SAMPLE = {"batch_size": 2, "num_inference_steps": 10, "output_type": "np"}


def sample(pipe, seed: int = 0) -> np.ndarray:
    pipe.set_progress_bar_config(disable=True)
    return pipe(generator=torch.Generator().manual_seed(seed), **SAMPLE).images


def hub_requests(hub_server, repo_id: str) -> list[str]:
    return [f"{r.method} {r.path}" for r in hub_server.request_log if repo_id in r.path]


@pytest.fixture
def cached_repo(hub_server, hub_repo_id, ddpm_pipe):
    """`ddpm_pipe` pushed, then loaded once (so cached); the repo id and the images the loaded pipeline samples."""
    ddpm_pipe.push_to_hub(hub_repo_id)
    return hub_repo_id, sample(DDPMPipeline.from_pretrained(hub_repo_id))


def offline_loading_code(repo_id: str, out: str, never_cached: str) -> str:
    """A fresh interpreter loads `repo_id` (cached) and `never_cached`, saving images and the error it got."""
    return textwrap.dedent(
        f"""
        import numpy as np, torch
        from hf_ddpm import DDPMPipeline
        pipe = DDPMPipeline.from_pretrained({repo_id!r})
        pipe.set_progress_bar_config(disable=True)
        np.save({out + "/images.npy"!r}, pipe(generator=torch.Generator().manual_seed(0), **{SAMPLE!r}).images)
        try:
            DDPMPipeline.from_pretrained({never_cached!r})
        except OSError as err:
            open({out + "/error.txt"!r}, "w").write(f"{{type(err).__name__}}: {{err}}")
        """
    )


# -------------------------------------------------------------------------------------------------- offline
def test_local_files_only_loads_the_cached_repo_without_asking_the_hub(cached_repo, hub_server):
    repo_id, expected = cached_repo
    before = hub_requests(hub_server, repo_id)
    images = sample(DDPMPipeline.from_pretrained(repo_id, local_files_only=True))
    assert hub_requests(hub_server, repo_id) == before
    np.testing.assert_array_equal(images, expected)


def test_local_files_only_with_a_never_cached_repo_names_the_repo_endpoint_and_local_files_only(hub_server):
    repo_id = f"{hub_server.user}/never-downloaded"
    with pytest.raises(OSError) as info:
        DDPMPipeline.from_pretrained(repo_id, local_files_only=True)
    message = str(info.value)
    for words in (repr(repo_id), constants.ENDPOINT, "local_files_only=True", "not in the cache"):
        assert words in message, message


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers
def test_hf_hub_offline_loads_the_cached_repo_in_a_fresh_process(cached_repo, hub_server, run_python, tmp_path):
    repo_id, expected = cached_repo
    before = hub_requests(hub_server, repo_id)
    never_cached = f"{hub_server.user}/never-downloaded"
    run_python(offline_loading_code(repo_id, str(tmp_path), never_cached), env={"HF_HUB_OFFLINE": "1"})
    assert hub_requests(hub_server, repo_id) == before
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)
    error = (tmp_path / "error.txt").read_text()
    for words in ("OSError", repr(never_cached), "HF_HUB_OFFLINE=1", constants.ENDPOINT, "local_files_only=False"):
        assert words in error, error


@pytest.mark.slow  # a fresh interpreter importing torch and diffusers
def test_unreachable_hub_falls_back_to_the_cache_in_a_fresh_process(cached_repo, hub_server, run_python, tmp_path):
    repo_id, expected = cached_repo
    with socket.socket() as closed:  # bound, never listening: connections are refused
        closed.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{closed.getsockname()[1]}"
        never_cached = f"{hub_server.user}/never-downloaded"
        run_python(offline_loading_code(repo_id, str(tmp_path), never_cached), env={"HF_ENDPOINT": endpoint})
    np.testing.assert_array_equal(np.load(tmp_path / "images.npy"), expected)
    error = (tmp_path / "error.txt").read_text()
    for words in ("OSError", repr(never_cached), f"the Hub at {endpoint} could not be reached", "local_files_only"):
        assert words in error, error


# ------------------------------------------------------------------------------------------------- revision
@pytest.fixture
def repo_with_branch_and_tag(hub_server, hub_repo_id, ddpm_pipe, tiny_unet):
    """main: `ddpm_pipe`, tagged "v1"; branch "dev": another UNet. Returns the repo id and each revision's UNet."""
    main_commit = ddpm_pipe.push_to_hub(hub_repo_id)
    HfApi().create_tag(hub_repo_id, tag="v1", revision=main_commit.oid)
    dev = DDPMPipeline(unet=tiny_unet(seed=1), scheduler=DDPMScheduler(num_train_timesteps=10))
    dev_commit = dev.push_to_hub(hub_repo_id, revision="dev")
    return hub_repo_id, {"main": ddpm_pipe.unet, "v1": ddpm_pipe.unet, "dev": dev.unet, dev_commit.oid: dev.unet}


def assert_same_unet(loaded: DDPMUNet2DModel, expected: DDPMUNet2DModel) -> None:
    sample = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(sample, 5).sample, expected(sample, 5).sample, atol=1e-5, rtol=0)


def test_revision_resolves_branches_tags_and_commits(repo_with_branch_and_tag):
    repo_id, unets = repo_with_branch_and_tag
    for revision, expected in unets.items():
        assert_same_unet(DDPMPipeline.from_pretrained(repo_id, revision=revision).unet, expected)


def test_revisions_loaded_once_resolve_offline_from_the_cache(repo_with_branch_and_tag, hub_server):
    repo_id, unets = repo_with_branch_and_tag
    for revision in unets:
        DDPMPipeline.from_pretrained(repo_id, revision=revision)
    before = hub_requests(hub_server, repo_id)
    for revision, expected in unets.items():
        assert_same_unet(
            DDPMPipeline.from_pretrained(repo_id, revision=revision, local_files_only=True).unet, expected
        )
    assert hub_requests(hub_server, repo_id) == before


def test_revision_that_does_not_exist_is_refused(repo_with_branch_and_tag):
    repo_id, _ = repo_with_branch_and_tag
    with pytest.raises(OSError, match=f"revision='nope' is no branch, tag or commit of Hub repo '{repo_id}'"):
        DDPMPipeline.from_pretrained(repo_id, revision="nope")
