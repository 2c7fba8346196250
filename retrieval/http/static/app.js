// mmsearch search page: plain JavaScript, no build step. Talks to the JSON API of this server.
// With a product catalog it is a storefront (facets, sort, pages, product cards); over a photo
// folder it is a search page for photos and texts. facets.js (the facet panels) and cards.js (result
// cards, pager) load first and share the globals defined here.
"use strict";

const THUMB_SIZE = 256;
// The matched-photo hint in a product card's corner.
const HINT_SIZE = 96;
// The phone layout's breakpoint (style.css has the same).
const NARROW = "(max-width: 720px)";
const $ = (id) => document.getElementById(id);
// "Less like this" subtracts at half weight: a full -1 against a single +1 text often cancels.
const LESS_WEIGHT = -0.5;
// Column types (GET /schema, /stats) that get a facet panel: value counts or number bands.
const VALUE_FACETS = new Set(["keyword", "boolean"]);
// The server answers at most this many facets per search (config.MAX_FACETS).
const MAX_FACETS = 16;
// Columns a card shows in its own places, found by name among the catalog's columns.
const BRAND_NAMES = /^(brand|vendor|manufacturer|maker)$/i;
const STOCK_NAMES = /(^|_)(in_stock|instock|available|availability|stock|inventory|quantity|qty)$/i;

let stats = null;
let settings = { currency: null };
// The catalog's columns (name -> type), and the ones cards and facets use.
const shop = { columns: {}, facets: [], price: null, brand: null, stock: null };
// What the user asked for. The query is exactly its visible parts: the text box, the uploaded
// image (a chip) and the more/less-like-this chips; nothing else is mixed in.
const state = {
  image: null, // {b64, name, url}
  chips: [], // {item, weight, label}
  filters: new Map(), // column -> Set of chosen values (strings)
  ranges: new Map(), // column -> {min, max} (strings from the inputs)
  page: 0,
};
// Answers of superseded requests are dropped: a slow search must not paint over a newer one.
let requestSeq = 0;

// With an API key set, the browser logged in with HTTP Basic auth to load this page, and sends
// those credentials on every same-origin request by itself: fetch() and <img> need no key here.
// Paths are resolved against location.origin, never the page's URL: a page opened as
// http://user:key@host/ would lend them its user:key, and fetch() refuses such URLs.
function apiUrl(path) {
  return new URL(path, location.origin).href;
}

async function api(path, options = {}) {
  const response = await fetch(apiUrl(path), options);
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      message = body.message || message;
    } catch (_) { /* not JSON: keep the status line */ }
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return response;
}

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

const isCatalog = () => Boolean(stats && stats.has_catalog);
// Facets and sort are product searches' (the server refuses them for images and texts).
const isShopping = () => isCatalog() && ["", "products"].includes($("target").value);
const pageSize = () => Math.max(1, Number($("k").value) || 24);

// -- start: index summary, shop settings, catalog columns -----------------------------------
async function loadStats() {
  try {
    [stats, settings] = await Promise.all([
      api("/stats").then((r) => r.json()),
      api("/config").then((r) => r.json()).catch(() => settings),
    ]);
  } catch (error) {
    $("summary").textContent = "";
    if (error.status === 401) {
      // The key changed since the browser logged in: a reload makes it ask again.
      setStatus("This server needs an API key: reload the page and give the key as the password.", true);
    } else {
      setStatus(`Could not load the index: ${error.message}`, true);
    }
    return;
  }
  const counts = stats.collections || {};
  const parts = [`${(counts.images || {}).count || 0} images`, `${(counts.texts || {}).count || 0} texts`];
  if (stats.has_catalog) parts.push(`${stats.products} products`);
  $("summary").textContent = `${parts.join(" · ")} · ${stats.model.name.split("/").pop()}`;
  setStatus("");
  // Photo folders are searched by people tuning the index: scores on. Shoppers: off.
  setDebug(!stats.has_catalog);
  if (stats.has_catalog) {
    $("query").placeholder = "Search products"; // short: a phone shows some 15 letters
    setUpCatalog(stats.product_columns || {});
  }
  loadFromUrl();
  if (stats.has_catalog || $("query").value.trim()) run({ keepPage: true });
}

