"""The writers of the table rows: Markdown, CSV, PNG."""

from __future__ import annotations

import csv

from hf_ddpm.evaluation.report import markdown_table, plot_tables, quality_cell, write_csv
from hf_ddpm.evaluation.tables import quality_pivot


def test_rows_are_written_as_markdown_csv_and_png(tmp_path):
    quality = [
        {"spacing": sp, "sampler": sa, "eta": 0.0, "steps": s, "metric": "fid", "value": v}
        for sp in ("linear", "quadratic")
        for sa in ("eta=0", "sigma_hat")
        for s, v in ((10, 13.36), (100, 4.16))
    ]
    reconstruction = [{"steps": s, "spacing": "linear", "mse_per_dim": m} for s, m in ((10, 0.014), (100, 9e-4))]
    text = markdown_table(quality_pivot(quality))
    assert text.splitlines()[0] == "| spacing | sampler | S=10 | S=100 |"
    assert "| linear | eta=0 | 13.36 | 4.16 |" in text and len(text.splitlines()) == 2 + 4
    assert "| 100 | linear | 9.00e-04 |" in markdown_table(reconstruction)

    write_csv(quality, tmp_path / "t1.csv")
    with open(tmp_path / "t1.csv") as f:
        back = list(csv.DictReader(f))
    assert len(back) == 8 and back[1]["value"] == "4.16" and back[0]["spacing"] == "linear"

    plot_tables(quality, reconstruction, tmp_path / "plot.png", title="test")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_package_exports_each_module_public_api():
    import importlib

    import hf_ddpm.evaluation as evaluation

    for name in ("digit_features", "digits", "fid", "likelihood", "report", "tables"):
        module = importlib.import_module(f"hf_ddpm.evaluation.{name}")
        for public in module.__all__:
            assert getattr(evaluation, public) is getattr(module, public), (name, public)
    assert callable(evaluation.fid) and callable(evaluation.markdown_table)


def test_quality_cells_show_fdd_with_its_error_precision_and_recall():
    fdd = {"spacing": "linear", "sampler": "eta=0", "steps": 10, "value": 12.345, "std_error": 0.5}
    fdd |= {"precision": 0.812, "recall": 0.5}
    proxy = {"spacing": "linear", "sampler": "eta=0", "steps": 10, "value": 0.72}
    assert quality_cell(fdd) == "12.35 ± 0.5 (P 0.81, R 0.50)"
    assert quality_cell(proxy) == 0.72
    assert quality_pivot([fdd], quality_cell) == [{"spacing": "linear", "sampler": "eta=0", "S=10": quality_cell(fdd)}]
