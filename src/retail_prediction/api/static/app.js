// The try-the-model page: plain DOM + fetch, chart drawn as SVG. No libraries, works offline.
"use strict";

const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";
const COLORS = { LA: "#d1495b", MM: "#edae49", UM: "#00798c", XX: "#8d99ae" };
const HIERARCHY = ["prod_code_10", "prod_code_20", "prod_code_30", "prod_code_40"];
// A line's fields as the page names them (its column headers), for the API's field paths in errors.
const FIELD_NAMES = {
  product_id: "product code", quantity: "quantity", price: "unit price", category: "category",
  prod_code_10: "product hierarchy code", prod_code_20: "product hierarchy code",
  prod_code_30: "product hierarchy code", prod_code_40: "product hierarchy code",
};
const PLACEHOLDERS = { product_id: "Product code", quantity: "Quantity", price: "Unit price", category: "Category (optional)" };
let examples = [];

function el(tag, attrs = {}, text = "") {
  const node = document.createElement(tag);
  Object.entries(attrs).forEach(([k, v]) => node.setAttribute(k, v));
  if (text) node.textContent = text;
  return node;
}

function input(name, value, type = "text") {
  const attrs = { name, type, value: value ?? "", placeholder: PLACEHOLDERS[name], "aria-label": PLACEHOLDERS[name] };
  if (type === "number") Object.assign(attrs, { min: "0", step: "any" });
  return el("input", attrs);
}

// One basket line; hierarchy codes (from an example product) travel in data attributes.
function addLine(line = {}) {
  const row = el("tr");
  const cells = [
    input("product_id", line.product_id), input("quantity", line.quantity ?? 1, "number"),
    input("price", line.price, "number"), input("category", line.category),
  ];
  cells.forEach((c) => { const td = el("td"); td.append(c); row.append(td); });
  (line.hierarchy || []).forEach((code, i) => { if (code) row.dataset[`h${i}`] = code; });
  const remove = el("button", { type: "button", class: "remove", title: "Remove this line" }, "✕");
  remove.addEventListener("click", () => row.remove());
  const td = el("td"); td.append(remove); row.append(td);
  $("lines").tBodies[0].append(row);
}

