"""Keyword search in Chinese product titles: mmsearch's character pairs against the unicode61
words it stored before, FTS5's trigram tokenizer and jieba's word segmentation, in one run.

Writes N synthetic titles (`ZENITH 夏季女士修身红色真丝连衣裙 XL`: a Latin brand, then words
from a fixed vocabulary run together as shops write them) into four catalogs built through the
same items table and triggers, one per way of tokenising. Then, for query words of one to four
characters drawn from the vocabulary, compares each method's matches with the exact answer (the
titles holding the query as a substring): recall over all matches, precision of the first 10
(of the first n where only n < 10 titles hold the query), the median time of a top-10 query, and
the keyword table's size (SQLite's dbstat).

    python -m benchmarks.keywords_cjk                 # 100,000 titles
    python -m benchmarks.keywords_cjk --titles 10000
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import re
import sqlite3
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.harness import cpu_model
from retrieval.storage import keywords
from retrieval.storage.catalog import MIGRATIONS

REPO = Path(__file__).resolve().parents[1]
BRANDS = ["ZENITH", "Acme", "NORTHWIND", "Lumen", "KiraKira", "Orbit", "MUJI-ish", "Pine"]
SEASONS = ["夏季", "冬季", "春秋", "2024新款", "秋冬"]
AUDIENCES = ["女士", "男士", "儿童", "中老年", "情侣"]
STYLES = ["修身", "宽松", "复古", "韩版", "百搭", "休闲", "商务", "加厚", "轻薄", "简约"]
COLORS = ["红色", "蓝色", "黑色", "白色", "灰色", "粉色", "米色", "深蓝", "酒红", "卡其色"]
MATERIALS = ["真丝", "纯棉", "羊毛", "皮革", "亚麻", "涤纶", "羊绒", "牛仔"]
ITEMS = ["连衣裙", "衬衫", "裤子", "外套", "毛衣", "卫衣", "羽绒服", "风衣", "半身裙", "T恤"]
ITEMS += ["运动鞋", "皮鞋", "帽子", "围巾", "手提包", "双肩包", "袜子", "睡衣", "马甲", "西装"]
SIZES = ["S", "M", "L", "XL", "XXL", ""]
# One-character words shoppers type (鞋 shoe, 包 bag, 裙 skirt, 帽 hat, 袜 sock) and words of
# two to four characters from the vocabulary.
QUERIES = {
    "1 char": ["鞋", "包", "裙", "帽", "袜", "衣"],
    "2 chars": ["真丝", "衬衫", "外套", "红色", "修身", "羊毛", "围巾", "皮鞋"],
    "3 chars": ["连衣裙", "羽绒服", "运动鞋", "卡其色", "中老年", "手提包"],
    "4 chars": ["真丝连衣", "红色外套", "加厚羽绒"],
    "latin": ["zenith", "acme", "northwind"],
}


def make_titles(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    titles = []
    for _ in range(count):
        words = [rng.choice(SEASONS), rng.choice(AUDIENCES), rng.choice(STYLES),
                 rng.choice(COLORS), rng.choice(MATERIALS), rng.choice(ITEMS)]  # fmt: skip
        words = [w for w in words if rng.random() < 0.7] or [rng.choice(ITEMS)]
        titles.append(f"{rng.choice(BRANDS)} {''.join(words)} {rng.choice(SIZES)}".strip())
    return titles


def old_words(text: str) -> list[str]:
    """keywords.split_words of mmsearch 0.1.0: unicode61 words, no CJK handling."""
    camel = re.compile(
        r"(?<=[a-z])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])|(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])"
    )
    return [w for part in re.split(r"[\W_]+", text) for w in camel.sub(" ", part).split()]


def jieba_words(text: str) -> list[str]:
    import jieba

    return [w for w in jieba.cut_for_search(text) if w.strip() and re.search(r"\w", w)]


def quoted_or(words: list[str]) -> str | None:
    unique = list(dict.fromkeys(words))
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in unique) if unique else None


@dataclass(frozen=True)
class Method:
    """One way of tokenising: the stored row text, the FTS5 tokenizer, the MATCH expression."""

    name: str
    row: Callable[[str], str]
    tokenizer: str
    expression: Callable[[str], str | None]


def trigram_expression(query: str) -> str | None:
    return quoted_or([query]) if len(query) >= 3 else None  # shorter: trigram finds nothing


METHODS = [
    Method(
        "unicode61 words (before)",
        lambda t: " ".join(old_words(t)),
        "unicode61 remove_diacritics 2",
        lambda q: quoted_or(old_words(q)),
    ),
    Method(
        "mmsearch: CJK character pairs",
        lambda t: keywords.keyword_text(None, t, None),
        "unicode61 remove_diacritics 2",
        keywords.match_expression,
    ),
    Method("FTS5 trigram", lambda t: t, "trigram", trigram_expression),
    Method(
        "jieba cut_for_search",
        lambda t: " ".join(jieba_words(t)),
        "unicode61 remove_diacritics 2",
        lambda q: quoted_or(jieba_words(q)),
    ),
]


def build(path: Path, method: Method, titles: list[str]) -> tuple[sqlite3.Connection, float]:
    """A catalog with this method's keyword table, filled through the real insert trigger."""
    db = sqlite3.connect(path, isolation_level=None)
    db.create_function(keywords.FUNCTION, 3, lambda p, t, m: method.row(t or ""))
    migration = MIGRATIONS[1].replace("unicode61 remove_diacritics 2", method.tokenizer)
    db.executescript(f"BEGIN; {MIGRATIONS[0]}; {migration}; COMMIT;")
    start = time.perf_counter()
    db.execute("BEGIN")
    db.executemany(
        "INSERT INTO items(collection, text, key) VALUES ('texts', ?, ?)",
        ((title, f"k{n}") for n, title in enumerate(titles)),
    )
    db.execute("COMMIT")
    seconds = time.perf_counter() - start
    db.execute("INSERT INTO keywords(keywords) VALUES ('optimize')")
    return db, seconds


