"""Forgiving keyword search at 100,000 product titles: typo and prefix matching against exact
keyword search (what mmsearch did before), in one run and one process.

Writes N synthetic titles (`Brovani slim navy linen shirt KX-2041`: a brand and a product line
made of syllables, so the vocabulary is as large and as varied as a real shop's, then real
words) into a catalog through the real items table and triggers. For query words drawn from the
titles it times `keywords.search` (top 10, and unlimited, as a product search reads them):

- exact: the word, with forgiving=False (the baseline: mmsearch before prefixes and typos)
- exact, forgiving: the same word with prefix and typo terms added (the cost on every query)
- typo: the word with one random edit (5+ letters) or two (9+), forgiving
- prefix: the first 3 letters of the word, forgiving
- colour + word: a colour (a common word) and the word, forgiving off: the baseline of
- colour + typo: the colour and the mistyped word, forgiving (its ratio is to the row above)

and reports p50/p99 and their ratio to the baseline, whether a typo query found the word it
was typed for, and the typo-candidate scan alone: length buckets (what vocabulary.py does)
against one rapidfuzz pass over the whole vocabulary.

    python -m benchmarks.keywords_typo                 # 100,000 titles
    python -m benchmarks.keywords_typo --titles 10000
"""

from __future__ import annotations

import argparse
import platform
import random
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rapidfuzz import process
from rapidfuzz.distance import OSA

from benchmarks.harness import cpu_model, percentile
from retrieval.storage import keywords
from retrieval.storage.catalog import Catalog
from retrieval.storage.vocabulary import get_vocabulary, read_vocabulary, typo_budget

REPO = Path(__file__).resolve().parents[1]
ONSETS = [
    "b",
    "br",
    "c",
    "d",
    "f",
    "g",
    "gr",
    "k",
    "l",
    "m",
    "n",
    "p",
    "r",
    "s",
    "st",
    "t",
    "v",
    "z",
]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
CODAS = ["", "", "n", "r", "l", "s", "x", "m"]
ADJECTIVES = ["slim", "classic", "vintage", "modern", "premium", "soft", "waterproof",
              "wireless", "portable", "compact", "organic", "handmade", "lightweight", "heavy",
              "deluxe"]  # fmt: skip
COLORS = ["red", "navy", "black", "white", "grey", "olive", "burgundy", "beige", "turquoise",
          "charcoal", "lavender", "mustard", "emerald", "ivory", "crimson"]  # fmt: skip
MATERIALS = ["linen", "cotton", "leather", "bamboo", "ceramic", "stainless", "walnut", "velvet",
             "cashmere", "polyester", "aluminium", "porcelain", "silicone", "merino"]  # fmt: skip
NOUNS = ["shirt", "dress", "sofa", "lamp", "kettle", "backpack", "sneakers", "headphones",
         "blanket", "bookshelf", "umbrella", "wallet", "necklace", "goldfish", "aquarium",
         "keyboard", "monitor", "teapot", "cardigan", "trousers", "raincoat", "mattress",
         "pillow", "suitcase", "skillet", "blender", "toaster", "bracelet",
         "sunglasses"]  # fmt: skip


def pseudo_word(rng: random.Random, syllables: int) -> str:
    return "".join(rng.choice(ONSETS) + rng.choice(VOWELS) + rng.choice(CODAS)
                   for _ in range(syllables))  # fmt: skip


