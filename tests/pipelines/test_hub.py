"""push_to_hub and loading from a repo id, with huggingface_hub's real client against the local Hub (tests/conftest.py)."""

import copy
import getpass
import json
import os
import re
import socket
import textwrap
from pathlib import Path

import diffusers
import pytest
import torch
from huggingface_hub import CommitInfo, HfApi, ModelCard, hf_hub_download, snapshot_download
from PIL import Image

from hf_ddpm.models.unet_2d import DDPMUNet2DModel
from hf_ddpm.pipelines.hub import upload_pipeline_folder
from hf_ddpm.pipelines.model_card import write_model_card
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


def hf_ddpm_modules(index: dict) -> list[str]:
    """The re-export modules a custom-component `model_index.json` points at (none for diffusers' own layout)."""
    modules = [f"{index['_class_name'][0]}.py"] if isinstance(index["_class_name"], list) else []
    for name, entry in index.items():
        if not name.startswith("_") and entry[0] not in ("diffusers", None):
            modules.append(f"{name}/{entry[0]}.py")
    return modules


def test_push_to_hub_uploads_the_loadable_folder_a_model_card_and_a_sample_grid(pushed, hub_server, tmp_path):
    repo_id, commit = pushed
    info = HfApi().model_info(repo_id)
    assert info.sha == commit.oid
    files = {s.rfilename for s in info.siblings}
    index = json.loads(open(hf_hub_download(repo_id, "model_index.json"), encoding="utf-8").read())
    assert {
        "README.md",
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
        "scheduler/scheduler_config.json",
        "images/samples.png",
        *hf_ddpm_modules(index),
    } <= files
    assert not any(f.endswith((".bin", ".pt", ".pkl")) for f in files)
    assert hf_ddpm_modules(index) == []  # diffusers' own layout: no code to trust
    # Weights went through the LFS protocol, as on the real Hub.
    assert hub_server.file_entry(repo_id, "unet/diffusion_pytorch_model.safetensors").lfs_sha256

    card = open(hf_hub_download(repo_id, "README.md"), encoding="utf-8").read()
    assert f'DDPMPipeline.from_pretrained("{repo_id}")' in card
    remote = f'DiffusionPipeline.from_pretrained("{repo_id}", trust_remote_code=True)' in card
    assert remote == bool(hf_ddpm_modules(index))  # remote code exactly when the layout needs it
    assert "| learning_rate | 0.0002 |" in card and "| fid | 99.5 |" in card
    assert ModelCard(card).data.datasets == ["ylecun/mnist"]  # the local dataset path was dropped
    assert ModelCard(card).data.license is None  # none was given
    assert os.environ["HF_TOKEN"] not in card
    assert str(tmp_path) not in card and os.environ["HF_HOME"] not in card and "/tmp" not in card


def test_push_to_hub_prints_the_repo_url_and_returns_the_commit(hub_server, hub_repo_id, ddpm_pipe, capsys):
    commit = ddpm_pipe.push_to_hub(hub_repo_id, sample_grid=False, license="mit")
    assert isinstance(commit, CommitInfo) and commit.oid == HfApi().model_info(hub_repo_id).sha
    assert f"{hub_server.endpoint}/{hub_repo_id}" in capsys.readouterr().out
    assert "images/samples.png" not in HfApi().list_repo_files(hub_repo_id)
    assert ModelCard.load(hub_repo_id).data.license == "mit"


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


def python_blocks(text: str) -> list[str]:
    return [block.split("```")[0] for block in text.split("```python\n")[1:]]


