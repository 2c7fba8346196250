"""How command results look on a terminal: index summaries, result tables, `info` text and the
JSON of index reports. Pure functions from values to strings."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..types import IMAGES, PRODUCTS, TEXTS

if TYPE_CHECKING:
    from ..ingest.captions import CaptionReport
    from ..ingest.product_writes import CatalogReport
    from ..ingest.sync import IndexReport
    from ..search.service import SearchResult


def report_summary(report: IndexReport, directory: Path, kind: str = "files") -> str:
    """The one line an index run ends with."""
    reasons = ", ".join(f"{reason}: {n}" for reason, n in report.skipped_by_reason().items())
    skipped = f"skipped {len(report.skipped)}" + (f" ({reasons})" if reasons else "")
    texts = ""
    if report.texts_indexed or report.texts_removed:
        texts = f", texts +{report.texts_indexed}/-{report.texts_removed}"
    what = "products " if kind == "catalog" else ""
    return (
        f"{what}indexed {report.indexed} (embedded {report.embedded}, reused {report.reused}), "
        f"unchanged {report.unchanged}, removed {report.removed}, {skipped}"
        f"{_ignored_summary(report.ignored)}{texts}, "
        f"{report.elapsed_s:.1f}s, {report.images_per_s:.1f} img/s -> {directory}"
    )


def _ignored_summary(ignored: dict[str, int]) -> str:
    """`, ignored 12 (.mov: 10, .txt: 2)`, or nothing when the walk passed over no file."""
    if not ignored:
        return ""
    counts = ", ".join(f"{suffix}: {n}" for suffix, n in ignored.items())
    return f", ignored {sum(ignored.values())} ({counts})"


def report_dict(report: IndexReport, directory: Path) -> dict[str, Any]:
    """An index run's report as `index --json` prints it."""
    return {
        "index": str(directory),
        "indexed": report.indexed,
        "embedded": report.embedded,
        "reused": report.reused,
        "unchanged": report.unchanged,
        "removed": report.removed,
        "skipped": [
            {"path": s.path, "reason": s.reason, "detail": s.detail} for s in report.skipped
        ],
        "ignored": report.ignored,
        "texts_indexed": report.texts_indexed,
        "texts_removed": report.texts_removed,
        "elapsed_s": round(report.elapsed_s, 3),
        "images_per_s": round(report.images_per_s, 2),
    }


def catalog_summary(report: CatalogReport, directory: Path, *, as_json: bool) -> str:
    """A catalog import's report: bad rows (with line numbers), then one summary line; with
    --json one object with every row's outcome."""
    outcomes = sorted(report.outcomes, key=lambda o: (o.line is None, o.line or 0, o.sku or ""))
    counts = {a: report.count(a) for a in ("created", "replaced", "unchanged", "deleted", "failed")}
    if as_json:
        return json.dumps(
            {
                "kind": "catalog",
                **report_dict(report, directory),
                "dry_run": report.dry_run,
                **counts,
                "outcomes": [o.to_dict() for o in outcomes],
                "schema": report.schema,
            }
        )
    lines = [
        f"line {o.line}: {o.sku or '?'}: {o.reason}" if o.line else f"{o.sku}: {o.reason}"
        for o in outcomes
        if o.action == "failed"
    ]
    if report.dry_run:
        for action in ("created", "replaced", "deleted"):
            skus = [o.sku or "" for o in outcomes if o.action == action]
            if skus:
                lines.append(f"would be {action} ({len(skus)}): " + ", ".join(skus))
        summary = ", ".join(f"{n} {action}" for action, n in counts.items())
        lines.append(f"dry run, nothing written: {summary}")
        return "\n".join(lines)
    summary = ", ".join(f"{action} {n}" for action, n in counts.items())
    lines.append(f"products {summary}; " + report_summary(report, directory, "files"))
    return "\n".join(lines)


def caption_summary(report: CaptionReport, *, as_json: bool) -> str:
    """One line (or JSON line) about a captioning pass."""
    fields = {
        "kind": "captions",
        "captioned": report.captioned,
        "generated": report.generated,
        "already": report.already,
        "skipped": len(report.skipped),
        "elapsed_s": round(report.elapsed_s, 3),
        "captions_per_s": round(report.captions_per_s, 3),
    }
    if as_json:
        return json.dumps(fields)
    return (
        f"captioned {report.captioned} (generated {report.generated}), already had one "
        f"{report.already}, skipped {len(report.skipped)}, {report.elapsed_s:.1f}s, "
        f"{report.captions_per_s:.2f} captions/s"
    )


