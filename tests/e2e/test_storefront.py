"""The storefront page (the search page over a product catalog) in a real headless Chromium, at a
desktop (1280 px) and a phone (360 px) width, against a real server with `--currency EUR`:
product cards, facets with counts, sort, pages, the debug toggle, the layout at 360 px, and
upload + more-like-this keeping the query the user sees."""

from __future__ import annotations

import base64
import csv
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import httpx
import pytest
import test_web
from clirun import run_ok
from httpkit import open_app, run_server
from test_web import WAIT_S, Site, wait_for
from testdata import make_images

from retrieval.config import ServeConfig

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.remote.webelement import WebElement

try:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select
except ImportError:  # the browser fixture skips with the reason
    pass

pytestmark = pytest.mark.browser
# test_web's fixture (headless Chromium, or a skip), shared rather than copied.
browser = test_web.browser

DESKTOP, PHONE = 1280, 360
WIDTHS = pytest.mark.parametrize("width", [DESKTOP, PHONE], ids=["desktop", "phone"])
CATEGORIES = ("dogs", "cats", "wildlife")
BRANDS = ("acme", "zenith", "orbit")
# 30 products: 10 per category, brands spread unevenly over categories, distinct prices (37 and
# 100 are coprime), every fourth product out of stock.
ROWS: list[dict[str, Any]] = [
    {
        "id": f"SKU-{n:03d}",
        "title": f"{CATEGORIES[n % 3]} poster {n}",
        "category": CATEGORIES[n % 3],
        "brand": BRANDS[(n // 2) % 3],
        "price": (n * 37) % 100 + 0.5,
        "in_stock": n % 4 != 0,
        "code": f"M{n:02d}",  # 30 values: a facet of the top 20 and `other`
    }
    for n in range(30)
]
BY_SKU = {row["id"]: row for row in ROWS}


@pytest.fixture(scope="module")
def store(tiny_model: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("storefront")
    images = make_images(root / "img", 2 * len(ROWS), seed=11)
    with open(root / "products.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*ROWS[0], "image"])
        writer.writeheader()
        for n, row in enumerate(ROWS):
            pair = f"img/{images[2 * n].name}|img/{images[2 * n + 1].name}"
            in_stock = "true" if row["in_stock"] else "false"
            writer.writerow({**row, "in_stock": in_stock, "image": pair})
    directory = root / "index"
    run_ok("index", "--catalog", root / "products.csv", "--model", tiny_model, "--index",
           directory, "--quiet")  # fmt: skip
    with open_app(directory, ServeConfig(currency="EUR")) as (app, _), run_server(app) as base:
        yield Site(base, root)


@pytest.fixture(autouse=True)
def desktop_after(browser: WebDriver) -> Iterator[None]:
    """Each test leaves the browser at test_web's window size (its tests may share it)."""
    yield
    browser.set_window_size(1280, 1000)


# -- helpers -------------------------------------------------------------------------------------
def open_store(driver: WebDriver, site: Site, width: int) -> None:
    """The page at `width` px, once it has listed the catalog (a browse with no query)."""
    driver.set_window_size(width, 900)
    driver.get(site.base)
    wait_for(driver, lambda d: "30 products" in d.find_element(By.ID, "summary").text)
    wait_for_status(driver, "all products")


# Every image above the fold has loaded (a phone's lower cards load lazily, when scrolled to).
IMAGES_SHOWN = (
    "[...document.querySelectorAll('#results img')].every(img => (img.complete &&"
    " img.naturalWidth > 0) || img.getBoundingClientRect().top > innerHeight)"
)


def loaded_cards(driver: WebDriver) -> list[WebElement]:
    """The result cards, once there are some and the images on screen have loaded."""
    cards = driver.find_elements(By.CSS_SELECTOR, "#results li.card")
    return cards if cards and driver.execute_script(f"return {IMAGES_SHOWN}") else []


def wait_for_status(driver: WebDriver, needle: str) -> list[WebElement]:
    """The cards of the answer whose status line names `needle`, once their images loaded."""

    def done(d: WebDriver) -> bool:
        status = d.find_element(By.ID, "status").text
        return " results for " in status and needle in status

    wait_for(driver, done)
    return wait_for(driver, loaded_cards)


def search(driver: WebDriver, text: str) -> list[WebElement]:
    box = driver.find_element(By.ID, "query")
    box.clear()
    box.send_keys(text + Keys.ENTER)
    return wait_for_status(driver, f"“{text}”")


def skus(cards: list[WebElement]) -> list[str]:
    return [card.get_attribute("data-sku") or "" for card in cards]


def shown(driver: WebDriver, field: str) -> list[Any]:
    """The SKUs (`sku`) or prices (`price`) of the cards on the page, read in one script (cards
    are redrawn by every answer), once their images have loaded; [] before."""
    return driver.execute_script(
        "const cards = [...document.querySelectorAll('#results li.card')];"
        f"if (!({IMAGES_SHOWN})) return [];"
        "return cards.map(card => arguments[0] === 'sku' ? card.dataset.sku"
        " : Number(card.querySelector('.price').dataset.value));",
        field,
    )


def facet_counts(driver: WebDriver, column: str) -> dict[str, int]:
    """value -> count as the facet panel shows them."""
    return driver.execute_script(
        "return Object.fromEntries([...document.querySelectorAll("
        f"'.facet[data-column={column}] .facet-value')].map(row => "
        "[row.querySelector('input').value, Number(row.querySelector('.count').textContent)]))"
    )


def tick(driver: WebDriver, column: str, value: str) -> None:
    selector = f".facet[data-column={column}] input[value='{value}']"
    if driver.find_elements(By.CSS_SELECTOR, "#filter-box:not([open])"):
        driver.find_element(By.CSS_SELECTOR, "#filter-box summary").click()  # phones: folded
    driver.find_element(By.CSS_SELECTOR, selector).click()


def overflow(driver: WebDriver) -> dict[str, float]:
    return driver.execute_script(
        "const b = document.getElementById('search-button').getBoundingClientRect();"
        "const q = document.getElementById('query').getBoundingClientRect();"
        "return {scroll: document.documentElement.scrollWidth, inner: innerWidth,"
        " button: b.right, query: q.width};"
    )


def facet_columns(site: Site) -> list[str]:
    """The columns the page asks facets of: all but the title, in the schema's order."""
    columns = httpx.get(f"{site.base}/stats", timeout=WAIT_S).json()["product_columns"]
    return [column for column in columns if column != "title"]


def api_search(site: Site, body: dict[str, Any]) -> list[str]:
    answer = httpx.post(f"{site.base}/search", json=body, timeout=WAIT_S)
    assert answer.status_code == 200, answer.text
    return [hit["product_id"] for hit in answer.json()["results"]]


# -- cards ----------------------------------------------------------------------------------------
@WIDTHS
def test_cards_show_main_image_brand_price_in_currency_stock_and_sku(
    browser: WebDriver, store: Site, width: int, tmp_path: Path
) -> None:
    open_store(browser, store, width)
    cards = search(browser, "wildlife poster")
    assert len(cards) == 24
    for card in cards:
        sku = card.get_attribute("data-sku") or ""
        row = BY_SKU[sku]
        product = httpx.get(f"{store.base}/products/{sku}", timeout=WAIT_S).json()
        main = card.find_element(By.CSS_SELECTOR, "img.main-image").get_attribute("src") or ""
        # the first listed image, whichever photo matched
        assert main.endswith(f"/items/{product['images'][0]['item_id']}/image?size=256")
        assert card.find_element(By.CSS_SELECTOR, ".brand").text.lower() == row["brand"]
        price = card.find_element(By.CSS_SELECTOR, ".price")
        assert "€" in price.text and float(price.get_attribute("data-value") or 0) == row["price"]
        stock = card.find_element(By.CSS_SELECTOR, ".stock").text
        assert stock == ("In stock" if row["in_stock"] else "Out of stock")
        assert card.find_element(By.CSS_SELECTOR, ".sku").text == f"SKU {sku}"
        assert not card.find_element(By.CSS_SELECTOR, ".score").is_displayed()
    browser.save_screenshot(str(tmp_path / f"cards-{width}.png"))
    assert (tmp_path / f"cards-{width}.png").stat().st_size > 10_000


def test_a_matching_photo_other_than_the_main_one_is_a_hint_on_the_card(
    browser: WebDriver, store: Site
) -> None:
    open_store(browser, store, DESKTOP)
    second = store.root / "img" / "img_003.png"  # SKU-001's second image
    browser.find_element(By.ID, "image-input").send_keys(str(second))
    cards = wait_for_status(browser, second.name)
    assert skus(cards)[0] == "SKU-001"
    hint = cards[0].find_element(By.CSS_SELECTOR, "img.match-hint").get_attribute("src") or ""
    main = cards[0].find_element(By.CSS_SELECTOR, "img.main-image").get_attribute("src") or ""
    product = httpx.get(f"{store.base}/products/SKU-001", timeout=WAIT_S).json()
    assert main.endswith(f"/items/{product['images'][0]['item_id']}/image?size=256")
    assert f"/items/{product['images'][1]['item_id']}/image" in hint


def test_debug_toggle_shows_and_hides_scores_signals_and_search_settings(
    browser: WebDriver, store: Site
) -> None:
    open_store(browser, store, DESKTOP)
    cards = search(browser, "dogs poster")
    assert not any(debug_shown(cards)) and not browser.find_element(By.ID, "mode").is_displayed()
    browser.find_element(By.ID, "debug").click()
    assert all(debug_shown(cards))
    Select(browser.find_element(By.ID, "mode")).select_by_value("hybrid")
    cards = search(browser, "dogs poster")
    page = {"k": 24, "mode": "hybrid", "collapse": "true", "text_weight": 0.5}
    page["facets"] = ",".join(facet_columns(store))  # as the page asks
    answer = httpx.get(f"{store.base}/search", params={"q": "dogs poster", **page})
    assert answer.status_code == 200, answer.text
    expected = [
        f"score {hit['score']:.3f} " + " · ".join(f"{k} #{v}" for k, v in hit["signals"].items())
        for hit in answer.json()["results"]
    ]
    shown = [
        " ".join(card.find_element(By.CSS_SELECTOR, ".debug-info").text.split()) for card in cards
    ]
    assert shown == [text.strip() for text in expected]
    assert any("keyword #" in text for text in shown)  # hybrid: both rankings are named
    Select(browser.find_element(By.ID, "mode")).select_by_value("")
    browser.find_element(By.ID, "debug").click()
    assert not any(debug_shown(cards)) and not browser.find_element(By.ID, "mode").is_displayed()


def test_searching_a_catalogs_images_asks_no_facets_or_sort(
    browser: WebDriver, store: Site
) -> None:
    open_store(browser, store, DESKTOP)
    Select(browser.find_element(By.ID, "sort")).select_by_value("price:asc")
    browser.find_element(By.ID, "debug").click()
    Select(browser.find_element(By.ID, "target")).select_by_value("images")
    assert not browser.find_element(By.ID, "sort").is_displayed()
    cards = search(browser, "dogs poster")  # facets and sort are for products: not sent
    assert len(cards) == 24 and all(sku in BY_SKU for sku in skus(cards))
    answer = httpx.get(f"{store.base}/search", params={"q": "dogs poster", "k": 24,
                       "target": "images", "collapse": "true"}).json()["results"]  # fmt: skip
    assert [int(card.get_attribute("data-id") or -1) for card in cards] == [h["id"] for h in answer]
    Select(browser.find_element(By.ID, "target")).select_by_value("")
    wait_for_status(browser, "“dogs poster”")


def debug_shown(cards: list[WebElement]) -> list[bool]:
    return [card.find_element(By.CSS_SELECTOR, ".debug-info").is_displayed() for card in cards]


# -- layout ---------------------------------------------------------------------------------------
@WIDTHS
def test_nothing_overflows_the_width_and_the_search_button_stays_on_screen(
    browser: WebDriver, store: Site, width: int, tmp_path: Path
) -> None:
    open_store(browser, store, width)
    browser.find_element(By.ID, "image-input").send_keys(str(store.root / "img" / "img_010.png"))
    wait_for_status(browser, "img_010.png")  # a chip with a long name in the query row
    cards = wait_for(browser, loaded_cards)
    cards[0].find_element(By.CSS_SELECTOR, ".more-like").click()
    wait_for_status(browser, "+")
    if width == PHONE:
        browser.find_element(By.CSS_SELECTOR, "#filter-box summary").click()  # unfold filters
    sizes = overflow(browser)
    assert sizes["scroll"] <= sizes["inner"] == width, sizes
    assert sizes["button"] <= width and sizes["query"] >= 120, sizes
    browser.save_screenshot(str(tmp_path / f"layout-{width}.png"))


# -- query parts ----------------------------------------------------------------------------------
def test_upload_then_more_like_this_keeps_the_image_and_adds_no_hidden_text(
    browser: WebDriver, store: Site
) -> None:
    open_store(browser, store, DESKTOP)
    search(browser, "cats poster")
    photo = store.root / "img" / "img_020.png"
    browser.find_element(By.ID, "image-input").send_keys(str(photo))
    cards = wait_for_status(browser, photo.name)
    assert (
        browser.find_element(By.ID, "query").get_attribute("value") == ""
    )  # the image is the query
    chips = browser.find_elements(By.CSS_SELECTOR, "#chips li.chip")
    assert [chip.text.replace("×", "").strip() for chip in chips] == [f"image {photo.name}"]
    image = base64.b64encode(photo.read_bytes()).decode()
    page = {"k": 24, "collapse": True, "facets": facet_columns(store)}  # as the page asks
    assert skus(cards) == api_search(store, {**page, "image_b64": image})
    liked = cards[2]
    title = liked.find_element(By.CSS_SELECTOR, ".title").text
    item = int(liked.get_attribute("data-id") or -1)
    liked.find_element(By.CSS_SELECTOR, ".more-like").click()
    cards = wait_for_status(browser, f"+{title}")
    status = browser.find_element(By.ID, "status").text
    assert photo.name in status and "“" not in status  # no text part
    chips = browser.find_elements(By.CSS_SELECTOR, "#chips li.chip")
    assert len(chips) == 2 and photo.name in chips[0].text and title in chips[1].text
    parts = [{"image_b64": image}, {"item": item, "weight": 1}]
    assert skus(cards) == api_search(store, {**page, "parts": parts})
    while removers := browser.find_elements(By.CSS_SELECTOR, "#chips .remove-chip"):
        removers[0].click()  # each click draws the chips again
    wait_for_status(browser, "all products")


# -- facets, sort, pages (the merchandising API) -------------------------------------------------
@WIDTHS
def test_a_facet_checkbox_narrows_the_results_and_the_counts(
    browser: WebDriver, store: Site, width: int
) -> None:
    open_store(browser, store, width)
    assert facet_counts(browser, "category") == dict(Counter(row["category"] for row in ROWS))
    codes = facet_counts(browser, "code")
    assert len(codes) == 20 and set(codes.values()) == {1}
    other = browser.find_element(By.CSS_SELECTOR, ".facet[data-column=code] .facet-other")
    assert other.get_attribute("textContent") == "10 in other values"
    if width == PHONE:
        browser.find_element(By.CSS_SELECTOR, "#filter-box summary").click()  # unfold filters
    rows = browser.find_elements(By.CSS_SELECTOR, ".facet[data-column=code] .facet-value")
    assert [row.is_displayed() for row in rows] == [True] * 8 + [False] * 12
    fold = browser.find_element(By.CSS_SELECTOR, ".facet[data-column=code] .fold")
    assert fold.text == "Show 12 more"
    fold.click()
    assert all(row.is_displayed() for row in rows) and fold.text == "Show fewer"
    fold.click()
    tick(browser, "category", "dogs")
    cards = wait_for_status(browser, "category: dogs")
    dogs = [row for row in ROWS if row["category"] == "dogs"]
    assert sorted(skus(cards)) == sorted(row["id"] for row in dogs)
    assert browser.find_element(By.ID, "status").text.startswith(f"{len(dogs)} results")
    assert facet_counts(browser, "brand") == dict(Counter(row["brand"] for row in dogs))
    # a facet leaves out its own filter: the other categories are still there to add (OR)
    assert facet_counts(browser, "category") == dict(Counter(row["category"] for row in ROWS))
    tick(browser, "category", "cats")
    cards = wait_for_status(browser, "category: dogs or cats")
    both = [row["id"] for row in ROWS if row["category"] in ("dogs", "cats")]
    assert sorted(skus(cards)) == sorted(both)
    stock = facet_counts(browser, "in_stock")
    assert stock == {
        str(flag).lower(): sum(row["in_stock"] == flag for row in ROWS if row["id"] in both)
        for flag in (True, False)
    }
    browser.find_element(By.ID, "clear-filters").click()
    wait_for_status(browser, "all products")


def test_a_price_range_keeps_only_products_inside_it(browser: WebDriver, store: Site) -> None:
    open_store(browser, store, DESKTOP)
    low = browser.find_element(By.CSS_SELECTOR, "[data-range=price_min]")
    low.send_keys("20" + Keys.TAB)
    wait_for_status(browser, "price 20–…")
    high = browser.find_element(By.CSS_SELECTOR, "[data-range=price_max]")
    high.send_keys("40" + Keys.TAB)
    cards = wait_for_status(browser, "price 20–40")
    inside = sorted(row["id"] for row in ROWS if 20 <= row["price"] <= 40)
    assert sorted(skus(cards)) == inside
    browser.find_element(By.ID, "clear-filters").click()
    wait_for_status(browser, "all products")


@WIDTHS
def test_sort_by_price_orders_the_cards(browser: WebDriver, store: Site, width: int) -> None:
    open_store(browser, store, width)
    menu = Select(browser.find_element(By.ID, "sort"))
    all_prices = sorted(row["price"] for row in ROWS)
    menu.select_by_value("price:asc")
    wait_for(browser, lambda d: shown(d, "price") == all_prices[:24])
    menu.select_by_value("price:desc")
    wait_for(browser, lambda d: shown(d, "price") == all_prices[::-1][:24])
    search(browser, "dogs poster")  # a query keeps the chosen order
    assert shown(browser, "price") == sorted(shown(browser, "price"), reverse=True)
    menu.select_by_value("")
    browser.find_element(By.ID, "query").clear()


def test_next_and_previous_pages_with_a_total(browser: WebDriver, store: Site) -> None:
    open_store(browser, store, DESKTOP)
    k = browser.find_element(By.ID, "k")
    k.clear()
    k.send_keys("8")
    Select(browser.find_element(By.ID, "sort")).select_by_value("price:asc")
    by_price = [row["id"] for row in sorted(ROWS, key=lambda row: row["price"])]
    wait_for(browser, lambda d: shown(d, "sku") == by_price[:8])
    info = browser.find_element(By.ID, "page-info")
    assert info.text == "1–8 of 30 · page 1 of 4"
    assert not browser.find_element(By.ID, "prev-page").is_enabled()
    browser.find_element(By.ID, "next-page").click()
    wait_for(browser, lambda d: shown(d, "sku") == by_price[8:16])
    assert info.text == "9–16 of 30 · page 2 of 4"
    for _ in range(2):
        browser.find_element(By.ID, "next-page").click()
    wait_for(browser, lambda d: shown(d, "sku") == by_price[24:])
    assert info.text == "25–30 of 30 · page 4 of 4"
    assert not browser.find_element(By.ID, "next-page").is_enabled()
    browser.find_element(By.ID, "prev-page").click()
    wait_for(browser, lambda d: shown(d, "sku") == by_price[16:24])
    k.clear()
    k.send_keys("24")
    Select(browser.find_element(By.ID, "sort")).select_by_value("")


def test_the_address_holds_the_search_and_opens_it_again(browser: WebDriver, store: Site) -> None:
    shared = "?q=poster&f.category=dogs&f.category=cats&f.price_max=80&sort=price:asc&k=8&page=2"
    browser.set_window_size(DESKTOP, 900)
    browser.get(store.base + "/" + shared)
    cards = wait_for_status(browser, "“poster”")
    params = [("q", "poster"), ("category", "dogs"), ("category", "cats"), ("price_max", "80"),
              ("sort", "price:asc"), ("k", "8"), ("offset", "8"), ("collapse", "true"),
              ("text_weight", "0.5"), ("facets", ",".join(facet_columns(store)))]  # fmt: skip
    answer = httpx.get(f"{store.base}/search", params=params, timeout=WAIT_S).json()
    assert skus(cards) == [hit["product_id"] for hit in answer["results"]]
    assert {row["category"] for row in map(BY_SKU.get, skus(cards))} <= {"dogs", "cats"}
    assert browser.find_element(By.ID, "page-info").text.startswith("9–")
    ticked = browser.find_elements(By.CSS_SELECTOR, ".facet[data-column=category] input:checked")
    assert sorted(box.get_attribute("value") or "" for box in ticked) == ["cats", "dogs"]
    written = browser.execute_script("return location.search")
    assert sorted(parse_qsl(written[1:])) == sorted(parse_qsl(shared[1:]))  # as it was read
    tick(browser, "brand", "acme")
    wait_for_status(browser, "“poster”")
    assert "f.brand=acme" in browser.execute_script("return location.search")
    assert "page=" not in browser.execute_script("return location.search")  # a new search