def table_bytes(db: sqlite3.Connection) -> int:
    query = "SELECT SUM(pgsize) FROM dbstat WHERE name LIKE 'keywords%'"
    return int(db.execute(query).fetchone()[0])


def matches(db: sqlite3.Connection, expression: str | None, limit: int | None) -> list[int]:
    if expression is None:
        return []
    sql = "SELECT rowid FROM keywords WHERE keywords MATCH ? ORDER BY bm25(keywords), rowid"
    sql += f" LIMIT {limit}" if limit else ""
    return [row[0] for row in db.execute(sql, (expression,))]


def measure(db: sqlite3.Connection, method: Method, titles: list[str], repeat: int) -> dict:
    """Per query group: mean recall, mean precision@10, median top-10 query ms."""
    out = {}
    for group, queries in QUERIES.items():
        recalls, precisions, times = [], [], []
        for query in queries:
            folded = query.lower()
            truth = {n + 1 for n, t in enumerate(titles) if folded in t.lower()}
            expression = method.expression(query)
            found = set(matches(db, expression, None))
            recalls.append(len(found & truth) / len(truth) if truth else 1.0)
            # Of the first min(10, |truth|) results, the share that hold the query.
            depth = min(10, len(truth))
            top = matches(db, expression, depth)
            precisions.append(sum(i in truth for i in top) / depth if depth else 1.0)
            for _ in range(repeat):
                start = time.perf_counter()
                matches(db, method.expression(query), 10)
                times.append(time.perf_counter() - start)
        out[group] = (statistics.mean(recalls), statistics.mean(precisions),
                      1000 * statistics.median(times))  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    titles = make_titles(args.titles)
    print(f"{args.titles:,} titles, e.g. {titles[0]!r}, {titles[1]!r}")
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for number, method in enumerate(METHODS):
            db, seconds = build(Path(work) / f"{number}.sqlite", method, titles)
            result = measure(db, method, titles, args.repeat)
            rows.append((method, seconds, table_bytes(db), result))
            db.close()
    base_bytes = rows[0][2]
    print("\n| method | build s | keyword table MB | size ratio |")
    print("|---|---:|---:|---:|")
    for method, seconds, size, _ in rows:
        print(f"| {method.name} | {seconds:.1f} | {size / 1e6:.1f} | {size / base_bytes:.2f}x |")
    print("\nrecall over all matches / precision of the top 10 / median ms of a top-10 query,")
    print("mean over the group's queries")
    print("\n| method | " + " | ".join(QUERIES) + " |")
    print("|---|" + "---:|" * len(QUERIES))
    for method, _, _, result in rows:
        cells = [f"{r:.3f} / {p:.2f} / {ms:.2f}" for r, p, ms in result.values()]
        print(f"| {method.name} | " + " | ".join(cells) + " |")
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, check=False).stdout.strip()  # fmt: skip
    print(
        f"\ncpu={cpu_model()}, load={os.getloadavg()[0]:.1f}, "
        f"sqlite={sqlite3.sqlite_version}, python={platform.python_version()}, git={sha}\n"
        f"python -m benchmarks.keywords_cjk --titles {args.titles} --repeat {args.repeat}"
    )


if __name__ == "__main__":
    main()
