"""The safety-subspaces report: rich tables, CSV/JSON files and PNG curves (spec 18).

`write_report(out_dir, results)` writes, from the dict `recipes.safety_subspaces.analyse` builds:

- ``projection_eval.csv``: utility and harmfulness of every projected model (fine-tune x mode x frac) and of the
  reference models (base, aligned, each full fine-tune);
- ``projection_tensors.csv`` / ``projection_layers.csv``: energy kept and (correct) cosine per tensor / per layer;
- ``mso_weight_tensors.csv`` / ``mso_weight_layers.csv``: weight-space MSO per tensor / per layer and eta, with the
  random baseline; ``mso_activation.csv``: activation-space MSO per layer and eta;
- ``report.json`` (everything above plus the settings), ``mso_curves.png`` (MSO vs eta with the random baseline),
  ``projection_curves.png`` (utility and harmfulness vs frac for each mode, reference levels dashed).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from rich.console import Console
from rich.table import Table

TABLE_FILES = {
    "projection_eval": "projection_eval.csv",
    "projection_tensors": "projection_tensors.csv",
    "projection_layers": "projection_layers.csv",
    "mso_weight_tensors": "mso_weight_tensors.csv",
    "mso_weight_layers": "mso_weight_layers.csv",
    "mso_activation": "mso_activation.csv",
}
"""Result key -> CSV file name."""


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Rows (dicts) as a CSV with the union of their keys as columns, in first-seen order."""
    path = Path(path)
    columns: list[str] = []
    for r in rows:
        columns += [k for k in r if k not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def rows_table(rows: Sequence[dict], columns: Sequence[str], title: str) -> Table:
    """A rich Table of `columns` of `rows` (floats with 3 decimals)."""
    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="left" if c in ("model", "finetune", "mode", "layer", "tensor") else "right")
    for r in rows:
        table.add_row(*(_fmt(r.get(c, "")) for c in columns))
    return table


def _layer_key(layer: str) -> tuple[int, int]:
    """Sort order: numbered layers, then "other", then "all"."""
    return (0, int(layer)) if str(layer).isdigit() else (1 if layer == "other" else 2, 0)


def plot_mso(weight_layers: Sequence[dict], activation: Sequence[dict], path: str | Path, *,
             max_legend_layers: int = 8) -> Path:
    """MSO vs eta: weight space (the mean over all tensors, bold, and each layer) and activation space (each
    layer), each curve with its random baseline dashed. With more than `max_legend_layers` layers the per-layer
    curves are thin grey lines without legend entries."""
    fig = Figure(figsize=(11, 4.2))
    panels = [("weight space: ΔW_useful vs ΔW_harmful", weight_layers),
              ("activation space: useful vs harmful prompts", activation)]
    for i, (title, rows) in enumerate(panels):
        ax = fig.add_subplot(1, 2, i + 1)
        rows = list(rows)
        layers = sorted({str(r["layer"]) for r in rows}, key=_layer_key)
        if len(layers) > 1 and "all" not in layers:  # add the mean over layers as the summary curve
            for eta in sorted({r["eta"] for r in rows}):
                at = [r for r in rows if r["eta"] == eta and not math.isnan(r["mso"])]
                if at:
                    rows.append({"layer": "all", "eta": eta, "mso": sum(r["mso"] for r in at) / len(at),
                                 "baseline": sum(r["baseline"] for r in at) / len(at)})
            layers.append("all")
        numbered = [x for x in layers if x.isdigit()]
        many = len(numbered) > max_legend_layers
        for layer in layers:
            pts = sorted((r["eta"], r["mso"], r["baseline"]) for r in rows if str(r["layer"]) == layer)
            eta, mso, base = zip(*pts)
            summary = layer == "all" or len(layers) == 1
            if summary or not many:
                label = "mean" if layer == "all" else f"layer {layer}"
                line, = ax.plot(eta, mso, marker="o", lw=2.2 if summary else 1.2, label=label, zorder=3)
                ax.plot(eta, base, ls="--", color=line.get_color(), lw=1.2, alpha=0.8, zorder=3)
            else:
                ax.plot(eta, mso, color="0.6", lw=0.7, alpha=0.6)
                ax.plot(eta, base, color="0.6", lw=0.7, ls="--", alpha=0.4)
        if many:
            ax.plot([], [], color="0.6", lw=0.7, label=f"{len(numbered)} layers {numbered[0]}..{numbered[-1]}")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("η (energy captured)")
        ax.set_ylabel("MSO (dashed: random baseline)")
        ax.set_ylim(-0.02, 1.02)
        if layers:
            ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def mso_pivot(rows: Sequence[dict], title: str) -> Table:
    """A rich Table: one row per layer, one column per eta, cells "MSO (baseline)"."""
    etas = sorted({r["eta"] for r in rows})
    table = Table(title=title)
    table.add_column("layer")
    for eta in etas:
        table.add_column(f"η={eta:g}", justify="right")
    cells = {(str(r["layer"]), r["eta"]): f"{_fmt(r['mso'])} ({_fmt(r['baseline'])})" for r in rows}
    for layer in sorted({str(r["layer"]) for r in rows}, key=_layer_key):
        table.add_row(layer, *(cells.get((layer, eta), "") for eta in etas))
    return table