def make_titles(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    brands = [pseudo_word(rng, rng.randint(2, 3)).capitalize() for _ in range(max(50, count // 40))]
    lines = [pseudo_word(rng, rng.randint(2, 4)) for _ in range(max(200, count // 5))]
    titles = []
    for _ in range(count):
        words = [rng.choice(brands), rng.choice(lines), rng.choice(ADJECTIVES),
                 rng.choice(COLORS), rng.choice(MATERIALS), rng.choice(NOUNS)]  # fmt: skip
        words = words[:2] + [w for w in words[2:-1] if rng.random() < 0.6] + words[-1:]
        code = f"{rng.choice('ABCDEFGHKX')}{rng.choice('ABCDEFGHKX')}-{rng.randint(100, 9999)}"
        titles.append(" ".join(words + [code]))
    return titles


def mistype(word: str, rng: random.Random) -> str:
    """`word` with typo_budget(word) random edits (delete, insert, substitute, swap)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    for _ in range(typo_budget(word)):
        at = rng.randrange(1, len(word) - 1)
        kind = rng.choice(["delete", "insert", "substitute", "swap"])
        if kind == "delete":
            word = word[:at] + word[at + 1 :]
        elif kind == "insert":
            word = word[:at] + rng.choice(letters) + word[at:]
        elif kind == "substitute":
            word = word[:at] + rng.choice(letters.replace(word[at], "")) + word[at + 1 :]
        else:
            word = word[:at] + word[at + 1] + word[at] + word[at + 2 :]
    return word


def build(path: Path, titles: list[str]) -> tuple[Catalog, float]:
    catalog = Catalog(path)
    start = time.perf_counter()
    with catalog.transaction() as db:
        db.executemany(
            "INSERT INTO items(collection, text, key) VALUES ('texts', ?, ?)",
            ((title, f"k{n}") for n, title in enumerate(titles)),
        )
    seconds = time.perf_counter() - start
    catalog.db.execute("INSERT INTO keywords(keywords) VALUES ('optimize')")
    return catalog, seconds


def timed(run: Callable[[], object], repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--titles", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    titles = make_titles(args.titles, args.seed)
    with tempfile.TemporaryDirectory() as work:
        catalog, build_s = build(Path(work) / "catalog.sqlite", titles)
        db = catalog.db
        start = time.perf_counter()
        vocabulary = read_vocabulary(db, keywords.TABLE)
        vocab_s = time.perf_counter() - start
        get_vocabulary(db, keywords.TABLE)  # warm the cache the searches use
        words = [w.lower() for t in rng.sample(titles, args.queries) for w in t.split()[:6]]
        words = [w for w in dict.fromkeys(words) if len(w) >= 5 and w.isalpha()]
        words = rng.sample(words, min(args.queries, len(words)))
        typos = {word: mistype(word, rng) for word in words}
        colours = {word: rng.choice(COLORS) for word in words}
        kinds: dict[str, list[tuple[str, bool]]] = {
            "exact (baseline, forgiving off)": [(w, False) for w in words],
            "exact, forgiving": [(w, True) for w in words],
            "typo (1 edit at 5+, 2 at 9+)": [(typos[w], True) for w in words],
            "prefix (3 letters)": [(w[:3], True) for w in words],
            # A common word plus the word, exact (its own baseline), and plus the word mistyped:
            # the typo's corrections add to the exact tier.
            "colour + word (forgiving off)": [(f"{colours[w]} {w}", False) for w in words],
            "colour + typo, forgiving": [(f"{colours[w]} {typos[w]}", True) for w in words],
        }
        rows = []
        for limit in (10, None):
            base = None
            # Interleaved and rotated: each query word runs every kind in turn, starting with a
            # different one each time, so load on a shared machine hits them alike.
            times: dict[str, list[float]] = {kind: [] for kind in kinds}
            order = list(kinds)
            for n in range(len(words)):
                for kind in order[n % len(order) :] + order[: n % len(order)]:
                    query, forgiving = kinds[kind][n]
                    times[kind] += timed(
                        lambda q=query, f=forgiving, k=limit: keywords.search(
                            db, q, "texts", limit=k, forgiving=f
                        ),
                        3,
                    )
            for kind in kinds:
                p50, p99 = percentile(times[kind], 0.5), percentile(times[kind], 0.99)
                base = base or (p50, p99)
                if kind.startswith("colour + word"):
                    base = (p50, p99)  # the rows below compare with the two-word baseline
                rows.append((f"top {limit}" if limit else "all matches", kind, p50, p99,
                             p50 / base[0], p99 / base[1]))  # fmt: skip
        found, missed = 0, []
        for word, typo in typos.items():
            matches = keywords.search(db, typo, "texts", limit=None)
            hit_ids = {m.id for m in matches}
            want = {m.id for m in keywords.search(db, word, "texts", limit=None, forgiving=False)}
            found += want <= hit_ids
            if not want <= hit_ids:
                missed.append(f"{typo}->{word}")
        bucket = timed_scan(vocabulary, list(typos.values()), buckets=True)
        full = timed_scan(vocabulary, list(typos.values()), buckets=False)
    sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True).stdout.strip()  # fmt: skip
    terms = sum(len(v) for v in vocabulary.by_length.values())
    print(f"# keyword search with typo tolerance, {args.titles:,} titles, {len(words)} query words")
    print(f"cpu: {cpu_model()} | python {platform.python_version()} | git {sha}")
    print(f"catalog write {build_s:.1f} s | vocabulary {terms:,} words, read in {vocab_s * 1e3:.0f}"
          " ms (once per change of the index, per connection)")  # fmt: skip
    print("\n| results | query | p50 ms | p99 ms | p50 / baseline | p99 / baseline |")
    print("|---|---|---:|---:|---:|---:|")
    for scope, kind, p50, p99, r50, r99 in rows:
        print(f"| {scope} | {kind} | {p50:.2f} | {p99:.2f} | {r50:.2f}x | {r99:.2f}x |")
    print(f"\ntypo queries that found every item holding the intended word: {found}/{len(typos)}"
          f" (missed, typed->meant: {', '.join(missed[:8])})")  # fmt: skip
    print(f"typo candidate scan alone, p50/p99 ms: length buckets {bucket[0]:.3f}/{bucket[1]:.3f},"
          f" whole vocabulary {full[0]:.3f}/{full[1]:.3f}")  # fmt: skip
    print(f"\nreproduce: python -m benchmarks.keywords_typo --titles {args.titles}")


def timed_scan(vocabulary, queries: list[str], *, buckets: bool) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    """The typo-candidate search alone: vocabulary.typo_terms (length buckets), or one
    rapidfuzz pass over every word."""
    everything = [t for terms in vocabulary.by_length.values() for t in terms]
    times = []
    for query in queries:
        if buckets:
            times += timed(lambda q=query: vocabulary.typo_terms(q), 3)
        else:
            budget = typo_budget(query)
            times += timed(
                lambda q=query, b=budget: process.extract(
                    q, everything, scorer=OSA.distance, score_cutoff=b, limit=None
                ),
                3,
            )
    return percentile(times, 0.5), percentile(times, 0.99)


if __name__ == "__main__":
    main()
