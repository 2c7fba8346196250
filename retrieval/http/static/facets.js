// The storefront's facet panels (see app.js): a checkbox per value of keyword and boolean
// columns, a min/max range and the answer's bands for number columns, with the counts the
// search answered. Shares app.js's globals (state, shop, run, label); loaded before it.
"use strict";

function renderFacets(facets) {
  const box = $("filter-fields");
  box.replaceChildren();
  for (const column of shop.facets) {
    const set = document.createElement("fieldset");
    set.className = "facet";
    set.dataset.column = column;
    const legend = document.createElement("legend");
    legend.textContent = label(column);
    set.append(legend);
    if (shop.columns[column] === "number") renderRange(set, column, facets[column] || []);
    else renderValues(set, column, facets[column] || []);
    box.append(set);
  }
  const filtered = state.filters.size || state.ranges.size;
  $("clear-filters").hidden = !filtered;
}

// Values a panel lists before "Show N more" (Algolia's and Typesense's widgets show 5-10).
const FACET_SHOWN = 8;
// Columns whose panel the user expanded.
const expanded = new Set();

function renderValues(set, column, buckets) {
  const chosen = state.filters.get(column) || new Set();
  const rows = [];
  let other = 0;
  for (const bucket of buckets) {
    if (bucket.other || bucket.value === null || bucket.value === undefined) other += bucket.count;
    else rows.push([String(bucket.value), bucket.count]);
  }
  // A chosen value stays visible (and can be unticked) even when nothing matches it now.
  const listed = new Set(rows.map(([value]) => value));
  for (const value of chosen) if (!listed.has(value)) rows.push([value, 0]);
  const folded = rows.length - FACET_SHOWN;
  rows.forEach(([value, count], n) => {
    const row = valueBox(column, value, count, chosen.has(value));
    row.hidden = folded > 0 && n >= FACET_SHOWN && !expanded.has(column) && !chosen.has(value);
    set.append(row);
  });
  if (folded > 0) set.append(foldButton(column, folded));
  if (other) set.append(note(`${other} in other values`));
  if (!rows.length) set.append(note("no values"));
}

function foldButton(column, folded) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "link fold";
  button.textContent = expanded.has(column) ? "Show fewer" : `Show ${folded} more`;
  button.addEventListener("click", () => {
    if (expanded.has(column)) expanded.delete(column);
    else expanded.add(column);
    const set = button.closest(".facet");
    const rows = [...set.querySelectorAll(".facet-value")];
    rows.forEach((row, n) => { row.hidden = !expanded.has(column) && n >= FACET_SHOWN && !row.querySelector("input").checked; });
    button.textContent = expanded.has(column) ? "Show fewer" : `Show ${folded} more`;
  });
  return button;
}

function note(text) {
  const box = document.createElement("div");
  box.className = "facet-other";
  box.textContent = text;
  return box;
}

function valueBox(column, value, count, checked) {
  const row = document.createElement("label");
  row.className = "facet-value";
  const box = document.createElement("input");
  box.type = "checkbox";
  box.value = value;
  box.checked = checked;
  box.dataset.column = column;
  box.addEventListener("change", () => {
    const values = state.filters.get(column) || new Set();
    if (box.checked) values.add(value);
    else values.delete(value);
    if (values.size) state.filters.set(column, values);
    else state.filters.delete(column);
    run();
  });
  const name = document.createElement("span");
  name.className = "facet-name";
  name.textContent = shop.columns[column] === "boolean" ? (value === "true" ? "yes" : "no") : value;
  const number = document.createElement("span");
  number.className = "count";
  number.textContent = String(count);
  row.append(box, name, number);
  return row;
}

function renderRange(set, column, bands) {
  const range = state.ranges.get(column) || { min: "", max: "" };
  const row = document.createElement("div");
  row.className = "range";
  const min = rangeInput(column, "min", range.min);
  const max = rangeInput(column, "max", range.max);
  const dash = document.createElement("span");
  dash.textContent = "–";
  row.append(min, dash, max);
  set.append(row);
  const list = document.createElement("div");
  list.className = "bands";
  for (const band of bands) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "band";
    const from = band.from === null || band.from === undefined ? "" : String(band.from);
    const to = band.to === null || band.to === undefined ? "" : String(band.to);
    button.classList.toggle("active", from === range.min && to === range.max);
    button.dataset.from = from;
    button.dataset.to = to;
    const name = document.createElement("span");
    name.textContent = bandLabel(column, band);
    const number = document.createElement("span");
    number.className = "count";
    number.textContent = String(band.count);
    button.append(name, number);
    button.addEventListener("click", () => setRange(column, from, to));
    list.append(button);
  }
  set.append(list);
}

function rangeInput(column, end, value) {
  const input = document.createElement("input");
  input.type = "number";
  input.step = "any";
  input.value = value;
  input.placeholder = end;
  input.dataset.range = `${column}_${end}`;
  input.setAttribute("aria-label", `${label(column)} ${end}`);
  input.addEventListener("change", () => {
    const range = state.ranges.get(column) || { min: "", max: "" };
    range[end] = input.value.trim();
    setRange(column, range.min, range.max);
  });
  return input;
}

function setRange(column, min, max) {
  if (min === "" && max === "") state.ranges.delete(column);
  else state.ranges.set(column, { min, max });
  run();
}

function bandLabel(column, band) {
  const show = (v) => (column === shop.price ? formatPrice(v) : String(v));
  if (band.from === null || band.from === undefined) return `under ${show(band.to)}`;
  if (band.to === null || band.to === undefined) return `${show(band.from)} and up`;
  return `${show(band.from)} – ${show(band.to)}`;
}

function clearFilters() {
  state.filters.clear();
  state.ranges.clear();
  run();
}