function readBasket() {
  const rows = [...$("lines").tBodies[0].rows];
  return rows.map((row) => {
    const get = (n) => row.querySelector(`[name=${n}]`).value.trim();
    const line = { product_id: get("product_id"), quantity: Number(get("quantity")), price: Number(get("price")) };
    if (get("category")) line.category = get("category");
    HIERARCHY.forEach((name, i) => { if (row.dataset[`h${i}`]) line[name] = row.dataset[`h${i}`]; });
    return line;
  });
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

// No result on screen but the one of the last request that succeeded with the lines as they are.
function clearResult() {
  $("result").hidden = true; $("no-result").hidden = false;
  $("chart").replaceChildren();
  ["result-label", "result-name", "result-meta"].forEach((id) => { $(id).textContent = ""; });
  ["drivers-for", "drivers-against"].forEach((id) => $(id).replaceChildren());
  [...$("lines").tBodies[0].rows].forEach((row) => {
    delete row.dataset.pointsTo; row.style.background = ""; row.removeAttribute("title");
  });
}

const SOURCES = { product: "known product", price_band: "unknown: its price band" };
const percent = (p) => `${(p * 100).toFixed(1)} %`;
const signed = (a) => `${a >= 0 ? "+" : "−"}${Math.abs(a * 100).toFixed(1)} pts`;

// The explanation (POST /predict?explain=true): each line tinted by the class it points to, the lines that
// drove the predicted class and those against it listed under the prediction.
function showExplanation(why) {
  const rows = [...$("lines").tBodies[0].rows];
  why.lines.forEach((line, i) => {
    const row = rows[i];
    if (!row) return;
    row.dataset.pointsTo = line.points_to;
    row.style.background = `${COLORS[line.points_to] || "#555555"}26`;
    const source = SOURCES[line.source] || `unknown: its ${line.source.replace("hierarchy:", "").toLowerCase()} code`;
    row.title = `points to ${line.points_to} (${percent(line.probability)}) · ${source} · ` +
      `${signed(line.contribution)} of ${why.class} evidence`;
  });
  const list = (id, drivers) => {
    $(id).replaceChildren(...drivers.map((d) => {
      const line = why.lines[d.line];
      const item = el("li", { "data-line": String(d.line), "data-class": line.points_to },
        `line ${d.line + 1}: ${d.product_id} points to ${line.points_to} (${percent(line.probability)}, ` +
        `${SOURCES[line.source] || line.source}) · ${signed(d.contribution)}`);
      item.style.borderLeftColor = COLORS[line.points_to] || "#555";
      return item;
    }));
    if (!drivers.length) $(id).append(el("li", { class: "none" }, "none"));
  };
  $("drivers-class").textContent = why.class;
  list("drivers-for", why.drivers_for);
  list("drivers-against", why.drivers_against);
}

// The API's error in the page's words: "line 4: quantity must be a number greater than 0". The API names
// the field by its path (basket_items.3.quantity) and says what is wrong in plain words after it.
function plainError(error, status) {
  const detail = Array.isArray(error.details) ? error.details[0] : null;
  if (error.code === "validation_error" && detail && detail.field) {
    const line = /^basket_items\.(\d+)\.(\w+)$/.exec(detail.field);
    if (line) return `line ${Number(line[1]) + 1}: ${FIELD_NAMES[line[2]] || line[2]} ${detail.message}`;
    if (detail.field === "basket_items") return `The basket ${detail.message}.`;
  }
  if (error.code === "model_not_ready") return "The model is not loaded yet: try again in a few seconds.";
  if (error.code === "payload_too_large") return "The basket is too large to send.";
  return error.message || `The server answered HTTP ${status}.`;
}

function drawChart(probabilities) {
  const svg = $("chart");
  svg.replaceChildren();
  const entries = Object.entries(probabilities);
  const rowH = 30, labelW = 150, width = svg.clientWidth || 600, barMax = width - labelW - 70;
  svg.setAttribute("height", String(entries.length * rowH + 10));
  entries.forEach(([cls, p], i) => {
    const y = 5 + i * rowH;
    const label = document.createElementNS(SVG, "text");
    label.setAttribute("x", "0"); label.setAttribute("y", String(y + 19));
    label.textContent = `${cls} ${names[cls] || ""}`;
    const bar = document.createElementNS(SVG, "rect");
    bar.setAttribute("x", String(labelW)); bar.setAttribute("y", String(y + 4));
    bar.setAttribute("height", "20"); bar.setAttribute("width", String(Math.max(1, p * barMax)));
    bar.setAttribute("fill", COLORS[cls] || "#555"); bar.setAttribute("data-class", cls);
    const value = document.createElementNS(SVG, "text");
    value.setAttribute("x", String(labelW + p * barMax + 6)); value.setAttribute("y", String(y + 19));
    value.setAttribute("class", "value"); value.textContent = `${(p * 100).toFixed(1)} %`;
    svg.append(label, bar, value);
  });
}

const names = {};

// With AUTH_MODE on, the API's calls carry the key typed into the page (never stored).
function authHeaders() {
  const key = $("api-key").value.trim();
  return key ? { Authorization: `Bearer ${key}` } : {};
}

function askForKey() {
  $("auth").hidden = false;
  $("api-key").focus();
}

async function predict() {
  showError("");
  clearResult();
  const lines = readBasket();
  if (!lines.length) { showError("Add at least one line first."); return; }
  $("predict").disabled = true;
  const started = performance.now();
  try {
    const res = await fetch("/predict?explain=true", {
      method: "POST", headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ basket_items: lines }),
    });
    const body = await res.json().catch(() => ({}));
    if (res.status === 401) askForKey();
    if (!res.ok) { showError(plainError(body.error || {}, res.status)); return; }
    names[body.label] = body.label_name;
    $("result-label").textContent = body.label;
    $("result-name").textContent = body.label_name;
    $("result").hidden = false; $("no-result").hidden = true;
    drawChart(body.probabilities);
    showExplanation(body.explanation);
    $("result-meta").textContent = `model ${body.model_version} · ${lines.length} line(s), ` +
      `${body.unknown_products} unknown product(s), ${body.unknown_categories} unknown categor(y/ies) · ` +
      `request ${body.request_id} · ${Math.round(performance.now() - started)} ms`;
  } catch (err) {
    showError(`The request failed: ${err}`);
  } finally {
    $("predict").disabled = false;
  }
}

