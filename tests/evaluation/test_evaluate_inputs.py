"""examples/evaluate.py refuses every bad flag with a message naming it, before any sampling or table starts.

To cover a new bad flag, add a row: (extra argv, where it is refused, words the message must contain). "flag" rows
are refused by argparse (exit 2, message on stderr); "model" rows by the check against the loaded pipeline
(ValueError).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from example_scripts import load_example, save_tiny_pipeline

T = 10


class WorkStarted(Exception):
    """Raised by the stand-ins for the expensive steps: the script got past its checks."""


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pipelines")
    return {
        "gray": save_tiny_pipeline(folder / "gray", num_train_timesteps=T, in_channels=1, out_channels=1),
        "colour": save_tiny_pipeline(folder / "colour", num_train_timesteps=T),
    }


@pytest.fixture
def script(monkeypatch):
    module = load_example("evaluate")

    def no_work(*args, **kwargs):
        raise WorkStarted

    for name in ("nll_table", "reconstruction_table", "sample_quality_table"):
        monkeypatch.setattr(module.tables, name, no_work)
    monkeypatch.setattr(module, "held_out_images", no_work)
    monkeypatch.setattr(module, "fid_reference", no_work)
    return module


# (id, extra argv, pipeline, "flag" or "model", words in the message)
BAD_FLAGS = [
    ("num_samples 0", ["--num_samples", "0"], "gray", "flag", ["--num_samples", ">= 1", "'0'"]),
    ("num_samples negative", ["--num_samples", "-3"], "gray", "flag", ["--num_samples", "'-3'"]),
    ("num_eval_images 0", ["--num_eval_images", "0"], "gray", "flag", ["--num_eval_images", ">= 1"]),
    ("batch_size 0", ["--batch_size", "0"], "gray", "flag", ["--batch_size", ">= 1", "'0'"]),
    ("batch_size text", ["--batch_size", "many"], "gray", "flag", ["--batch_size", "'many'"]),
    ("num_threads negative", ["--num_threads", "-1"], "gray", "flag", ["--num_threads", "'-1'"]),
    ("nll_timesteps 0", ["--nll_timesteps", "0"], "gray", "flag", ["--nll_timesteps", ">= 1"]),
    ("steps 0", ["--steps", "0,10"], "gray", "flag", ["--steps", "integers >= 1", "'0,10'"]),
    ("steps empty", ["--steps", ","], "gray", "flag", ["--steps", "integers >= 1"]),
    ("steps not ints", ["--steps", "10,2.5"], "gray", "flag", ["--steps", "'10,2.5'"]),
    ("reconstruction_steps negative", ["--reconstruction_steps", "-1"], "gray", "flag", ["--reconstruction_steps"]),
    ("etas negative", ["--etas", "0,-0.5"], "gray", "flag", ["--etas", ">= 0", "'0,-0.5'"]),
    ("etas nan", ["--etas", "nan"], "gray", "flag", ["--etas", "finite"]),
    ("device unknown", ["--device", "tpu:7"], "gray", "flag", ["--device", "tpu:7"]),
    ("output_dir is a file", ["--output_dir", "{file}"], "gray", "flag", ["--output_dir", "is a file"]),
    ("output_dir under a file", ["--output_dir", "{file}/eval"], "gray", "flag", ["--output_dir", "is a file"]),
    ("nll_timesteps above T - 1", ["--tables", "nll", "--nll_timesteps", "5000"], "gray", "model",
     ["--nll_timesteps 5000", "T − 1 = 9", "1..9"]),
    ("nll_timesteps T", ["--tables", "nll", "--nll_timesteps", str(T)], "gray", "model", ["--nll_timesteps 10"]),
    ("steps above T", ["--tables", "quality", "--steps", "2,1000"], "gray", "model",
     ["--steps [1000]", "num_train_timesteps = 10", "1..10"]),
    ("reconstruction_steps above T", ["--tables", "reconstruction", "--reconstruction_steps", "11"], "gray", "model",
     ["--reconstruction_steps [11]", "1..10"]),
    ("unknown spacing", ["--spacings", "linear,cubic"], "gray", "model", ["'cubic'", "quadratic"]),
    ("unknown reconstruction spacing", ["--reconstruction_spacing", "log"], "gray", "model", ["'log'"]),
    ("digits metric on colour", ["--tables", "quality", "--metric", "digits"], "colour", "model",
     ["--metric digits", "3 channels"]),
    ("fdd metric on colour", ["--tables", "quality", "--metric", "fdd"], "colour", "model",
     ["--metric fdd", "3 channels"]),
    ("eval_data_dir missing", ["--tables", "nll", "--eval_data_dir", "{missing}"], "gray", "model",
     ["--eval_data_dir", "not a folder"]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "pipeline", "where", "words"), [row[1:] for row in BAD_FLAGS], ids=[row[0] for row in BAD_FLAGS]
)
def test_bad_flag_is_refused_before_any_work(script, pipelines, tmp_path, capsys, argv, pipeline, where, words):
    (tmp_path / "a_file").write_text("")
    places = {"file": tmp_path / "a_file", "missing": tmp_path / "missing"}
    argv = [a.format(**places) for a in argv]
    command = ["--pretrained", str(pipelines[pipeline]), "--output_dir", str(tmp_path / "eval"), *argv]
    if where == "flag":
        with pytest.raises(SystemExit) as raised:
            script.main(command)
        assert raised.value.code == 2
        message = capsys.readouterr().err
    else:
        with pytest.raises(ValueError) as raised:
            script.main(command)
        message = str(raised.value)
    for word in words:
        assert word in message, (word, message)


@pytest.mark.parametrize(
    ("argv", "pipeline"),
    [
        (["--tables", "nll", "--nll_timesteps", str(T - 1)], "gray"),
        (["--tables", "reconstruction", "--reconstruction_steps", f"1,{T}"], "gray"),
        (["--tables", "quality", "--steps", f"1,{T}", "--metric", "fdd", "--etas", "0,1.5"], "gray"),
        (["--tables", "quality", "--steps", "2", "--metric", "fid"], "colour"),  # FID takes colour images
        (
            ["--tables", "nll,reconstruction", "--reconstruction_steps", "2"],
            "colour",
        ),  # no digit scoring: any channel count
    ],
)
def test_flags_within_the_model_s_range_reach_the_work(script, pipelines, tmp_path, argv, pipeline):
    with pytest.raises(WorkStarted):
        script.main(["--pretrained", str(pipelines[pipeline]), "--output_dir", str(tmp_path / "eval"), *argv])