def test_the_cards_snippets_run_as_written(pushed, hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    # Both layouts: what push_to_hub writes, and diffusers' own layout (stock classes only).
    stock_repo = hub_repo_id + "-stock"
    ddpm_pipe.to_diffusers().save_pretrained(tmp_path / "stock")
    upload_pipeline_folder(ddpm_pipe, tmp_path / "stock", stock_repo, sample_grid=False)
    for repo_id in (pushed[0], stock_repo):
        blocks = python_blocks(Path(hf_hub_download(repo_id, "README.md")).read_text(encoding="utf-8"))
        assert len(blocks) == 2  # load with diffusers; hf_ddpm's extras
        for code in blocks:
            namespace = {}
            exec(compile(code, f"{repo_id}/README.md", "exec"), namespace)
            assert len(namespace["images"]) == 4
        assert len(namespace["frames"]) == 8


def test_save_pretrained_with_push_to_hub_uploads_too(hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path, push_to_hub=True, repo_id=hub_repo_id)
    files = set(HfApi().list_repo_files(hub_repo_id))
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert {"README.md", "model_index.json", "unet/config.json", *hf_ddpm_modules(index)} <= files


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


def downloaded(hub_server, repo_id: str, load) -> set[str]:
    """The repo files `load()` GETs from the local Hub (their contents, not only their metadata)."""
    start = len(hub_server.request_log)
    load()
    marker = f"/{repo_id}/resolve/"
    requests = hub_server.request_log[start:]
    return {r.path.split(marker)[1].split("/", 1)[1] for r in requests if r.method == "GET" and marker in r.path}


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_a_repo_with_fp32_and_fp16_weights_costs_one_set_of_weights_as_with_diffusers(
    hub_server, hub_repo_id, ddpm_pipe, tmp_path, variant
):
    ddpm_pipe.save_pretrained(tmp_path / "repo")
    copy.deepcopy(ddpm_pipe.unet).half().save_pretrained(tmp_path / "repo" / "unet", variant="fp16")
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=tmp_path / "repo")

    def weights(files):
        return {f for f in files if f.startswith("unet/diffusion_pytorch_model")}

    ours = downloaded(
        hub_server,
        hub_repo_id,
        lambda: DDPMPipeline.from_pretrained(hub_repo_id, variant=variant, cache_dir=tmp_path / "ours"),
    )
    stock = downloaded(
        hub_server,
        hub_repo_id,
        lambda: diffusers.DiffusionPipeline.from_pretrained(
            hub_repo_id, variant=variant, cache_dir=tmp_path / "stock"
        ),
    )
    expected = (
        "unet/diffusion_pytorch_model.fp16.safetensors" if variant else "unet/diffusion_pytorch_model.safetensors"
    )
    assert weights(stock) == {expected}  # the oracle: what diffusers fetches
    assert weights(ours) == {expected}


def test_a_repo_id_with_a_unet_passed_in_downloads_no_weights(hub_server, hub_repo_id, ddpm_pipe):
    ddpm_pipe.push_to_hub(hub_repo_id)
    fetched = downloaded(
        hub_server, hub_repo_id, lambda: DDPMPipeline.from_pretrained(hub_repo_id, unet=ddpm_pipe.unet)
    )
    assert "model_index.json" in fetched
    assert not any(f.endswith(".safetensors") for f in fetched)


def test_a_missing_variant_on_the_hub_is_refused_before_any_weights_are_downloaded(hub_server, hub_repo_id, ddpm_pipe):
    ddpm_pipe.push_to_hub(hub_repo_id)
    start = len(hub_server.request_log)
    with pytest.raises(ValueError, match=r"`variant=fp16`, but no such modeling files .*unet/diffusion_pytorch_model"):
        DDPMPipeline.from_pretrained(hub_repo_id, variant="fp16")
    assert not [r for r in hub_server.request_log[start:] if "/resolve/" in r.path and r.path.endswith(".safetensors")]


def test_a_repo_with_only_fp16_weights_asks_for_the_variant(hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path, variant="fp16")
    HfApi().create_repo(hub_repo_id)
    HfApi().upload_folder(repo_id=hub_repo_id, folder_path=tmp_path)
    for where in (hub_repo_id, tmp_path):
        with pytest.raises(ValueError, match=r"no plain UNet weights .*fp16.safetensors.*variant='fp16'"):
            DDPMPipeline.from_pretrained(where)
    torch.testing.assert_close(
        DDPMPipeline.from_pretrained(hub_repo_id, variant="fp16").unet.state_dict(), ddpm_pipe.unet.state_dict()
    )


# ------------------------------------------------------------------------------------ pushes of a trained folder
TRAINING_ARGS = {
    "learning_rate": 2e-4,
    "use_ema": False,
    "ema_max_decay": 0.9999,
    "max_train_steps": 5000,
    "global_step": 2,
    "train_data_dir": "/home/someone/faces",
    "num_train_images": 120,
    "eval_batch_size": 4,
    "num_inference_steps": 10,
    "seed": 0,
}


@pytest.fixture
def trained_folder(ddpm_pipe, tmp_path):
    """A folder as training leaves it: the pipeline, its card and summary, sample grids, a checkpoint and logs."""
    folder = tmp_path / "run"
    ddpm_pipe.save_pretrained(folder)
    (folder / "samples").mkdir()
    Image.new("RGB", (16, 16), "red").save(folder / "samples" / "step-0000002.png")
    (folder / "checkpoint-2").mkdir()
    (folder / "checkpoint-2" / "optimizer.bin").write_bytes(b"state")
    (folder / "logs").mkdir()
    (folder / "logs" / f"events.out.tfevents.1.{socket.gethostname()}").write_bytes(b"log")
    write_model_card(folder, ddpm_pipe, training_args=TRAINING_ARGS)
    return folder


