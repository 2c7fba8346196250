"""Presenting an evaluation: a plain-text table for stdout and one self-contained HTML file with
Recall@K plots (matplotlib PNGs inlined as data: URIs) and the same tables.

matplotlib is an optional extra (`pip install "mmsearch[report]"`): it is ~40 MB with its
fonts and only `eval --report` needs it, while the table and `--json` work without it."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ..errors import MmsearchError
from ..files import write_atomic

DIRECTIONS = (("text_to_image", "text → image"), ("image_to_text", "image → text"))


def check_report_dependencies() -> None:
    """Fail before any embedding when --report cannot be written."""
    try:
        import matplotlib  # noqa: F401
    except ImportError as err:
        raise MmsearchError(
            'the HTML report needs matplotlib: pip install "mmsearch[report]" (or matplotlib), '
            "or drop --report"
        ) from err


def _recall_keys(section: dict[str, Any]) -> list[str]:
    return [key for key in section if key.startswith("recall@") and "_vs_" not in key]


def _rows(result: dict[str, Any]) -> list[tuple[str, str, list[str]]]:
    """(direction label, search label, cells) for each exact / index line."""
    rows = []
    for key, label in DIRECTIONS:
        exact, approx = result[key], result["index"][key]
        recalls = _recall_keys(exact)
        cells = [f"{exact[r]:.3f}" for r in recalls]
        rows.append(
            (label, "exact", [*cells, f"{exact['median_rank']:g}", f"{exact['mean_rank']:.1f}"])
        )
        cells = [f"{approx[r]:.3f}" for r in recalls]
        overlap = next(v for k, v in approx.items() if k.endswith("_vs_exact"))
        rows.append((label, result["index"]["faiss"], [*cells, "", "", f"{overlap:.3f}"]))
    return rows


def _header(result: dict[str, Any]) -> list[str]:
    recalls = [r.replace("recall", "R") for r in _recall_keys(result["text_to_image"])]
    return ["direction", "search", *recalls, "median rank", "mean rank", "R@10 vs exact"]


def _efficiency_rows(result: dict[str, Any]) -> list[list[str]]:
    eff = result["efficiency"]
    rows = []
    for key, label in (
        ("text_query", "text query (embed + search)"),
        ("image_query_stored_vector", "image query (stored vector)"),
        ("image_query_from_file", "image query (decode + embed + search)"),
    ):
        lat = eff[key]
        rows.append([label, f"{lat['p50_ms']:.2f}", f"{lat['p99_ms']:.2f}", f"{lat['qps']:.1f}"])
    return rows


def text_table(result: dict[str, Any]) -> str:
    """The evaluation as aligned plain text for a terminal."""
    lines = [
        f"pairs {result['pairs']}: {result['images']} images, {result['captions']} captions "
        f"(vectors reused {result['vectors']['reused']}, embedded {result['vectors']['embedded']}"
        f", skipped {len(result['skipped'])})",
        f"{result['ties']}",
        "",
    ]
    header = _header(result)
    table = [header] + [[d, s, *c] for d, s, c in _rows(result)]
    widths = [max(len(row[i]) if i < len(row) else 0 for row in table) for i in range(len(header))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) for row in table
    ]
    lines += ["", f"{'latency':<40}  {'p50 ms':>8}  {'p99 ms':>8}  {'q/s':>8}"]
    lines += [f"{r[0]:<40}  {r[1]:>8}  {r[2]:>8}  {r[3]:>8}" for r in _efficiency_rows(result)]
    eff = result["efficiency"]
    disk = eff["user_index_disk_bytes"]
    lines.append(
        f"index {result['index']['faiss']}: {eff['index_memory_bytes'] / 1e6:.2f} MB in memory "
        f"({eff['index_bytes_per_vector']:.0f} B/vector)"
        + (f"; user index on disk {disk / 1e6:.1f} MB" if disk is not None else "")
    )
    if "robustness" in result:
        rob = result["robustness"]
        lines += ["", f"robustness (image->image Recall@1 over {rob['images']} images)"]
        lines += [
            f"  {name:<18} {v['recall@1']:.3f}" for name, v in rob.items() if name != "images"
        ]
    timing = result["timing_s"]
    lines.append(
        f"\nembedding {timing['embed']:.1f}s, evaluation beyond embedding "
        f"{timing['beyond_embedding']:.1f}s, robustness {timing['robustness']:.1f}s"
    )
    return "\n".join(lines)


# -- HTML -------------------------------------------------------------------------------------
def _png(figure: Any) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _plots(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(alt text, data URI) per plot: Recall@K curves per direction, and robustness bars."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display: render straight to PNG bytes
    from matplotlib.figure import Figure

    plots = []
    for key, label in DIRECTIONS:
        figure = Figure(figsize=(5.5, 3.6))
        axes = figure.subplots()
        for curve, name in (
            (result[key]["curve"], "exact"),
            (result["index"][key]["curve"], result["index"]["faiss"]),
        ):
            axes.plot(range(1, len(curve) + 1), curve, marker=".", label=name)
        axes.set(xlabel="K", ylabel="Recall@K", title=f"{label}: Recall@K", ylim=(0, 1.02))
        axes.set_xscale("log")
        axes.grid(True, alpha=0.3)
        axes.legend()
        plots.append((f"Recall@K {label}", _png(figure)))
    if "robustness" in result:
        rob = {k: v["recall@1"] for k, v in result["robustness"].items() if k != "images"}
        figure = Figure(figsize=(6.5, 3.2))
        axes = figure.subplots()
        axes.barh(list(rob), list(rob.values()))
        axes.set(xlabel="image→image Recall@1", xlim=(0, 1), title="robustness")
        plots.append(("robustness Recall@1", _png(figure)))
    return plots


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def render_html(result: dict[str, Any]) -> str:
    """The report as one HTML document with no external resources."""
    plots = "".join(
        f'<figure><img alt="{html.escape(alt)}" src="{uri}"></figure>'
        for alt, uri in _plots(result)
    )
    retrieval = _html_table(_header(result), [[d, s, *c] for d, s, c in _rows(result)])
    latency = _html_table(["query", "p50 ms", "p99 ms", "queries/s"], _efficiency_rows(result))
    robustness = ""
    if "robustness" in result:
        rob = result["robustness"]
        rows = [[name, f"{v['recall@1']:.3f}"] for name, v in rob.items() if name != "images"]
        robustness = f"<h2>Robustness ({rob['images']} images)</h2>" + _html_table(
            ["perturbation", "image→image Recall@1"], rows
        )
    summary = html.escape(text_table(result).split("\n\n")[0])
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mmsearch eval</title>
<style>body{{font:15px system-ui,sans-serif;margin:2em;max-width:70em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:.3em .6em;
text-align:right}}td:first-child,th:first-child{{text-align:left}}figure{{display:inline-block;
margin:.5em}}pre{{background:#f6f6f6;padding:.6em}}</style></head><body>
<h1>mmsearch eval</h1><p>{html.escape(result.get("pairs_file") or "")}</p><pre>{summary}</pre>
<h2>Retrieval</h2>{retrieval}<p>{html.escape(result["index"]["note"])}</p>{plots}
<h2>Efficiency</h2>{latency}{robustness}</body></html>
"""


def write_report(result: dict[str, Any], path: Path) -> None:
    """Write the HTML report atomically to `path`."""
    check_report_dependencies()
    try:
        write_atomic(Path(path), render_html(result).encode("utf-8"))
    except OSError as err:
        raise MmsearchError(
            f"cannot write report {path}: {err}; pick another --report path"
        ) from err
