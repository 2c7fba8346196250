// Result cards and pages (see app.js): product cards (main image, matched-photo hint, brand,
// title, price, stock badge, SKU), photo and text cards, debug details, the pager. Shares
// app.js's globals (state, shop, settings, addChip); loaded before it.
"use strict";

function renderResults(results, main) {
  const list = $("results");
  list.replaceChildren();
  for (const hit of results) {
    const card = $("result-template").content.firstElementChild.cloneNode(true);
    card.dataset.id = hit.id;
    if (hit.product_id) renderProduct(card, hit, main[hit.product_id]);
    else renderItem(card, hit);
    renderDebug(card, hit);
    renderCaption(card, hit);
    decorateCard(card, hit);
    list.append(card);
  }
}

function renderItem(card, hit) {
  const thumb = card.querySelector(".thumb");
  if (hit.path) {
    thumb.append(thumbnail(hit.id, THUMB_SIZE, hit.title || baseName(hit.path)));
  } else {
    const text = document.createElement("div");
    text.className = "text-hit";
    text.textContent = hit.text || "";
    thumb.append(text);
  }
  card.querySelector(".title").textContent = hit.title || (hit.path ? baseName(hit.path) : hit.text || "");
  card.querySelector(".title").title = hit.path || hit.text || "";
}

function renderProduct(card, hit, mainId) {
  card.classList.add("product");
  card.dataset.sku = hit.product_id;
  const thumb = card.querySelector(".thumb");
  // The product's own first photo; the photo that matched the query as a hint in the corner.
  const matched = hit.path ? hit.id : null;
  const shown = mainId ?? matched;
  if (shown !== null && shown !== undefined) {
    const img = thumbnail(shown, THUMB_SIZE, hit.title || hit.product_id);
    img.classList.add("main-image");
    thumb.append(img);
  }
  if (matched !== null && shown !== matched) {
    const hint = thumbnail(matched, HINT_SIZE, "the photo that matched");
    hint.classList.add("match-hint");
    hint.title = "the photo that matched your search";
    thumb.append(hint);
  }
  card.querySelector(".title").textContent = hit.title || hit.product_id;
  card.querySelector(".title").title = hit.title || "";
  const brand = card.querySelector(".brand");
  if (shop.brand && hit[shop.brand]) {
    brand.textContent = hit[shop.brand];
    brand.hidden = false;
  }
  const price = card.querySelector(".price");
  if (shop.price && typeof hit[shop.price] === "number") {
    price.textContent = formatPrice(hit[shop.price]);
    price.dataset.value = hit[shop.price];
  }
  card.querySelector(".sku").textContent = `SKU ${hit.product_id}`;
  renderStock(card.querySelector(".stock"), hit[shop.stock]);
}

function renderStock(badge, value) {
  if (value === undefined || value === null) return;
  const inStock = typeof value === "number" ? value > 0 : Boolean(value);
  badge.textContent = inStock ? "In stock" : "Out of stock";
  badge.classList.add(inStock ? "in" : "out");
  badge.hidden = false;
}

function formatPrice(value) {
  if (settings.currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: settings.currency }).format(value);
    } catch (_) { /* an unknown code: plain number below */ }
  }
  return Number(value).toFixed(2);
}

function renderDebug(card, hit) {
  card.querySelector(".score").textContent = typeof hit.score === "number" ? `score ${hit.score.toFixed(3)}` : "";
  // Which ranking(s) found the hit, e.g. "semantic #3 · keyword #1".
  const box = card.querySelector(".signals");
  const signals = Object.entries(hit.signals || {});
  box.textContent = signals.map(([name, rank]) => `${name} #${rank}`).join(" · ");
  box.hidden = signals.length === 0;
}

function renderCaption(card, hit) {
  const box = card.querySelector(".caption");
  box.textContent = hit.caption || "";
  box.hidden = !hit.caption;
}

function decorateCard(card, hit) {
  const canLike = typeof hit.id === "number";
  card.querySelector(".more-like").addEventListener("click", () => addChip(hit, 1));
  card.querySelector(".less-like").addEventListener("click", () => addChip(hit, LESS_WEIGHT));
  card.querySelector(".actions").hidden = !canLike;
  const folded = (hit.duplicates || []).length;
  card.dataset.duplicates = folded;
  if (folded) {
    const badge = card.querySelector(".dup-count");
    badge.textContent = `+${folded} near-duplicate${folded === 1 ? "" : "s"}`;
    badge.title = `ids ${hit.duplicates.join(", ")}`;
  }
}

function renderPager(answer) {
  const k = pageSize();
  const n = answer.results.length;
  const first = state.page * k + 1;
  const hasTotal = typeof answer.total === "number";
  $("pager").hidden = !(state.page > 0 || answer.has_more);
  $("prev-page").disabled = state.page === 0;
  $("next-page").disabled = !answer.has_more;
  let info = n ? `${first}–${first + n - 1}` : "none";
  if (hasTotal) info += ` of ${answer.total} · page ${state.page + 1} of ${Math.max(1, Math.ceil(answer.total / k))}`;
  else info += ` · page ${state.page + 1}`;
  $("page-info").textContent = info;
}

function turnPage(step) {
  state.page = Math.max(0, state.page + step);
  run({ keepPage: true }).then(() => $("results-area").scrollIntoView({ block: "start" }));
}

function setDebug(on) {
  $("debug").checked = on;
  document.body.classList.toggle("debug", on);
}

function thumbnail(id, size, alt) {
  // The browser sends the Basic credentials for <img> too, and caches the thumbnail.
  const img = document.createElement("img");
  img.alt = alt;
  img.loading = "lazy";
  img.src = apiUrl(`/items/${id}/image?size=${size}`);
  img.addEventListener("error", () => { img.alt = "(image unavailable)"; }, { once: true });
  return img;
}

function baseName(path) {
  return path.split(/[\\/]/).pop();
}