def assert_card_renders(repo_id: str) -> str:
    """The pushed README.md: valid front matter, and every image it shows is a file of the repo."""
    path = hf_hub_download(repo_id, "README.md")
    ModelCard.load(path)  # raises on front matter that is not valid YAML
    text = Path(path).read_text(encoding="utf-8")
    links = [part.split(")")[0] for part in text.split("![samples](")[1:]]
    assert links and set(links) <= set(HfApi().list_repo_files(repo_id))
    return text


def test_pushing_a_trained_folder_again_keeps_its_table_data_and_grid(hub_server, hub_repo_id, trained_folder):
    DDPMPipeline.from_pretrained(trained_folder).push_to_hub(hub_repo_id)
    card = assert_card_renders(hub_repo_id)
    assert "| learning_rate | 0.0002 |" in card and "| global_step | 2 |" in card
    assert "ema_max_decay" not in card and "max_train_steps" not in card  # EMA was off; the maximum did not run
    assert "Trained on an image folder of 120 images." in card
    grid = Path(hf_hub_download(hub_repo_id, "images/samples.png")).read_bytes()
    assert grid == (trained_folder / "samples" / "step-0000002.png").read_bytes()  # training's grid, none drawn


def test_upload_of_a_training_folder_leaves_checkpoints_logs_and_grids_local(
    hub_server, hub_repo_id, ddpm_pipe, trained_folder
):
    upload_pipeline_folder(ddpm_pipe, trained_folder, hub_repo_id)
    files = HfApi().list_repo_files(hub_repo_id)
    assert "training_summary.json" in files and "images/samples.png" in files
    assert not any(f.startswith(("checkpoint-", "logs/", "samples/")) for f in files)
    assert "| global_step | 2 |" in assert_card_renders(hub_repo_id)


def test_a_hand_written_readme_is_uploaded_as_it_is(hub_server, hub_repo_id, ddpm_pipe, tmp_path):
    ddpm_pipe.save_pretrained(tmp_path)
    (tmp_path / "README.md").write_text("---\nlicense: mit\n---\n# My model\n")
    upload_pipeline_folder(ddpm_pipe, tmp_path, hub_repo_id)
    assert Path(hf_hub_download(hub_repo_id, "README.md")).read_text() == "---\nlicense: mit\n---\n# My model\n"


def test_upload_of_a_folder_without_a_pipeline_is_refused_before_any_call(
    hub_server, hub_repo_id, ddpm_pipe, tmp_path
):
    with pytest.raises(ValueError, match="holds no model_index.json"):
        upload_pipeline_folder(ddpm_pipe, tmp_path, hub_repo_id)
    assert not HfApi().repo_exists(hub_repo_id)


def test_nothing_local_or_secret_reaches_any_pushed_file(hub_server, hub_repo_id, trained_folder, tmp_path):
    token = "push-token-" + "q" * 30  # the local Hub accepts any token; not token-shaped, so only known by value
    pipe = DDPMPipeline.from_pretrained(trained_folder)  # diffusers records the folder as _name_or_path
    note = f"token hf_abcdefghijklmnopqrstuvwxyz, pushed with {token} from {trained_folder}"
    note += f" by {getpass.getuser()} on {socket.gethostname()}"
    pipe.push_to_hub(hub_repo_id, token=token, training_args={**TRAINING_ARGS, "note": note})

    local = snapshot_download(hub_repo_id, cache_dir=tmp_path / "download")
    secrets = [str(trained_folder), str(tmp_path), "/home/someone", token, "hf_abcdefghijklm", os.environ["HF_TOKEN"]]
    patterns = [re.escape(s) for s in secrets]
    # This machine's names as words: a short host name ("vm") may be part of an ordinary word.
    patterns += [
        rf"(?<![A-Za-z0-9]){re.escape(name)}(?![A-Za-z0-9])" for name in (getpass.getuser(), socket.gethostname())
    ]
    files = [p for p in Path(local).rglob("*") if p.is_file()]
    assert {"README.md", "training_summary.json", "model_index.json", "unet/config.json"} <= {
        p.relative_to(local).as_posix() for p in files
    }
    for path in files:
        data = path.read_bytes()
        if path.suffix == ".png":
            continue
        if path.suffix == ".safetensors":  # weights are numbers; only the JSON header is text
            data = data[8 : 8 + int.from_bytes(data[:8], "little")]
        text = data.decode("utf-8")
        for pattern in patterns:
            assert not re.search(pattern, text), f"{path.relative_to(local)} matches {pattern!r}"
    assert "[redacted]" in Path(local, "README.md").read_text()
