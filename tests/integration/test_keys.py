"""Scoped API keys (`mmsearch keys`) and the audit log (`mmsearch audit`, GET /audit): 401
without a key on every route but /health, 403 for too small a scope, hashes only on disk,
every product change audited with its key's name."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from clirun import invoke, run_ok
from fastapi.testclient import TestClient
from httpkit import index_shop, open_app

from retrieval.config import ServeConfig
from retrieval.http import keys as http_keys


@pytest.fixture
def shop_index(tiny_model: str, tmp_path: Path) -> Path:
    return index_shop(tiny_model, tmp_path)


def create_key(directory: Path, scope: str, name: str) -> str:
    out = run_ok("keys", "create", "--scope", scope, "--name", name, "--index", directory, "--json")
    return json.loads(out)["key"]


@pytest.fixture
def keyed(shop_index: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[TestClient, dict]]:
    monkeypatch.setattr(http_keys, "KEYS_TTL_S", 0.0)
    found = {
        scope: create_key(shop_index, scope, f"{scope}-key") for scope in ("read", "write", "admin")
    }
    with open_app(shop_index) as (app, _), TestClient(app) as client:
        yield client, found


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_stored_as_hashes_and_listed_without_them(shop_index: Path) -> None:
    key = create_key(shop_index, "write", "warehouse")
    listed = json.loads(run_ok("keys", "list", "--index", shop_index, "--json"))
    assert [(k["name"], k["scope"], k["revoked"]) for k in listed] == [("warehouse", "write", None)]
    raw = (shop_index / "catalog.sqlite").read_bytes()
    assert key.encode() not in raw
    db = sqlite3.connect(shop_index / "catalog.sqlite")
    assert key not in json.dumps(db.execute("SELECT * FROM api_keys").fetchall())
    again = invoke(
        "keys", "create", "--scope", "read", "--name", "warehouse", "--index", shop_index
    )
    assert again.exit_code == 2 and "exists" in again.stderr
    bad = invoke("keys", "create", "--scope", "root", "--index", shop_index)
    assert bad.exit_code == 2 and "read, write, admin" in bad.stderr


def test_every_route_but_health_needs_a_key_once_the_index_has_one(
    keyed: tuple[TestClient, dict],
) -> None:
    client, _ = keyed
    spec = client.get("/openapi.json", headers=auth(keyed[1]["read"])).json()
    assert client.get("/health").status_code == 200
    checked = 0
    for path, methods in spec["paths"].items():
        if path == "/health":
            continue
        url = path.replace("{item_id}", "1").replace("{sku}", "SKU-000")
        for method in methods:
            answer = client.request(method.upper(), url)
            assert answer.status_code == 401, (method, path, answer.text)
            wrong = client.request(method.upper(), url, headers=auth("mms_wrong"))
            assert wrong.status_code == 401 and "not valid" in wrong.text
            checked += 1
    assert checked >= 15


@pytest.mark.parametrize(
    ("method", "path", "body", "needed"),
    [
        ("get", "/search?q=x", None, "read"),
        ("get", "/products/SKU-000", None, "read"),
        ("put", "/products/K-1", {"title": "keyed"}, "write"),
        ("patch", "/products/SKU-000", {"price": 2}, "write"),
        ("delete", "/products/SKU-008", None, "write"),
        ("post", "/products/bulk", None, "write"),
        ("put", "/schema", {"colour": "keyword"}, "write"),
        ("get", "/audit", None, "admin"),
    ],
)
def test_scopes_are_403_below_what_a_route_needs(
    keyed: tuple[TestClient, dict], method: str, path: str, body: dict | None, needed: str
) -> None:
    client, found = keyed
    order = ["read", "write", "admin"]
    for scope in order:
        answer = client.request(method.upper(), path, json=body, headers=auth(found[scope]))
        if order.index(scope) < order.index(needed):
            assert answer.status_code == 403, answer.text
            assert answer.json()["error"] == "forbidden" and needed in answer.json()["message"]
        else:
            # allowed: anything but 401/403 (a second DELETE of one SKU is rightly a 404)
            assert answer.status_code not in (401, 403), (scope, answer.text)
            assert answer.status_code < 400 or (method, answer.status_code) == ("delete", 404)


def test_changes_are_audited_with_the_key_name_and_request_id(
    keyed: tuple[TestClient, dict], shop_index: Path
) -> None:
    client, found = keyed
    write = auth(found["write"])
    client.put("/products/A-1", json={"title": "audited"}, headers={**write, "X-Request-ID": "r-1"})
    client.patch("/products/A-1", json={"price": 3}, headers=write)
    client.patch("/products/A-1", json={"price": "cheap"}, headers=write)
    client.delete("/products/A-1", headers=write)
    entries = client.get("/audit", headers=auth(found["admin"])).json()["entries"]
    assert {e["action"] for e in entries if e["key_name"].startswith("cli:")} == {"import"}
    entries = [e for e in entries if not e["key_name"].startswith("cli:")]
    got = [(e["key_name"], e["action"], e["sku"], e["outcome"]) for e in entries]
    assert got == [
        ("write-key", "put", "A-1", "created"),
        ("write-key", "patch", "A-1", "replaced"),
        ("write-key", "patch", "A-1", "failed"),
        ("write-key", "delete", "A-1", "deleted"),
    ]
    assert entries[0]["request_id"] == "r-1" and entries[1]["request_id"]
    assert "number column" in entries[2]["detail"]
    assert all(found["write"] not in json.dumps(e) for e in entries)
    lines = run_ok("audit", "--index", shop_index, "--json").splitlines()
    actions = [json.loads(line)["action"] for line in lines]
    assert actions[-4:] == ["put", "patch", "patch", "delete"]
    later = run_ok("audit", "--index", shop_index, "--since", str(entries[-1]["time"] + 1))
    assert later == ""


def test_cli_imports_are_audited(tiny_model: str, tmp_path: Path) -> None:
    from testdata import write_catalog

    path = write_catalog(tmp_path / "shop", count=2)
    run_ok("index", "--catalog", path, "--model", tiny_model, "-q")
    lines = [json.loads(line) for line in run_ok("audit", "--json").splitlines()]
    assert {(e["action"], e["outcome"]) for e in lines} == {("import", "created")}
    assert all(e["key_name"].startswith("cli:") for e in lines)


def test_revoked_keys_stop_working_and_api_key_stays_admin(
    keyed: tuple[TestClient, dict], shop_index: Path
) -> None:
    client, found = keyed
    assert client.get("/stats", headers=auth(found["read"])).status_code == 200
    run_ok("keys", "revoke", "read-key", "--index", shop_index)
    assert client.get("/stats", headers=auth(found["read"])).status_code == 401
    config = ServeConfig(api_key="single-admin-key")
    with open_app(shop_index, config) as (app, _), TestClient(app) as admin:
        assert admin.get("/audit", headers=auth("single-admin-key")).status_code == 200
        assert admin.get("/audit", headers=auth(found["write"])).status_code == 403
