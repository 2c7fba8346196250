"""schemathesis against a live `mmsearch serve` on 127.0.0.1: every operation of the OpenAPI
schema in positive (schema-valid) and negative (schema-breaking) generation, then stateful
runs that chain a search into GET /items/{id} and /items/{id}/image through OpenAPI links.
Every answer must be documented (status, content type, body schema) and none a 5xx; the
server's RSS is sampled before and after.

    python -m benchmarks.faults.fuzz_http                   # ~4,000 cases (~10 min on 2 busy cores)
    python -m benchmarks.faults.fuzz_http --examples 20 --stateful 10   # a quick look

Loopback only: the server is a child process bound to 127.0.0.1. tests/test_http_hostile.py
runs `fuzz` for a few cases per operation against a threaded uvicorn in the default suite.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..harness import rss_mib
from ..livekit import environment, mmsearch, serve_child, write_catalog, write_model

SEARCH_OUT = "#/components/schemas/SearchOut"
# Each call's own limit; a hang past it is a failure, not a stuck harness.
CALL_TIMEOUT_S = 30


@dataclass
class FuzzReport:
    """What the fuzzer sent and what came back."""

    cases: Counter[str] = field(default_factory=Counter)  # "METHOD /path" -> requests sent
    statuses: Counter[int] = field(default_factory=Counter)
    failures: dict[str, str] = field(default_factory=dict)  # "op: check" -> first message
    stateful_steps: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.cases.values())

    def record(self, label: str, status: int) -> None:
        self.cases[label] += 1
        self.statuses[status] += 1

    def fail(self, label: str, err: BaseException) -> None:
        text = str(err).strip().splitlines()
        key = f"{label}: {text[0] if text else type(err).__name__}"
        self.failures.setdefault(key, "\n".join(text[:12]))


def linked_schema(raw: dict[str, Any]) -> dict[str, Any]:
    """The app's schema plus OpenAPI links from every search answer to the first hit's item
    and image, so stateful runs fetch real ids (FastAPI emits no links of its own)."""
    schema = copy.deepcopy(raw)
    ids = {
        path: operation["operationId"]
        for path, operations in schema["paths"].items()
        for operation in operations.values()
    }
    links = {
        name: {
            "operationId": ids[path],
            "parameters": {"item_id": "$response.body#/results/0/id"},
        }
        for name, path in (("Item", "/items/{item_id}"), ("Image", "/items/{item_id}/image"))
    }
    for operations in schema["paths"].values():
        for operation in operations.values():
            ok = operation.get("responses", {}).get("200", {})
            body = ok.get("content", {}).get("application/json", {}).get("schema", {})
            if body.get("$ref") == SEARCH_OUT:
                ok["links"] = links
    return schema


def fuzz(
    base: str, *, examples: int, stateful: int, headers: dict[str, str] | None = None
) -> FuzzReport:
    """`examples` cases per operation and generation mode, then `stateful` stateful runs."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable
    from schemathesis import GenerationMode
    from schemathesis.checks import positive_data_acceptance

    raw = httpx.get(f"{base}/openapi.json", headers=headers, timeout=CALL_TIMEOUT_S).json()
    schema = schemathesis.openapi.from_dict(linked_schema(raw))
    report = FuzzReport()
    started = time.perf_counter()
    # positive_data_acceptance expects every schema-valid request to succeed; a schema cannot say
    # "these bytes are an image" or "this filter names a catalog column" (tests/test_http_schema).
    excluded = [positive_data_acceptance]
    kwargs = {"base_url": base, "headers": headers, "timeout": CALL_TIMEOUT_S}
    quiet = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run, so figures and failures reproduce
        suppress_health_check=list(HealthCheck),
    )

    def probe(label: str) -> Any:
        def check(case: schemathesis.Case) -> None:
            try:
                response = case.call(**kwargs)
                report.record(label, response.status_code)
                case.validate_response(response, excluded_checks=excluded, transport_kwargs=kwargs)
            except Exception as err:  # noqa: BLE001 (collected: one run reports them all)
                report.fail(label, err)

        return check

    operations = [result.ok() for result in schema.get_all_operations()]
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        for operation in operations:
            label = f"{operation.method.upper()} {operation.path}"
            # Unsatisfiable: no parameters, so no schema-breaking request exists (negative mode).
            with contextlib.suppress(Unsatisfiable):
                given(case=operation.as_strategy(generation_mode=mode))(quiet(probe(label)))()
    if stateful:
        run_stateful(schema, report, kwargs, excluded, stateful)
    report.seconds = time.perf_counter() - started
    return report


def run_stateful(
    schema: Any, report: FuzzReport, kwargs: dict[str, Any], excluded: list[Any], runs: int
) -> None:
    """Stateful runs: sequences of up to 6 calls that follow the links of linked_schema."""
    from hypothesis import HealthCheck, settings

    machine = schema.as_state_machine()

    class Checked(machine):  # type: ignore[misc, valid-type]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return dict(kwargs)

        def validate_response(self, response: Any, case: Any, *_: Any, **__: Any) -> None:
            label = f"{case.operation.method.upper()} {case.operation.path}"
            report.record(label, response.status_code)
            report.stateful_steps += 1
            try:
                case.validate_response(
                    response,
                    excluded_checks=excluded,
                    transport_kwargs=kwargs,
                    recorder=getattr(self, "recorder", None),
                )
            except Exception as err:  # noqa: BLE001
                report.fail(f"stateful {label}", err)

    Checked.run(
        settings=settings(
            max_examples=runs,
            stateful_step_count=6,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )


def print_report(report: FuzzReport, rss: tuple[float, float] | None) -> None:
    print(f"\n{report.total:,} requests in {report.seconds:.0f} s ({report.stateful_steps:,} "
          f"of them in stateful runs); failures: {len(report.failures)}")  # fmt: skip
    print("\n| operation | requests |\n|---|---:|")
    for label, count in sorted(report.cases.items()):
        print(f"| `{label}` | {count:,} |")
    print("\n| status | answers |\n|---:|---:|")
    for status, count in sorted(report.statuses.items()):
        print(f"| {status} | {count:,} |")
    if rss is not None:
        print(f"\nserver RSS: {rss[0]:.0f} MiB after warm-up, {rss[1]:.0f} MiB after the run")
    for key, message in report.failures.items():
        print(f"\nFAILURE {key}\n{message}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=400, help="cases per operation and mode")
    parser.add_argument("--stateful", type=int, default=150, help="stateful runs")
    parser.add_argument("--products", type=int, default=40)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mmsearch-fuzz-") as scratch:
        root = Path(scratch)
        model = write_model(root / "model")
        catalog = write_catalog(root / "shop", args.products)
        index = root / "index"
        mmsearch("index", "--catalog", catalog, "--model", model, "--index", index, "--quiet")
        with serve_child(index, args.port, (), root / "serve.log") as (base, process):
            before = rss_mib(process.pid)
            report = fuzz(base, examples=args.examples, stateful=args.stateful)
            after = rss_mib(process.pid)
            alive = httpx.get(f"{base}/health", timeout=CALL_TIMEOUT_S).status_code == 200
        print_report(report, (before, after))
        print(f"\nserver still answering /health after the run: {alive}")
        print("\n".join(["", *environment(),
                         "- command: python -m benchmarks.faults.fuzz_http "
                         f"--examples {args.examples} --stateful {args.stateful}"]))  # fmt: skip
        if report.failures or not alive:
            raise SystemExit(1)


if __name__ == "__main__":
    main()
