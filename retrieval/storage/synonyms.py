"""Synonyms for keyword search: groups of words that mean the same thing to a shopper.

The file (`mmsearch index --synonyms FILE`) holds one group per line, comma-separated
(`sofa, couch, settee`); blank lines and lines starting with `#` are skipped. `index` checks it
and stores a copy in the index directory (synonyms.txt), so every reader of the index (`query`,
`serve`, its HTTP app) uses the same groups, and a running server picks up a new copy at its
next keyword query (the file's modification time is checked). A query word that is a one-word
member of a group also matches every other member, as an exact match (a member of several words,
`sofa bed`, is matched as a phrase); keyword and hybrid modes expand queries this way.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InvalidOptionError
from ..files import write_atomic
from .keywords import split_words
from .vocabulary import fold

FILE_NAME = "synonyms.txt"
# A shop's synonym list runs to hundreds or a few thousand groups; a file far beyond that is
# more likely a wrong file (a catalog, a log) than synonyms.
MAX_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Synonyms:
    """Folded word -> the other members of its groups (each a tuple of folded words)."""

    alternatives: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)

    def of(self, word: str) -> tuple[tuple[str, ...], ...]:
        """The members sharing a group with the one-word member `word` (none: empty)."""
        return self.alternatives.get(fold(word), ())


NONE = Synonyms()


def parse_synonyms(text: str) -> Synonyms:
    """Synonyms from the file's text (one comma-separated group per line).

    Raises:
        InvalidOptionError: a line holds fewer than two members.
    """
    alternatives: dict[str, list[tuple[str, ...]]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        members = [tuple(fold(w) for w in split_words(m)) for m in line.split(",")]
        members = list(dict.fromkeys(m for m in members if m))
        if len(members) < 2:
            raise InvalidOptionError(
                f"synonyms line {number} ({line.strip()!r}) needs two or more comma-separated "
                "words, e.g. `sofa, couch, settee`"
            )
        for member in members:
            if len(member) == 1:
                known = alternatives.setdefault(member[0], [])
                known.extend(m for m in members if m != member and m not in known)
    return Synonyms({word: tuple(others) for word, others in alternatives.items()})


def read_synonyms_file(path: Path) -> Synonyms:
    """Parse a synonyms file given by the user, with errors that name it."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise InvalidOptionError(
                f"--synonyms {path} is over {MAX_BYTES // (1024 * 1024)} MiB; is it the right file?"
            )
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise InvalidOptionError(f"cannot read --synonyms {path}: {err}") from err
    try:
        return parse_synonyms(text)
    except InvalidOptionError as err:
        raise InvalidOptionError(f"--synonyms {path}: {err}") from err


def install_synonyms(directory: Path, source: Path) -> Synonyms:
    """Check `source` and store a copy as the index's synonyms (atomically replaced)."""
    synonyms = read_synonyms_file(source)
    directory.mkdir(parents=True, exist_ok=True)
    write_atomic(directory / FILE_NAME, source.read_bytes())
    return synonyms


# path -> (mtime_ns, size, parsed): a server re-reads the file only when it changed.
_LOADED: dict[Path, tuple[int, int, Synonyms]] = {}
_LOCK = threading.Lock()


def load_synonyms(directory: Path) -> Synonyms:
    """The synonyms stored in an index directory (none: NONE); cached until the file changes.
    A stored file that no longer parses counts as none (it was checked when stored)."""
    path = Path(directory) / FILE_NAME
    try:
        stat = path.stat()
    except OSError:
        return NONE
    with _LOCK:
        cached = _LOADED.get(path)
        if cached is not None and cached[:2] == (stat.st_mtime_ns, stat.st_size):
            return cached[2]
    try:
        synonyms = parse_synonyms(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, InvalidOptionError):
        synonyms = NONE
    with _LOCK:
        _LOADED[path] = (stat.st_mtime_ns, stat.st_size, synonyms)
    return synonyms


__all__ = [
    "FILE_NAME",
    "NONE",
    "Synonyms",
    "install_synonyms",
    "load_synonyms",
    "parse_synonyms",
    "read_synonyms_file",
]