// -- the page's address holds the search (text, filters, sort, page), so it can be shared ----
// Filters are `f.COLUMN=VALUE` (repeated: OR) and `f.COLUMN_min`/`_max`, apart from the page's
// own names. An uploaded image and like-this chips cannot travel in an address.
function saveToUrl() {
  const params = new URLSearchParams();
  const text = $("query").value.trim();
  if (text) params.set("q", text);
  if (isCatalog() && $("sort").value) params.set("sort", $("sort").value);
  if (state.page) params.set("page", String(state.page + 1));
  if (pageSize() !== 24) params.set("k", String(pageSize()));
  for (const [name, value] of filterEntries()) params.append(`f.${name}`, value);
  const search = params.toString();
  history.replaceState(null, "", search ? `?${search}` : location.pathname);
}

function loadFromUrl() {
  const params = new URLSearchParams(location.search);
  $("query").value = params.get("q") || "";
  if (Number(params.get("k")) > 0) $("k").value = String(Math.min(100, Number(params.get("k"))));
  const sort = params.get("sort");
  if (sort && [...$("sort").options].some((option) => option.value === sort)) $("sort").value = sort;
  state.page = Math.max(0, Math.floor(Number(params.get("page")) || 1) - 1);
  for (const [key, value] of params) {
    if (!key.startsWith("f.")) continue;
    const name = key.slice(2);
    const bound = name.match(/^(.*)_(min|max)$/);
    if (bound && shop.columns[bound[1]] === "number") {
      const range = state.ranges.get(bound[1]) || { min: "", max: "" };
      range[bound[2]] = value;
      state.ranges.set(bound[1], range);
    } else if (shop.facets.includes(name)) {
      if (!state.filters.has(name)) state.filters.set(name, new Set());
      state.filters.get(name).add(value);
    }
  }
}

function setUpCatalog(columns) {
  shop.columns = columns;
  const names = Object.keys(columns);
  const find = (pattern, types) => names.find((c) => pattern.test(c) && types.includes(columns[c])) || null;
  shop.price = find(/price/i, ["number"]);
  shop.brand = find(BRAND_NAMES, ["keyword", "text"]);
  shop.stock = find(STOCK_NAMES, ["boolean", "number"]);
  shop.facets = names
    .filter((c) => c !== "title" && (VALUE_FACETS.has(columns[c]) || columns[c] === "number"))
    .slice(0, MAX_FACETS);
  renderSortMenu();
  $("filters").hidden = shop.facets.length === 0;
  // On a phone the filters start folded above the results, which come first.
  if (window.matchMedia(NARROW).matches) $("filter-box").open = false;
  renderFacets({});
}

function renderSortMenu() {
  const menu = $("sort");
  menu.replaceChildren(new Option("Best match", ""));
  for (const [column, kind] of Object.entries(shop.columns)) {
    const name = label(column);
    if (kind === "number") {
      menu.append(new Option(`${name}: low to high`, `${column}:asc`));
      menu.append(new Option(`${name}: high to low`, `${column}:desc`));
    } else if (kind === "keyword") {
      menu.append(new Option(`${name}: A to Z`, `${column}:asc`));
    }
  }
  $("sort-box").hidden = menu.options.length === 1;
}

function label(column) {
  const words = column.replace(/_/g, " ");
  return words.charAt(0).toUpperCase() + words.slice(1);
}

// -- the request: text, image, chips, filters, sort, page ------------------------------------
function queryLabel(text) {
  return [
    text ? `“${text}”` : "",
    state.image ? state.image.name : "",
    ...state.chips.map((c) => `${c.weight > 0 ? "+" : "−"}${c.label}`),
  ].filter(Boolean).join(" ");
}

function filterEntries() {
  // [name, value] pairs as query parameters: a repeated column is OR.
  const entries = [];
  for (const [column, values] of state.filters) for (const value of values) entries.push([column, value]);
  for (const [column, range] of state.ranges) {
    if (range.min !== "") entries.push([`${column}_min`, range.min]);
    if (range.max !== "") entries.push([`${column}_max`, range.max]);
  }
  return entries;
}

