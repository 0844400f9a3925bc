"""Faults across processes: a launcher whose processes Accelerate does not join, a process killed mid-run, and two
"machines" on one host (gloo on the CPU)."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from hf_ddpm.training.args import parse_args
from hf_ddpm.training.loop import train

REPO_ROOT = Path(__file__).resolve().parents[2]
DDP_TIMEOUT = 30  # seconds, for the runs a test kills a process of


def test_several_launched_processes_that_accelerate_runs_alone_stop_at_once(
    tmp_path, image_dataset, tiny_flags, monkeypatch
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(RuntimeError, match=r"WORLD_SIZE=2.*alone.*ACCELERATE_USE_CPU=1"):
        train(parse_args(tiny_flags(tmp_path / "out", "--max_train_steps", "1")), dataset=image_dataset)
    assert not (tmp_path / "out").exists()  # stopped before writing anything


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with GPUs --multi_gpu runs as asked")
def test_multi_gpu_launch_on_cpus_without_accelerate_use_cpu_stops_every_process(tmp_path, tiny_flags):
    # Each process would see itself alone (Accelerate finds no GPU) and train its own copy into one folder.
    images = _image_folder(tmp_path / "images")
    flags = tiny_flags(tmp_path / "out", "--train_data_dir", str(images), "--max_train_steps", "2")
    _, err = _launch(flags, tmp_path, use_cpu=False).communicate(timeout=600)
    assert err.count("RuntimeError: WORLD_SIZE=2") == 2, err[-3000:]
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def _image_folder(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(16):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(flags: list[str], cwd: Path, *launcher: str, use_cpu: bool = True) -> subprocess.Popen:
    """`accelerate launch` of examples/train.py on gloo; `launcher` defaults to 1 machine × 2 processes."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    if use_cpu:
        env["ACCELERATE_USE_CPU"] = "1"
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        *(launcher or ("--num_processes", "2", "--num_machines", "1")),
        *("--mixed_precision", "no", "--dynamo_backend", "no"),
        str(REPO_ROOT / "examples" / "train.py"),
        *flags,
    ]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(process: subprocess.Popen, timeout: float = 900) -> str:
    _, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err[-4000:]
    return err


def _rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "train.py" in " ".join(child.cmdline()):
                return child.pid
        except psutil.Error:
            continue
    return None


def _final_weights(out: Path, step: int) -> dict[str, torch.Tensor]:
    return {
        f"{sub}.{k}": v
        for sub in ("unet", "unet_ema")
        for k, v in load_file(out / f"checkpoint-{step}" / sub / "diffusion_pytorch_model.safetensors").items()
    }


def _assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def _kill_rank_when(launcher: subprocess.Popen, out: Path, checkpoint: str, rank: int) -> float:
    """SIGKILL the process of `rank` under `launcher` once `out/checkpoint` exists; returns the clock at the kill."""
    while not (out / checkpoint).is_dir():
        assert launcher.poll() is None, "the run ended before the process could be killed: make it longer"
        time.sleep(0.05)
    pid = _rank_pid(launcher, rank)
    assert pid is not None, f"no process of rank {rank} under the launcher"
    os.kill(pid, signal.SIGKILL)
    return time.perf_counter()


def _seconds_to_exit(process: subprocess.Popen, since: float) -> tuple[float, str]:
    _, err = process.communicate(timeout=DDP_TIMEOUT + 120)
    return time.perf_counter() - since, err


@pytest.mark.slow
def test_a_killed_process_stops_the_run_and_latest_resumes_it_bit_for_bit(tmp_path, tiny_flags):
    images = _image_folder(tmp_path / "images")
    total = 40
    common = ["--train_data_dir", str(images), "--checkpointing_steps", "4", "--ddp_timeout", str(DDP_TIMEOUT)]
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    flags = [*common, "--max_train_steps", str(total)]
    _finish(_launch(tiny_flags(straight, *flags), tmp_path))

    launcher = _launch(tiny_flags(interrupted, *flags), tmp_path)
    seconds, err = _seconds_to_exit(launcher, _kill_rank_when(launcher, interrupted, "checkpoint-8", rank=1))
    print(f"the launcher exited {seconds:.1f} s after rank 1 was killed (--ddp_timeout {DDP_TIMEOUT})")
    assert launcher.returncode != 0 and "SIGKILL" in err, err[-3000:]
    assert seconds < DDP_TIMEOUT + 60
    assert not (interrupted / "model_index.json").exists()

    _finish(_launch(tiny_flags(interrupted, *flags, "--resume_from_checkpoint", "latest"), tmp_path))
    _assert_bit_identical(_final_weights(straight, total), _final_weights(interrupted, total))


def _two_machines(flags: list[str], cwd: Path) -> list[subprocess.Popen]:
    port = str(_free_port())
    return [
        _launch(
            flags,
            cwd,
            *("--num_processes", "2", "--num_machines", "2", "--machine_rank", str(rank)),
            *("--main_process_ip", "127.0.0.1", "--main_process_port", port),
        )
        for rank in (0, 1)
    ]


@pytest.mark.slow
def test_two_machines_of_one_process_train_as_one_machine_of_two(tmp_path, tiny_flags):
    images = _image_folder(tmp_path / "images")
    flags = ["--train_data_dir", str(images), "--checkpointing_steps", "4", "--max_train_steps", "8"]
    one, two = tmp_path / "one", tmp_path / "two"
    _finish(_launch(tiny_flags(one, *flags), tmp_path))
    for machine in _two_machines(tiny_flags(two, *flags), tmp_path):
        _finish(machine)
    _assert_bit_identical(_final_weights(one, 8), _final_weights(two, 8))


@pytest.mark.slow
def test_a_killed_machine_stops_the_other_within_the_collective_timeout(tmp_path, tiny_flags):
    # Across machines no launcher sees the other machine's process die: only the collective's own error or its
    # timeout (--ddp_timeout) can stop the survivor.
    images = _image_folder(tmp_path / "images")
    out = tmp_path / "out"
    flags = ["--train_data_dir", str(images), "--checkpointing_steps", "4", "--max_train_steps", "400"]
    machines = _two_machines(tiny_flags(out, *flags, "--ddp_timeout", str(DDP_TIMEOUT)), tmp_path)
    killed = _kill_rank_when(machines[1], out, "checkpoint-8", rank=1)
    seconds, err = _seconds_to_exit(machines[0], killed)
    machines[1].communicate(timeout=120)
    print(f"machine 0 exited {seconds:.1f} s after machine 1's process was killed (--ddp_timeout {DDP_TIMEOUT})")
    print(err[-1500:])
    assert machines[0].returncode != 0
    assert seconds < DDP_TIMEOUT + 60, err[-3000:]
