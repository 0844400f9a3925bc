"""Writers for the rows of `hf_ddpm.evaluation.tables`: Markdown, CSV and PNGs of the curves."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from typing import Any

__all__ = ["markdown_table", "plot_solver_table", "plot_tables", "quality_cell", "write_csv"]


def _format(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return "" if value is None else str(value)


def quality_cell(row: dict) -> Any:
    """A Table 1 cell: the value, or for FDD rows "FDD ± standard error (P precision, R recall)"."""
    if "std_error" not in row:
        return row["value"]
    return f"{_format(row['value'])} ± {_format(row['std_error'])} (P {row['precision']:.2f}, R {row['recall']:.2f})"


def _columns(rows: list[dict]) -> list[str]:
    """Every key of `rows`, in first-seen order."""
    return list(dict.fromkeys(key for row in rows for key in row))


def markdown_table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A GitHub Markdown table of `rows` (columns: `columns`, or every key in first-seen order)."""
    if not rows:
        return ""
    columns = _columns(rows) if columns is None else list(columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_format(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: str | os.PathLike) -> None:
    """Write `rows` as CSV (columns: every key in first-seen order)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=_columns(rows))
        writer.writeheader()
        writer.writerows(rows)


def _plot_quality(ax, rows: list[dict], spacing: str) -> None:
    """Quality vs S for one spacing, a line per sampler (DDIM Fig. 3)."""
    for sampler in dict.fromkeys(r["sampler"] for r in rows):
        points = sorted((r["steps"], r["value"]) for r in rows if r["sampler"] == sampler)
        ax.plot(*zip(*points), marker="o", label=sampler)
    ax.set(xscale="log", xlabel="steps S", ylabel=rows[0]["metric"], title=f"{spacing} spacing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)


def _plot_reconstruction(ax, rows: list[dict]) -> None:
    points = sorted((r["steps"], r["mse_per_dim"]) for r in rows)
    ax.plot(*zip(*points), marker="o", color="k")
    ax.set(xscale="log", yscale="log", xlabel="steps S", ylabel="MSE per dim ([0, 1] scale)")
    ax.set_title(f"DDIM encode→decode ({rows[0]['spacing']})")
    ax.grid(alpha=0.3)


def plot_tables(
    quality_rows: list[dict], reconstruction_rows: list[dict], path: str | os.PathLike, title: str = ""
) -> None:
    """
    One PNG: a panel of quality vs S per spacing (a line per sampler, as DDIM Fig. 3) and reconstruction MSE vs S.

    Args:
        quality_rows (`list[dict]`): from `sample_quality_table` (may be empty).
        reconstruction_rows (`list[dict]`): from `reconstruction_table` (may be empty).
        path (`str` or `os.PathLike`): the PNG to write.
        title (`str`, *optional*, defaults to `""`): figure title (e.g. the model and the machine).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    spacings = list(dict.fromkeys(row["spacing"] for row in quality_rows))
    panels = max(len(spacings) + (1 if reconstruction_rows else 0), 1)
    fig, axes = plt.subplots(1, panels, figsize=(4.5 * panels, 3.8), squeeze=False)
    for ax, spacing in zip(axes[0], spacings):
        _plot_quality(ax, [r for r in quality_rows if r["spacing"] == spacing], spacing)
    if reconstruction_rows:
        _plot_reconstruction(axes[0][len(spacings)], reconstruction_rows)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_solver_table(rows: list[dict], path: str | os.PathLike, title: str = "") -> None:
    """
    One PNG of `solver_table` rows: quality against the counted network evaluations, a line per sampler (with
    ± standard-error bars where the metric has them), and the reference as a horizontal line.

    Args:
        rows (`list[dict]`): from `solver_table`.
        path (`str` or `os.PathLike`): the PNG to write.
        title (`str`, *optional*, defaults to `""`): figure title (e.g. the model).
    """
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for sampler in dict.fromkeys(r["sampler"] for r in rows if not r["reference"]):
        points = sorted({(r["nfe"], r["value"], r.get("std_error") or 0.0) for r in rows if r["sampler"] == sampler})
        nfe, value, error = zip(*points)
        ax.errorbar(nfe, value, yerr=error, marker="o", capsize=2, label=sampler)
    for ref in (r for r in rows if r["reference"]):
        ax.axhline(ref["value"], color="k", linestyle="--", label=f"{ref['sampler']} ({ref['nfe']} NFE)")
    ax.set(xscale="log", xlabel="network evaluations (NFE)", ylabel=rows[0]["metric"] if rows else "")
    ax.set_xticks(sorted({r["nfe"] for r in rows}), [str(n) for n in sorted({r["nfe"] for r in rows})])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