function filterObject() {
  // The same filters as a JSON body's `filters`: typed values, lists for OR.
  const filters = {};
  for (const [column, values] of state.filters) {
    const typed = [...values].map((v) => (shop.columns[column] === "boolean" ? v === "true" : v));
    if (typed.length) filters[column] = typed.length === 1 ? typed[0] : typed;
  }
  for (const [column, range] of state.ranges) {
    if (range.min !== "") filters[`${column}_min`] = Number(range.min);
    if (range.max !== "") filters[`${column}_max`] = Number(range.max);
  }
  return filters;
}

function commonParams(params) {
  params.set("k", String(pageSize()));
  if (state.page) params.set("offset", String(state.page * pageSize()));
  if ($("target").value) params.set("target", $("target").value);
  if (!isCatalog()) return params;
  for (const [name, value] of filterEntries()) params.append(name, value);
  if (!isShopping()) return params;
  if ($("sort").value) params.set("sort", $("sort").value);
  if (shop.facets.length) params.set("facets", shop.facets.join(","));
  return params;
}

function refinements(params) {
  const minScore = $("min-score").value.trim();
  if (minScore && $("mode").value !== "keyword") params.set("min_score", minScore); // BM25 has no cosine cutoff
  params.set("collapse", $("collapse").checked ? "true" : "false");
  return params;
}

function composedBody(text) {
  const parts = text ? [{ text }] : [];
  if (state.image) parts.push({ image_b64: state.image.b64 });
  for (const chip of state.chips) parts.push({ item: chip.item, weight: chip.weight });
  // One image alone is the same search as an upload to /search/image.
  const body = parts.length === 1 && state.image ? { image_b64: state.image.b64 } : { parts };
  body.k = pageSize();
  body.collapse = $("collapse").checked;
  if (state.page) body.offset = state.page * pageSize();
  if ($("target").value) body.target = $("target").value;
  const minScore = $("min-score").value.trim();
  if (minScore) body.min_score = Number(minScore);
  if (isCatalog()) {
    const filters = filterObject();
    if (Object.keys(filters).length) body.filters = filters;
    if ($("sort").value && isShopping()) body.sort = [$("sort").value];
    if (shop.facets.length && isShopping()) body.facets = shop.facets;
    if (text) body.text_weight = Number($("text-weight").value);
  }
  return body;
}

function browseLabel() {
  const chosen = [...state.filters].filter(([, v]) => v.size).map(([c, v]) => `${c}: ${[...v].join(" or ")}`);
  for (const [column, range] of state.ranges) {
    if (range.min !== "" || range.max !== "") chosen.push(`${column} ${range.min || "…"}–${range.max || "…"}`);
  }
  return chosen.length ? chosen.join(", ") : "all products";
}

function run({ keepPage = false } = {}) {
  if (!keepPage) state.page = 0;
  saveToUrl();
  const text = $("query").value.trim();
  // Without a query there is no relevance: a browse lists products by SKU unless sorted.
  $("sort-box").hidden = !isShopping() || $("sort").options.length <= 1;
  const first = $("sort").options[0]; // none over a photo folder
  if (first) first.text = text || state.image || state.chips.length ? "Best match" : "SKU";
  if (state.image || state.chips.length) {
    const options = {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(composedBody(text)),
    };
    return runSearch(queryLabel(text), () => api("/search", options));
  }
  if (text) {
    const params = refinements(commonParams(new URLSearchParams({ q: text })));
    if ($("mode").value) params.set("mode", $("mode").value); // image queries are always semantic
    if (isCatalog()) params.set("text_weight", $("text-weight").value);
    return runSearch(`“${text}”`, () => api(`/search?${params}`));
  }
  if (isCatalog()) {
    // No query: browse the catalog, filtered, sorted and paged.
    const params = commonParams(new URLSearchParams());
    params.delete("target"); // a browse lists products
    return runSearch(browseLabel(), () => api(`/products?${params}`));
  }
  return Promise.resolve();
}

