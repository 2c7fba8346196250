// mmsearch search page: plain JavaScript, no build step. Talks to the JSON API of this server.
"use strict";

const KEY_STORAGE = "mmsearch.apiKey";
const THUMB_SIZE = 256;
const $ = (id) => document.getElementById(id);
let stats = null;
let blobUrls = [];

function apiKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

function headers() {
  const key = apiKey();
  return key ? { "X-API-Key": key } : {};
}

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
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
      $("key-box").open = true;
      setStatus("This server needs an API key: enter it above.", true);
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
  return params;
}

async function searchText(event) {
  event.preventDefault();
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
    setStatus(`${n} result${n === 1 ? "" : "s"} for ${label} in ${answer.took_ms.toFixed(0)} ms`);
  } catch (error) {
    setStatus(error.message, true);
  }
}

function renderResults(results) {
  for (const url of blobUrls) URL.revokeObjectURL(url);
  blobUrls = [];
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
    renderCaption(card, hit);
    renderSignals(card, hit);
    list.append(card);
  }
}

// -- search mode, captions and signals (keywords + CLIP) ---------------------------------------
function applyMode(params) {
  // Text searches only: image queries are always semantic.
  if ($("mode").value) params.set("mode", $("mode").value);
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

async function showThumbnail(img, id) {
  const url = `/items/${id}/image?size=${THUMB_SIZE}`;
  if (!apiKey()) {
    img.src = url; // no key: let the browser fetch and cache it
    return;
  }
  // An <img> cannot send the key header, so fetch the bytes and show them from a blob URL.
  try {
    const blob = await (await api(url)).blob();
    const blobUrl = URL.createObjectURL(blob);
    blobUrls.push(blobUrl);
    img.src = blobUrl;
  } catch (_) {
    img.alt = "(image unavailable)";
  }
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
  $("api-key").value = apiKey();
  $("save-key").addEventListener("click", () => {
    localStorage.setItem(KEY_STORAGE, $("api-key").value.trim());
    loadStats();
  });
  $("search-form").addEventListener("submit", searchText);
  $("image-input").addEventListener("change", (event) => {
    searchImage(event.target.files[0]);
    event.target.value = ""; // choosing the same file again should search again
  });
  $("text-weight").addEventListener("input", (event) => {
    $("text-weight-value").textContent = Number(event.target.value).toFixed(2);
  });
  setUpDropZone();
  loadStats();
}

init();