function showInfo(info) {
  const dl = $("info");
  dl.replaceChildren();
  const t = info.training || {};
  const v = info.validation || {};
  const rows = [
    ["Version", info.model_version], ["Model", info.chosen_model], ["SHA-256", info.sha256],
    ["Source", info.source_uri], ["Loaded at", info.loaded_at],
    ["Training weeks", t.weeks ? `${t.weeks[0]}–${t.weeks[1]} (${t.n_weeks} weeks, ${t.baskets} baskets)` : "—"],
    ["Validation", v.macro_f1 != null ? `macro-F1 ${v.macro_f1.toFixed(3)}, accuracy ${v.accuracy.toFixed(3)}` : "—"],
    ["Classes", info.classes.map((c) => `${c.label} (${c.name})`).join(", ")],
    ["Build", [info.build.commit, info.build.branch, info.build.date].filter(Boolean).join(" · ") || "—"],
  ];
  rows.forEach(([k, val]) => { dl.append(el("dt", {}, k), el("dd", {}, String(val ?? "—"))); });
  info.classes.forEach((c) => { names[c.label] = c.name; });
  examples = info.example_products || [];
  const select = $("example");
  examples.forEach((e, i) => {
    select.append(el("option", { value: String(i) }, `${e.product_id} · ${e.price.toFixed(2)} · mostly ${e.likely_class}`));
  });
}

async function loadInfo(attempt = 0) {
  try {
    const res = await fetch("/model/info", { headers: authHeaders() });
    const body = await res.json();
    if (res.status === 401 || res.status === 404) {
      // AUTH_MODE on without the right key, or METRICS_PORT (the info is on the internal port): no retry.
      if (res.status === 401) askForKey();
      $("status").textContent = res.status === 401 ? "Enter an API key to use the model"
        : "Model info is not served on this port";
      $("status").dataset.state = "error";
      return;
    }
    if (!res.ok) throw new Error(body.error ? body.error.message : `HTTP ${res.status}`);
    $("status").textContent = `Model ${body.model_version} ready`;
    $("status").dataset.state = "ready";
    showInfo(body);
  } catch (err) {
    $("status").textContent = `Model not ready: ${err.message}`;
    $("status").dataset.state = "error";
    if (attempt < 60) setTimeout(() => loadInfo(attempt + 1), 2000);
  }
}

$("add-line").addEventListener("click", () => addLine());
$("add-example").addEventListener("click", () => {
  const e = examples[Number($("example").value)];
  if ($("example").value !== "" && e) addLine({ product_id: e.product_id, price: e.price, hierarchy: e.hierarchy });
});
$("clear").addEventListener("click", () => {
  $("lines").tBodies[0].replaceChildren();
  showError("");
  clearResult();
});
$("predict").addEventListener("click", predict);
$("use-key").addEventListener("click", () => { $("example").replaceChildren($("example").options[0]); loadInfo(); });
$("api-key").addEventListener("keydown", (e) => { if (e.key === "Enter") $("use-key").click(); });
addLine({ product_id: "PRD0900097", quantity: 1, price: 1.5 });
loadInfo();
