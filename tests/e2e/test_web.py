"""The search page in a real headless Chromium (Debian's chromium + chromedriver) against a real
uvicorn server: type a query, upload an image, filter a catalog, use an API key."""

from __future__ import annotations

import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

import pytest
from httpkit import index_photos, index_shop, open_app, run_server

from retrieval.config import ServeConfig

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
except ImportError:  # the browser fixture skips with the reason
    pass

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
# Offline and quiet: no first-run UI, no background downloads or sync that could reach out.
CHROME_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1280,1000",
)
WAIT_S = 20
T = TypeVar("T")


class Site(NamedTuple):
    """A served index: its base URL and the folder holding its source files."""

    base: str
    root: Path


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(
            f"needs Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}); on Debian: "
            "apt-get install chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in CHROME_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chrome-profile')}")
    # The console, where Chromium reports what a Content-Security-Policy blocked.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # An explicit driver path keeps Selenium Manager from looking for drivers online.
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def photo_site(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = index_photos(tiny_model, tmp_path_factory.mktemp("web-photos"))
    with open_app(directory) as (app, _), run_server(app) as base:
        yield Site(base, directory.parent)


@pytest.fixture(scope="module")
def shop_site(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    directory = index_shop(tiny_model, tmp_path_factory.mktemp("web-shop"))
    with open_app(directory) as (app, _), run_server(app) as base:
        yield Site(base, directory.parent)


def wait_for(driver: WebDriver, condition: Callable[[WebDriver], T]) -> T:
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # The page re-renders parts (facet panels, cards) as answers arrive: an element found a
    # moment ago may be gone; ask again rather than fail.
    return WebDriverWait(
        driver, WAIT_S, ignored_exceptions=(StaleElementReferenceException,)
    ).until(condition)


def loaded_cards(driver: WebDriver) -> list[WebElement]:
    """The result cards, once there are some and every thumbnail in them has loaded."""
    cards = driver.find_elements(By.CSS_SELECTOR, "#results li.card")
    loaded = driver.execute_script(
        "return [...document.querySelectorAll('#results img')]"
        ".every(img => img.complete && img.naturalWidth > 0)"
    )
    return cards if cards and loaded else []


def open_page(driver: WebDriver, site: Site, summary: str) -> None:
    driver.get(site.base)
    wait_for(driver, lambda d: summary in d.find_element(By.ID, "summary").text)


def search_for(driver: WebDriver, text: str) -> list[WebElement]:
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text + Keys.ENTER)
    return wait_for_results(driver)


def wait_for_results(driver: WebDriver) -> list[WebElement]:
    wait_for(driver, lambda d: RESULTS_STATUS.search(d.find_element(By.ID, "status").text))
    return wait_for(driver, loaded_cards)


RESULTS_STATUS = re.compile(r"\d+ results? for")


def shown_and_folded(cards: list[WebElement]) -> int:
    """Results on the page: each card plus the near-duplicates collapsed into it."""
    return sum(1 + int(card.get_attribute("data-duplicates") or 0) for card in cards)


def test_typing_a_query_shows_result_cards_with_thumbnails(
    browser: WebDriver, photo_site: Site
) -> None:
    open_page(browser, photo_site, "12 images")
    cards = search_for(browser, "a red shoe")
    assert shown_and_folded(cards) == 12  # duplicates are collapsed by default
    assert all("score" in card.text for card in cards)
    assert not browser.find_element(By.ID, "filters").is_displayed()


def test_uploading_an_image_finds_that_image_first(browser: WebDriver, photo_site: Site) -> None:
    open_page(browser, photo_site, "12 images")
    query = photo_site.root / "photos" / "img_005.png"
    browser.find_element(By.ID, "image-input").send_keys(str(query))
    wait_for(browser, lambda d: "img_005.png in" in d.find_element(By.ID, "status").text)
    cards = wait_for(browser, loaded_cards)
    assert cards[0].find_element(By.CSS_SELECTOR, ".title").text == query.name


def test_catalog_page_filters_and_shows_titles_and_prices(
    browser: WebDriver, shop_site: Site, tmp_path: Path
) -> None:
    open_page(browser, shop_site, "9 products")
    wait_for(browser, lambda d: d.find_element(By.ID, "filters").is_displayed())
    # The catalog is listed at once; its facets offer the values to tick (test_storefront.py).
    hats = ".facet[data-column=category] input[value=hats]"
    wait_for(browser, lambda d: d.find_element(By.CSS_SELECTOR, hats).click() or True)
    wait_for(browser, lambda d: "category: hats" in d.find_element(By.ID, "status").text)
    browser.find_element(By.CSS_SELECTOR, "[data-range=price_max]").send_keys("40" + Keys.TAB)
    wait_for(browser, lambda d: "price …–40" in d.find_element(By.ID, "status").text)
    cards = search_for(browser, "a hat")
    titles = [card.find_element(By.CSS_SELECTOR, ".title").text for card in cards]
    prices = [
        float(card.find_element(By.CSS_SELECTOR, ".price").get_attribute("data-value") or "nan")
        for card in cards
    ]
    assert sorted(titles) == ["hats model 2", "hats model 5"]  # price 20.5 and 35.5; 8 is 50.5
    assert all(price <= 40 for price in prices)
    browser.save_screenshot(str(tmp_path / "catalog.png"))
    assert (tmp_path / "catalog.png").stat().st_size > 10_000


def test_keyword_mode_finds_a_caption_and_shows_it_with_its_signal(
    browser: WebDriver, photo_site: Site
) -> None:
    from selenium.webdriver.support.ui import Select

    from retrieval.storage.catalog import Catalog

    captions = {"img_003.png": "zebra", "img_007.png": "a zebra on a beach"}
    catalog = Catalog(photo_site.root / "index" / "catalog.sqlite")
    items = [i for i in catalog.iter_items("images") if Path(i.path or "").name in captions]
    with catalog.transaction():  # as `index --captions` stores them
        for item in items:
            catalog.set_text(item.id, captions[Path(item.path or "").name])
    try:
        open_page(browser, photo_site, "12 images")
        Select(browser.find_element(By.ID, "mode")).select_by_value("keyword")
        cards = search_for(browser, "zebra")
        # BM25: the same one match, in a shorter text, ranks first
        assert [card.find_element(By.CSS_SELECTOR, ".title").text for card in cards] == list(
            captions
        )
        assert [card.find_element(By.CSS_SELECTOR, ".caption").text for card in cards] == list(
            captions.values()
        )
        assert [card.find_element(By.CSS_SELECTOR, ".signals").text for card in cards] == [
            "keyword #1",
            "keyword #2",
        ]
        Select(browser.find_element(By.ID, "mode")).select_by_value("semantic")
        cards = search_for(browser, "zebra")
        # near-duplicates are collapsed by default (the random model folds most of them)
        assert shown_and_folded(cards) == 12
        assert not any(card.find_element(By.CSS_SELECTOR, ".signals").text for card in cards)
    finally:
        with catalog.transaction():
            for item in items:
                catalog.set_text(item.id, None)
        catalog.close()


def test_with_an_api_key_the_browser_logs_in_with_basic_auth_and_the_page_works(
    browser: WebDriver, photo_site: Site
) -> None:
    directory = photo_site.root / "index"
    with open_app(directory, ServeConfig(api_key="page-key")) as (app, _), run_server(app) as base:
        # Without credentials the page itself is refused (401, Basic challenge): no summary.
        browser.get(base)
        assert browser.find_elements(By.ID, "summary") == []
        # user:key@host is what a browser's login prompt amounts to: Chromium answers the
        # challenge with them and sends them again on every same-origin request after.
        browser.get(base.replace("http://", "http://anyone:page-key@") + "/")
        wait_for(browser, lambda d: "12 images" in d.find_element(By.ID, "summary").text)
        cards = search_for(browser, "a blue hat")  # fetch() and the thumbnails' <img> too
        assert shown_and_folded(cards) == 12
        # The docs, same login: Swagger UI's files come from this server too (docs.py).
        browser.get(base + "/docs")
        wait_for(browser, lambda d: "mmsearch" in swagger_title(d))
        browser.get(base + "/openapi.json")
        assert '"/search"' in browser.find_element(By.TAG_NAME, "body").text


def swagger_title(driver: WebDriver) -> str:
    titles = driver.find_elements(By.CSS_SELECTOR, ".swagger-ui .info .title")
    return titles[0].text if titles else ""


def test_the_page_and_the_docs_work_under_their_content_security_policies(
    browser: WebDriver, photo_site: Site
) -> None:
    browser.get_log("browser")  # start from an empty console
    open_page(browser, photo_site, "12 images")
    assert shown_and_folded(search_for(browser, "a red shoe")) == 12
    browser.get(photo_site.base + "/docs")  # Swagger UI, served by this server
    wait_for(browser, lambda d: "mmsearch" in swagger_title(d))
    browser.find_element(By.CSS_SELECTOR, ".opblock-summary").click()  # expands an operation
    wait_for(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".opblock-body"))
    browser.get(photo_site.base + "/redoc")  # ReDoc renders the schema with its own styles
    wait_for(browser, lambda d: "mmsearch" in d.find_element(By.TAG_NAME, "body").text)
    wait_for(browser, lambda d: "/search" in d.find_element(By.TAG_NAME, "body").text)
    blocked = [
        entry["message"]
        for entry in browser.get_log("browser")
        if "Content Security Policy" in entry["message"] or "Refused to" in entry["message"]
    ]
    # Only loads from elsewhere are blocked (ReDoc's footer logo lives on its makers' CDN);
    # nothing of this origin's and no inline script or style that the pages need.
    assert all(re.search(r"'https?://(?!127\.0\.0\.1)", message) for message in blocked), blocked


