"""examples/evaluate.py end to end on a tiny saved pipeline: flags → tables → Markdown, CSV, PNG."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from example_scripts import load_example, save_tiny_pipeline


@pytest.fixture
def tiny_pipeline_dir(tmp_path) -> Path:
    return save_tiny_pipeline(tmp_path / "pipe", num_train_timesteps=10)


def test_flags_parse_lists_and_reject_unknown_tables():
    script = load_example("evaluate")
    args = script.parse_args(["--pretrained", "x", "--steps", "10,20", "--etas", "0,0.5", "--spacings", "quadratic"])
    assert args.steps == [10, 20] and args.etas == [0.0, 0.5] and args.spacings == ["quadratic"]
    assert (
        args.metric == "digits" and args.nll_timesteps is None and args.tables == ["quality", "reconstruction", "nll"]
    )
    with pytest.raises(SystemExit):
        script.parse_args(["--pretrained", "x", "--tables", "nll,inception"])
    assert script.parse_args(["--pretrained", "x", "--metric", "fdd"]).metric == "fdd"


@pytest.mark.slow  # ~20 s on the shared CPU (loading the offline digits dominates)
def test_script_writes_markdown_csv_and_plot(tiny_pipeline_dir, tmp_path):
    out = tmp_path / "eval"
    load_example("evaluate").main(
        ["--pretrained", str(tiny_pipeline_dir), "--output_dir", str(out), "--tables", "nll,reconstruction",
         "--num_eval_images", "4", "--nll_timesteps", "4", "--reconstruction_steps", "2,10", "--num_threads", "1"]
    )  # fmt: skip
    for name in ("nll.md", "nll.csv", "table2_reconstruction.md", "table2_reconstruction.csv", "tables.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "table2_reconstruction.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["steps"]) for r in rows] == [2, 10] and all(float(r["mse_per_dim"]) >= 0 for r in rows)
    with open(out / "nll.csv") as f:
        (nll,) = list(csv.DictReader(f))
    # A random tiny UNet is a poor model of digits, but its bound is a finite positive number of bits/dim.
    assert int(nll["num_images"]) == 4 and 0 < float(nll["bits_per_dim"]) < 1e4
    results = (out / "results.md").read_text()
    assert "Command: `python examples/evaluate.py --pretrained" in results and "Machine:" in results


@pytest.mark.slow  # trains the 8 px digit classifier (the tiny model's size) into a temporary cache
def test_script_writes_the_fdd_quality_table(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DDPM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    load_example("evaluate").main(
        ["--pretrained", str(tiny_pipeline_dir), "--output_dir", str(out), "--tables", "quality", "--metric", "fdd",
         "--steps", "2,10", "--etas", "0", "--no_sigma_hat", "--spacings", "linear", "--num_samples", "16",
         "--num_threads", "1"]
    )  # fmt: skip
    with open(out / "table1_quality.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["metric"], int(r["steps"])) for r in rows] == [("fdd", 2), ("fdd", 10)]
    assert all(float(r["value"]) > 0 and 0 <= float(r["recall"]) <= 1 for r in rows)
    assert " ± " in (out / "table1_quality.md").read_text() and (out / "tables.png").stat().st_size > 0
    assert "Fréchet digit distance" in (out / "results.md").read_text()


def test_solver_flags_parse_and_reject_unknown_samplers():
    script = load_example("evaluate")
    args = script.parse_args(
        ["--pretrained", "x", "--tables", "solvers", "--nfes", "5,10", "--samplers", "heun,unipc"]
    )
    assert args.tables == ["solvers"] and args.nfes == [5, 10] and args.samplers == ["heun", "unipc"]
    defaults = script.parse_args(["--pretrained", "x"])
    assert defaults.nfes == [5, 10, 20, 50] and "dpmsolver++_2m" in defaults.samplers
    assert defaults.solver_spacing == "trailing" and "solvers" not in defaults.tables
    with pytest.raises(SystemExit):
        script.parse_args(["--pretrained", "x", "--samplers", "heun,rk45"])


@pytest.mark.slow  # trains the 8 px digit classifier into a temporary cache, then ~20 FDD cells
def test_script_writes_the_solver_table(tiny_pipeline_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DDPM_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval"
    load_example("evaluate").main(
        ["--pretrained", str(tiny_pipeline_dir), "--output_dir", str(out), "--tables", "solvers", "--metric", "fdd",
         "--nfes", "3,5", "--samplers", "ddim_linear,heun", "--num_samples", "16", "--num_threads", "1"]
    )  # fmt: skip
    with open(out / "solver_table.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["sampler"], int(r["steps"]), int(r["nfe"])) for r in rows] == [
        ("ddim_linear", 3, 3), ("ddim_linear", 5, 5), ("heun", 2, 3), ("heun", 3, 5), ("ddpm_10", 10, 10)
    ]  # fmt: skip
    assert all(float(r["value"]) > 0 and float(r["std_error"]) > 0 for r in rows)
    with open(out / "solver_summary.csv") as f:
        assert [r["sampler"] for r in csv.DictReader(f)] == ["ddim_linear", "heun"]
    results = (out / "results.md").read_text()
    assert "NFE ≤ 3" in results and "2 √(se² + se_ref²)" in results and "No sampler clips" in results
    assert (out / "solvers.png").stat().st_size > 0