def result_table(result: SearchResult) -> str:
    """rank, score and path/text/product per hit, or why there are none."""
    target = result.query["target"]
    if not result.hits:
        if "min_score" in result.query or result.query.get("offset"):
            return "no results: none above --min-score / past --offset"
        if result.query.get("filters"):
            return "no results: no product passes the filters"
        return f"no results: the {target} index is empty"
    column = {IMAGES: "path", TEXTS: "text", PRODUCTS: "product"}[target]
    lines = [f"{'rank':>4}  {'score':>7}  {column}"]
    for hit in result.hits:
        shown = hit.path if hit.path is not None else hit.text
        if target == PRODUCTS:
            shown = f"{hit.metadata.get('product_id')}  {hit.metadata.get('title')}  {shown or ''}"
        if hit.duplicates:
            folded = len(hit.duplicates)
            plural = "s" if folded != 1 else ""
            shown = f"{shown}  (+{folded} near-duplicate{plural}, ids in --json)"
        if hit.caption is not None:
            shown = f"{shown}  ({hit.caption})"
        if hit.signals:
            shown = f"{shown}  [{', '.join(f'{k} #{v}' for k, v in hit.signals.items())}]"
        score = f"{hit.score:>7.4f}" if "mode" in result.query else f"{'-':>7}"  # browsing
        lines.append(f"{hit.rank:>4}  {score}  {shown}")
    if result.total is not None:
        lines.append(f"{result.total} products in all")
    for column, counts in (result.facets or {}).items():
        lines.append(f"{column}: " + ", ".join(_facet_entry(entry) for entry in counts))
    return "\n".join(lines)


def _facet_entry(entry: dict[str, Any]) -> str:
    """`dogs 12`, `other 5`, `0-50 3` (an open end left blank)."""
    if "from" in entry:
        low, high = (f"{v:g}" if v is not None else "" for v in (entry["from"], entry["to"]))
        return f"{low}-{high} {entry['count']}"
    return f"{'other' if entry.get('other') else entry['value']} {entry['count']}"


def info_text(details: dict[str, Any]) -> str:
    """`mmsearch info` without --json."""

    def when(stamp: float | None) -> str:
        if stamp is None:
            return "never"
        return dt.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")

    model = details["model"]
    lines = [
        f"index:     {details['directory']}",
        f"model:     {model['name']}"
        + (f" (pretrained={model['pretrained']})" if model["pretrained"] else ""),
        f"dim:       {model['dim']}",
    ]
    if details.get("embedder"):
        built = details["embedder"]
        lines.append(f"embedded:  {built['backend']} {built['precision']} (last run that embedded)")
    if details.get("preprocessing"):
        lines.append(f"decoded:   {', '.join(details['preprocessing'])} (preprocessing paths)")
    for name, stats in details["collections"].items():
        faiss = stats["faiss"] or "empty"
        lines.append(f"{name + ':':<10} {stats['count']} ({faiss}; type {stats['index_type']})")
        if stats.get("recall_at_10") is not None:
            params = ", ".join(f"{k}={v}" for k, v in (stats["search_params"] or {}).items())
            lines.append(
                f"{'':<10} recall@10 {stats['recall_at_10']:.3f} vs exact search "
                f"(target {stats['target_recall']:.2f}; {params or 'default search parameters'})"
            )
            if stats.get("recall"):
                kinds = ", ".join(f"{kind} {value:.3f}" for kind, value in stats["recall"].items())
                lines.append(f"{'':<10} recall@10 by probe kind: {kinds}")
    if details["products"]:
        lines.append(f"products:  {details['products']}")
    if details.get("product_columns"):
        columns = ", ".join(f"{c} ({t})" for c, t in details["product_columns"].items())
        lines.append(f"columns:   {columns}")
    lines += [
        f"size:      {details['size_bytes'] / 1e6:.1f} MB",
        f"created:   {when(details['created'])}",
        f"updated:   {when(details['updated'])}",
    ]
    return "\n".join(lines)