# -- refinements: chips, collapsed duplicates, min score, uniform thumbnails -------------------
def card_ids(cards: list[WebElement]) -> list[int]:
    return [int(card.get_attribute("data-id") or -1) for card in cards]


def wait_for_label(driver: WebDriver, needle: str, present: bool = True) -> list[WebElement]:
    """Results of the search whose status names (or no longer names) `needle`."""

    def done(d: WebDriver) -> bool:
        status = d.find_element(By.ID, "status").text
        return bool(RESULTS_STATUS.search(status)) and (needle in status) == present

    wait_for(driver, done)
    return wait_for(driver, loaded_cards)


def api_ids(site: Site, body: dict) -> list[int]:
    import httpx

    answer = httpx.post(f"{site.base}/search", json={"k": 24, **body}, timeout=WAIT_S)
    assert answer.status_code == 200, answer.text
    return [hit["id"] for hit in answer.json()["results"]]


def set_collapse(driver: WebDriver, on: bool) -> None:
    box = driver.find_element(By.ID, "collapse")
    if box.is_selected() != on:
        box.click()


def test_more_and_less_like_this_chips_compose_the_query(
    browser: WebDriver, photo_site: Site
) -> None:
    open_page(browser, photo_site, "12 images")
    set_collapse(browser, False)
    cards = search_for(browser, "a red shoe")
    ids = card_ids(cards)
    names = [card.find_element(By.CSS_SELECTOR, ".title").text for card in cards]
    cards[3].find_element(By.CSS_SELECTOR, ".more-like").click()
    cards = wait_for_label(browser, f"+{names[3]}")
    text = {"text": "a red shoe"}
    assert card_ids(cards) == api_ids(photo_site, {"parts": [text, {"item": ids[3]}]})
    other = next(card for card in cards if int(card.get_attribute("data-id") or -1) == ids[6])
    other.find_element(By.CSS_SELECTOR, ".less-like").click()
    cards = wait_for_label(browser, f"−{names[6]}")
    both = [text, {"item": ids[3], "weight": 1}, {"item": ids[6], "weight": -0.5}]
    assert card_ids(cards) == api_ids(photo_site, {"parts": both})
    chips = browser.find_elements(By.CSS_SELECTOR, "#chips li.chip")
    assert [chip.get_attribute("data-item") for chip in chips] == [str(ids[3]), str(ids[6])]
    assert "negative" in (chips[1].get_attribute("class") or "")
    chips[0].find_element(By.CSS_SELECTOR, ".remove-chip").click()
    cards = wait_for_label(browser, f"+{names[3]}", present=False)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#chips li.chip")) == 1
    assert card_ids(cards) == api_ids(photo_site, {"parts": [text, both[2]]})
    browser.find_element(By.CSS_SELECTOR, "#chips .remove-chip").click()


