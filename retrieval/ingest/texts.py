"""Reading text lists for the text index: CSV, JSONL or plain text, one text per row."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..errors import InputFileError

# Column names tried, in order, for CSV files; the first present wins.
TEXT_COLUMNS = ("caption", "text", "title")


def load_texts(path: Path) -> list[str]:
    """Texts from a .csv (caption/text/title column), .jsonl (`text` field) or plain file.

    Raises:
        InputFileError: the file is missing, unreadable, or has no usable column/field.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"--texts file {path} does not exist")
    try:
        raw = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise InputFileError(f"cannot read --texts file {path}: {err}") from err
    suffix = path.suffix.lower()
    if suffix == ".csv":
        texts = _from_csv(path, raw)
    elif suffix in {".jsonl", ".ndjson"}:
        texts = _from_jsonl(path, raw)
    else:
        texts = raw.splitlines()
    return [text.strip() for text in texts if text and text.strip()]


def _from_csv(path: Path, raw: str) -> list[str]:
    reader = csv.DictReader(raw.splitlines())
    fields = reader.fieldnames or []
    column = next((name for name in TEXT_COLUMNS if name in fields), None)
    if column is None:
        raise InputFileError(
            f"{path} has no {'/'.join(TEXT_COLUMNS)} column "
            f"(columns: {', '.join(fields) or 'none'})"
        )
    return [row.get(column) or "" for row in reader]


def iter_jsonl(path: Path, raw: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(`path:line` for messages, object) for each non-blank line of a JSONL file."""
    for number, line in enumerate(raw.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except ValueError as err:
            raise InputFileError(f"{where}: not valid JSON ({err})") from err
        if not isinstance(record, dict):
            raise InputFileError(f"{where}: expected a JSON object per line")
        yield where, record


def _from_jsonl(path: Path, raw: str) -> list[str]:
    texts = []
    for where, record in iter_jsonl(path, raw):
        if not isinstance(record.get("text"), str):
            raise InputFileError(f'{where}: expected an object with a "text" string')
        texts.append(record["text"])
    return texts