async function runSearch(label, request) {
  const seq = ++requestSeq;
  setStatus(`Searching for ${label}…`);
  try {
    const answer = await (await request()).json();
    const main = isCatalog() ? await mainImages(answer.results) : {};
    if (seq !== requestSeq) return;
    renderResults(answer.results, main);
    renderFacets(answer.facets || {});
    renderPager(answer);
    const total = typeof answer.total === "number" ? answer.total : answer.results.length;
    const took = typeof answer.took_ms === "number" ? ` in ${answer.took_ms.toFixed(0)} ms` : "";
    setStatus(`${total} result${total === 1 ? "" : "s"} for ${label}${took}`);
  } catch (error) {
    if (seq === requestSeq) setStatus(error.message, true);
  }
}

async function mainImages(results) {
  // Each product's own first photo, asked for the whole page at once.
  const skus = [...new Set(results.map((hit) => hit.product_id).filter(Boolean))];
  if (!skus.length) return {};
  const params = new URLSearchParams(skus.map((sku) => ["sku", sku]));
  try {
    return await (await api(`/main-images?${params}`)).json();
  } catch (_) {
    return {}; // cards then show the matching photo
  }
}

// -- query parts: the uploaded image and more/less-like-this chips ----------------------------
function searchImage(file) {
  if (!file) return;
  const reader = new FileReader();
  reader.addEventListener("load", () => {
    // The page's policy allows data: images (not blob:), so the chip shows the data URL.
    const url = String(reader.result);
    state.image = { b64: url.split(",", 2)[1] || "", name: file.name, url };
    // The image is the new query: the old text and chips would silently mix into it.
    $("query").value = "";
    state.chips = [];
    renderChips();
    run();
  });
  reader.addEventListener("error", () => setStatus(`Could not read ${file.name}`, true));
  reader.readAsDataURL(file);
}

function addChip(hit, weight) {
  state.chips = state.chips.filter((chip) => chip.item !== hit.id);
  state.chips.push({ item: hit.id, weight, label: hit.title || (hit.path ? baseName(hit.path) : hit.text || `#${hit.id}`) });
  renderChips();
  run();
}

function removeChip(item) {
  state.chips = state.chips.filter((chip) => chip.item !== item);
  renderChips();
  run();
}

function removeImage() {
  state.image = null;
  renderChips();
  run();
}

function renderChips() {
  const list = $("chips");
  list.replaceChildren();
  if (state.image) {
    const li = chipElement(`image ${state.image.name}`, removeImage);
    li.classList.add("image-chip");
    const img = document.createElement("img");
    img.src = state.image.url;
    img.alt = "";
    li.prepend(img);
    list.append(li);
  }
  for (const chip of state.chips) {
    const li = chipElement(`${chip.weight > 0 ? "more like" : "less like"} ${chip.label}`, () => removeChip(chip.item));
    if (chip.weight < 0) li.classList.add("negative");
    li.dataset.item = chip.item;
    list.append(li);
  }
}

function chipElement(text, onRemove) {
  const li = document.createElement("li");
  li.className = "chip";
  const span = document.createElement("span");
  span.textContent = text;
  li.append(span);
  const remove = document.createElement("button");
  remove.type = "button";
  remove.className = "remove-chip";
  remove.textContent = "×";
  remove.title = "Remove from the query";
  remove.addEventListener("click", onRemove);
  li.append(remove);
  return li;
}

function setUpDropZone() {
  const zone = $("drop-zone");
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("dragging"));
  }
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    searchImage(event.dataTransfer.files[0]);
  });
}

function init() {
  $("search-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run();
  });
  $("image-input").addEventListener("change", (event) => {
    searchImage(event.target.files[0]);
    event.target.value = ""; // choosing the same file again should search again
  });
  $("text-weight").addEventListener("input", (event) => {
    $("text-weight-value").textContent = Number(event.target.value).toFixed(2);
  });
  $("collapse").addEventListener("change", () => run());
  $("sort").addEventListener("change", () => run());
  $("target").addEventListener("change", () => run());
  $("k").addEventListener("change", () => run());
  $("debug").addEventListener("change", (event) => setDebug(event.target.checked));
  $("clear-filters").addEventListener("click", clearFilters);
  $("prev-page").addEventListener("click", () => turnPage(-1));
  $("next-page").addEventListener("click", () => turnPage(1));
  setUpDropZone();
  loadStats();
}

init();