def test_duplicates_are_collapsed_by_default_and_min_score_cuts(
    browser: WebDriver, photo_site: Site
) -> None:
    open_page(browser, photo_site, "12 images")
    assert browser.find_element(By.ID, "collapse").is_selected()
    cards = search_for(browser, "a cat")
    import httpx

    collapsed = httpx.get(f"{photo_site.base}/search", params={"q": "a cat", "k": 24,
                          "collapse": "true"}).json()["results"]  # fmt: skip
    assert card_ids(cards) == [hit["id"] for hit in collapsed]
    folded = [int(card.get_attribute("data-duplicates") or 0) for card in cards]
    assert folded == [len(hit["duplicates"]) for hit in collapsed]
    assert sum(folded) > 0  # the tiny model's noise images are near-duplicates at 0.95
    badge = cards[folded.index(max(folded))].find_element(By.CSS_SELECTOR, ".dup-count").text
    assert badge.startswith(f"+{max(folded)} near-duplicate")
    set_collapse(browser, False)  # re-runs the search
    cards = wait_for(browser, lambda d: (c := loaded_cards(d)) and len(c) == 12 and c)
    full = api_ids(photo_site, {"text": "a cat"})
    assert card_ids(cards) == full
    scores = httpx.get(f"{photo_site.base}/search", params={"q": "a cat"}).json()["results"]
    cut = scores[4]["score"]
    browser.find_element(By.ID, "min-score").send_keys(str(cut))
    cards = search_for(browser, "a cat")
    wait_for(
        browser,
        lambda d: (
            len(loaded_cards(d)) == len(api_ids(photo_site, {"text": "a cat", "min_score": cut}))
        ),
    )
    assert card_ids(loaded_cards(browser)) == api_ids(
        photo_site, {"text": "a cat", "min_score": cut}
    )
    browser.find_element(By.ID, "min-score").clear()
    set_collapse(browser, True)


