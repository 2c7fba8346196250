// mmsearch search page: plain JavaScript, no build step. Talks to the JSON API of this server.
"use strict";

const THUMB_SIZE = 256;
const $ = (id) => document.getElementById(id);
let stats = null;
// Composed-query parts added from result cards: {item, weight, label}.
let chips = [];
// "Less like this" subtracts at half weight: a full -1 against a single +1 text often cancels.
const LESS_WEIGHT = -0.5;

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

async function loadStats() {
  try {
    stats = await (await api("/stats")).json();
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
  renderFilters(stats.has_catalog ? stats.product_columns || {} : {});
}

function renderFilters(columns) {
  const box = $("filter-fields");
  box.replaceChildren();
  for (const [column, kind] of Object.entries(columns)) {
    if (column === "title") continue; // titles are searched, not filtered
    if (kind === "number") {
      box.append(filterInput(`${column} min`, `${column}_min`, "number"));
      box.append(filterInput(`${column} max`, `${column}_max`, "number"));
    } else {
      box.append(filterInput(column, column, "text"));
    }
  }
  $("filters").hidden = Object.keys(columns).length === 0;
}

function filterInput(label, name, type) {
  const wrapper = document.createElement("label");
  wrapper.textContent = label;
  const input = document.createElement("input");
  input.type = type;
  input.name = name;
  input.dataset.filter = name;
  if (type === "number") input.step = "any";
  wrapper.append(input);
  return wrapper;
}

function searchParams() {
  const params = new URLSearchParams();
  params.set("k", $("k").value || "24");
  if ($("target").value) params.set("target", $("target").value);
  for (const input of document.querySelectorAll("[data-filter]")) {
    if (input.value.trim()) params.set(input.dataset.filter, input.value.trim());
  }
  addRefinements(params);
  return params;
}

// -- refinements: min score, collapsed duplicates, more/less like this chips ------------------
function addRefinements(params) {
  const minScore = $("min-score").value.trim();
  if (minScore) params.set("min_score", minScore);
  params.set("collapse", $("collapse").checked ? "true" : "false");
}

function composedBody(text) {
  const parts = text ? [{ text }] : [];
  for (const chip of chips) parts.push({ item: chip.item, weight: chip.weight });
  const body = { parts, k: Number($("k").value || "24"), collapse: $("collapse").checked };
  if ($("target").value) body.target = $("target").value;
  const minScore = $("min-score").value.trim();
  if (minScore) body.min_score = Number(minScore);
  const filters = {};
  for (const input of document.querySelectorAll("[data-filter]")) {
    const value = input.value.trim();
    if (value) filters[input.dataset.filter] = input.dataset.filter.match(/_(min|max)$/) ? Number(value) : value;
  }
  if (Object.keys(filters).length) body.filters = filters;
  if (text && stats && stats.has_catalog) body.text_weight = Number($("text-weight").value);
  return body;
}

async function searchComposed() {
  const text = $("query").value.trim();
  if (!text && !chips.length) return;
  const label = [text ? `“${text}”` : "", ...chips.map((c) => `${c.weight > 0 ? "+" : "−"}${c.label}`)]
    .filter(Boolean).join(" ");
  const options = {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(composedBody(text)),
  };
  await runSearch(label, () => api("/search", options));
}

function addChip(hit, weight) {
  chips = chips.filter((chip) => chip.item !== hit.id);
  chips.push({ item: hit.id, weight, label: hit.title || (hit.path ? baseName(hit.path) : hit.text || `#${hit.id}`) });
  renderChips();
  searchComposed();
}

function removeChip(item) {
  chips = chips.filter((chip) => chip.item !== item);
  renderChips();
  if (chips.length || $("query").value.trim()) searchComposed();
}

function renderChips() {
  const list = $("chips");
  list.replaceChildren();
  for (const chip of chips) {
    const li = document.createElement("li");
    li.className = chip.weight > 0 ? "chip" : "chip negative";
    li.dataset.item = chip.item;
    li.append(`${chip.weight > 0 ? "more like" : "less like"} ${chip.label}`);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.className = "remove-chip";
    remove.textContent = "×";
    remove.title = "Remove from the query";
    remove.addEventListener("click", () => removeChip(chip.item));
    li.append(remove);
    list.append(li);
  }
}

function decorateCard(card, hit) {
  card.querySelector(".more-like").addEventListener("click", () => addChip(hit, 1));
  card.querySelector(".less-like").addEventListener("click", () => addChip(hit, LESS_WEIGHT));
  const folded = (hit.duplicates || []).length;
  card.dataset.duplicates = folded;
  if (folded) {
    const badge = card.querySelector(".dup-count");
    badge.textContent = `+${folded} near-duplicate${folded === 1 ? "" : "s"}`;
    badge.title = `ids ${hit.duplicates.join(", ")}`;
  }
}

async function searchText(event) {
  event.preventDefault();
  if (chips.length) return searchComposed();
  const text = $("query").value.trim();
  if (!text) return;
  const params = searchParams();
  params.set("q", text);
  applyMode(params);
  if (stats && stats.has_catalog) params.set("text_weight", $("text-weight").value);
  await runSearch(`“${text}”`, () => api(`/search?${params}`));
}

async function searchImage(file) {
  if (!file) return;
  const form = new FormData();
  form.append("file", file, file.name);
  const params = searchParams();
  await runSearch(file.name, () => api(`/search/image?${params}`, { method: "POST", body: form }));
}

async function runSearch(label, request) {
  setStatus(`Searching for ${label}…`);
  try {
    const answer = await (await request()).json();
    renderResults(answer.results);
    const n = answer.results.length;
    const more = answer.has_more ? " (more past these)" : "";
    setStatus(`${n} result${n === 1 ? "" : "s"} for ${label} in ${answer.took_ms.toFixed(0)} ms${more}`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function renderResults(results) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of results) {
    const card = $("result-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    const thumb = card.querySelector(".thumb");
    if (hit.path) {
      const img = document.createElement("img");
      img.alt = hit.title || baseName(hit.path);
      img.loading = "lazy";
      thumb.append(img);
      showThumbnail(img, hit.id);
    } else {
      const text = document.createElement("div");
      text.className = "text-hit";
      text.textContent = hit.text || "";
      thumb.append(text);
    }
    card.querySelector(".title").textContent = hit.title || (hit.path ? baseName(hit.path) : hit.text || "");
    card.querySelector(".title").title = hit.path || hit.text || "";
    if (typeof hit.price === "number") card.querySelector(".price").textContent = hit.price.toFixed(2);
    card.querySelector(".score").textContent = `score ${hit.score.toFixed(3)}`;
    decorateCard(card, hit);
    renderCaption(card, hit);
    renderSignals(card, hit);
    list.append(card);
  }
}

// -- search mode, captions and signals (keywords + CLIP) ---------------------------------------
function applyMode(params) {
  // Text searches only: image queries are always semantic.
  if ($("mode").value) params.set("mode", $("mode").value);
  // min_score is a cosine cutoff: keyword (BM25) search has none.
  if ($("mode").value === "keyword") params.delete("min_score");
}

function renderCaption(card, hit) {
  const box = card.querySelector(".caption");
  box.textContent = hit.caption || "";
  box.hidden = !hit.caption;
}

function renderSignals(card, hit) {
  // Which ranking(s) found the hit, e.g. "semantic #3 · keyword #1".
  const box = card.querySelector(".signals");
  const signals = Object.entries(hit.signals || {});
  box.textContent = signals.map(([name, rank]) => `${name} #${rank}`).join(" · ");
  box.hidden = signals.length === 0;
}

function showThumbnail(img, id) {
  // The browser sends the Basic credentials for <img> too, and caches the thumbnail.
  img.src = apiUrl(`/items/${id}/image?size=${THUMB_SIZE}`);
  img.addEventListener("error", () => { img.alt = "(image unavailable)"; }, { once: true });
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
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
  $("search-form").addEventListener("submit", searchText);
  $("image-input").addEventListener("change", (event) => {
    searchImage(event.target.files[0]);
    event.target.value = ""; // choosing the same file again should search again
  });
  $("text-weight").addEventListener("input", (event) => {
    $("text-weight-value").textContent = Number(event.target.value).toFixed(2);
  });
  $("collapse").addEventListener("change", () => $("search-form").requestSubmit());
  setUpDropZone();
  loadStats();
}

init();