def plot_projection(evals: Sequence[dict], path: str | Path) -> Path:
    """Utility and harmfulness vs frac: one row of panels per fine-tune, one line per mode; the aligned model and
    the unprojected fine-tune as dashed horizontal lines."""
    projected = [r for r in evals if r.get("mode") not in (None, "", "reference")]
    finetunes = sorted({r["finetune"] for r in projected}) or ["-"]
    refs = {r["model"]: r for r in evals if r.get("mode") == "reference"}
    fig = Figure(figsize=(10, 3.4 * len(finetunes)))
    for i, ft in enumerate(finetunes):
        for j, metric in enumerate(("utility", "harmfulness")):
            ax = fig.add_subplot(len(finetunes), 2, 2 * i + j + 1)
            for mode in sorted({r["mode"] for r in projected if r["finetune"] == ft}):
                pts = sorted((r["frac"], r[metric]) for r in projected if r["finetune"] == ft and r["mode"] == mode)
                ax.plot(*zip(*pts), marker="o", label=mode)
            for name, style in (("aligned", ":"), (ft, "--")):
                if name in refs:
                    ax.axhline(refs[name][metric], ls=style, color="gray", label=f"{name} (unprojected)")
            ax.set_title(f"{ft} fine-tune: {metric}", fontsize=10)
            ax.set_xlabel("frac of alignment singular directions")
            ax.set_ylim(-0.02, 1.02)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return Path(path)


def write_report(out_dir: str | Path, results: dict[str, Any], *, console: Console | None = None,
                 show_tensors: bool = False, max_layers_shown: int = 8) -> dict[str, Path]:
    """Write the CSVs, report.json and both PNGs into `out_dir`, print the summary tables; return {name: path}.

    `results` holds the lists named in `TABLE_FILES` (missing ones are skipped) and `settings` (a dict).
    `show_tensors` also prints the per-tensor projection table (long for real models; it is always in the CSV);
    per-layer projection rows are printed for models of at most `max_layers_shown` layers (else only "all").
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    console = console or Console(width=160)
    paths = {key: write_csv(results[key], out / name) for key, name in TABLE_FILES.items() if results.get(key)}
    with (out / "report.json").open("w") as f:
        json.dump(results, f, indent=1, default=str)
    paths["report"] = out / "report.json"
    paths["mso_curves"] = plot_mso(results.get("mso_weight_layers", []), results.get("mso_activation", []),
                                   out / "mso_curves.png")
    paths["projection_curves"] = plot_projection(results.get("projection_eval", []), out / "projection_curves.png")

    console.print(rows_table(results.get("projection_eval", []),
                             ("model", "finetune", "mode", "frac", "utility", "harmfulness", "refusal_rate"),
                             "Projected models: utility (held-out accuracy) and harmfulness (keyword classifier)"))
    layers = sorted(results.get("projection_layers", []),
                    key=lambda r: (r["finetune"], r["mode"], r["frac"], _layer_key(r["layer"])))
    numbered = {r["layer"] for r in layers if str(r["layer"]).isdigit()}
    if len(numbered) > max_layers_shown:  # the per-layer rows are in projection_layers.csv
        layers = [r for r in layers if r["layer"] == "all"]
    console.print(rows_table(layers, ("finetune", "mode", "frac", "layer", "tensors", "energy_kept", "cosine"),
                             "Projection diagnostics (energy kept ‖P‖²/‖U‖², cosine ⟨U,P⟩/‖U‖‖P‖)"
                             + (f"; per layer in {TABLE_FILES['projection_layers']}" if len(numbered) >
                                max_layers_shown else "")))
    if show_tensors:
        console.print(rows_table(results.get("projection_tensors", []),
                                 ("finetune", "mode", "frac", "tensor", "k", "energy_kept", "cosine"),
                                 "Per-tensor projection diagnostics"))
    console.print(mso_pivot(results.get("mso_weight_layers", []),
                            "Weight-space MSO, mean over each layer's matrices: MSO (random baseline)"))
    console.print(mso_pivot(results.get("mso_activation", []),
                            "Activation-space MSO of last-token residuals: MSO (random baseline)"))
    console.print(f"report written to {out}")
    return paths


__all__ = ["TABLE_FILES", "mso_pivot", "plot_mso", "plot_projection", "rows_table", "write_csv", "write_report"]
