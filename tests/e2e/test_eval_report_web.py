"""The `mmsearch eval --report` page in a real headless Chromium: its plots decode and its tables
render (skips where Chromium is absent, like test_web.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from conftest import make_images
from test_web import browser  # noqa: F401 (the fixture: headless Chromium, or a skip)
from typer.testing import CliRunner

from retrieval.cli import app

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

pytestmark = pytest.mark.browser


def test_report_plots_decode_and_tables_render(
    browser: WebDriver,  # noqa: F811
    tiny_model: str,
    tmp_path: Path,
) -> None:
    from selenium.webdriver.common.by import By

    images = make_images(tmp_path / "pics", 5)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("image,caption\n" + "".join(f"{p},thing {i}\n" for i, p in enumerate(images)))
    report = tmp_path / "report.html"
    args = [
        "eval",
        str(pairs),
        "--model",
        tiny_model,
        "-q",
        "--robustness",
        "--report",
        str(report),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    browser.get(report.as_uri())
    decoded = browser.execute_script(
        "return [...document.images].map(img => img.complete && img.naturalWidth > 0)"
    )
    assert decoded == [True, True, True]  # two Recall@K plots and the robustness bars
    tables = browser.find_elements(By.TAG_NAME, "table")
    assert len(tables) == 3
    first = [cell.text for cell in tables[0].find_elements(By.TAG_NAME, "th")]
    assert first[:3] == ["direction", "search", "R@1"]
    rows = tables[0].find_elements(By.CSS_SELECTOR, "tbody tr")
    assert len(rows) == 4 and rows[0].find_elements(By.TAG_NAME, "td")[1].text == "exact"