def test_portrait_and_landscape_thumbnails_get_the_same_box(
    browser: WebDriver, tiny_model: str, tmp_path: Path
) -> None:
    from clirun import run_ok
    from testdata import make_images

    make_images(tmp_path / "mixed", 3, seed=5, size=(30, 120))  # tall portraits
    for n, path in enumerate(make_images(tmp_path / "wide", 3, seed=6, size=(160, 40))):
        path.rename(tmp_path / "mixed" / f"wide_{n}.png")
    run_ok("index", tmp_path / "mixed", "--model", tiny_model, "--index", tmp_path / "ix",
           "--quiet")  # fmt: skip
    with open_app(tmp_path / "ix") as (app, _), run_server(app) as base:
        browser.get(base)
        wait_for(browser, lambda d: "6 images" in d.find_element(By.ID, "summary").text)
        set_collapse(browser, False)
        cards = search_for(browser, "anything")
        assert len(cards) == 6
        boxes = browser.execute_script(
            "return [...document.querySelectorAll('#results .card')].map(card => {"
            " const t = card.querySelector('.thumb').getBoundingClientRect();"
            " const i = card.querySelector('.thumb img').getBoundingClientRect();"
            " return [t.width, t.height, i.width, i.height, card.getBoundingClientRect().height];"
            "})"
        )
        assert len({tuple(round(v) for v in box) for box in boxes}) == 1, boxes
        width, height = boxes[0][:2]
        assert abs(width - height) <= 1  # square boxes, image filling each
        set_collapse(browser, True)
