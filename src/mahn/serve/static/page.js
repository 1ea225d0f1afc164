// The page of `mahn serve` (GET /): build a history of items, then see each run's top-k side by side.
// Plain JavaScript, no build step and nothing fetched from elsewhere. Every call goes to the API of the
// server that sent this page (relative paths, so a path prefix in front of it works too).
// The URL keeps the history and k (?item=KEY&item=KEY&k=10): reload or share it to see the same list.
"use strict";

const $ = (id) => document.getElementById(id);
const state = {
  history: [], // items ({key, title, image_url}), oldest first
  heldOut: [], // a picked user's validation and test items, marked when they are recommended
  runs: [], // {name: "main" | "compare", node: the column}
  request: 0, // the latest recommendation request: older answers are dropped
};

// --- talking to the API ---------------------------------------------------------------------------

// A server started with `--protect all` wants its token for reads too: asked for once, on its first 401 or 403,
// and kept for this tab only (sessionStorage).
const TOKEN_KEY = "mahn-token";

function withToken(options) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return options || {};
  return { ...(options || {}), headers: { ...((options || {}).headers || {}), Authorization: `Bearer ${token}` } };
}

async function api(path, options, asked = false) {
  let response;
  try {
    response = await fetch(path, withToken(options));
  } catch {
    throw new Error("the server did not answer (is `mahn serve` still running?)");
  }
  if ((response.status === 401 || response.status === 403) && !asked) {
    const token = window.prompt("This server needs its token (mahn serve --token-file):");
    if (token) {
      sessionStorage.setItem(TOKEN_KEY, token.trim());
      return api(path, options, true);
    }
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(describe(body, response));
  return body;
}

function describe(body, response) {
  const detail = body && body.detail;
  if (typeof detail === "string") return detail;
  if (Array.isArray(detail)) {  // a 422: one entry per field that did not match the schema
    return detail.map((e) => `${(e.loc || []).slice(1).join(".") || "request"}: ${e.msg}`).join("; ");
  }
  return `${response.status} ${response.statusText || "error"}`;
}

function showError(error) {
  $("error-text").textContent = error instanceof Error ? error.message : String(error);
  $("error").hidden = false;
}

function clearError() {
  $("error").hidden = true;
}

// --- building blocks ------------------------------------------------------------------------------

function el(tag, props = {}, ...children) {
  const node = Object.assign(document.createElement(tag), props);
  node.append(...children.filter((child) => child != null));
  return node;
}

function picture(item) {
  const blank = el("div", { className: "placeholder", textContent: "no image" });
  if (!item.image_url) return blank;
  const image = el("img", { alt: item.title });
  image.addEventListener("error", () => image.replaceWith(blank));
  if (sessionStorage.getItem(TOKEN_KEY) && !/^https?:/.test(item.image_url)) {
    // an <img> cannot send the token: the image is fetched with it and shown from memory
    fetch(item.image_url, withToken()).then((r) => (r.ok ? r.blob() : Promise.reject(r)))
      .then((blob) => { image.src = URL.createObjectURL(blob); }, () => image.replaceWith(blank));
  } else {
    image.src = item.image_url;
  }
  return image;
}

function card(item, ...extra) {
  const node = el("figure", { className: "card", title: item.key }, picture(item),
    el("figcaption", {}, el("span", { className: "title", textContent: item.title }),
      el("span", { className: "key", textContent: item.key }), ...extra));
  node.dataset.key = item.key;
  return node;
}

function pick(content, onClick) {
  const button = el("button", { type: "button" }, ...content);
  button.addEventListener("click", onClick);
  return el("li", {}, button);
}

function debounce(fn, ms = 200) {
  let timer;
  return () => {
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  };
}

// --- the history ----------------------------------------------------------------------------------

function addItem(item) {
  state.history.push({ key: item.key, title: item.title, image_url: item.image_url });
  renderHistory();
}

function renderHistory() {
  const cards = state.history.map((item, i) => {
    const remove = el("button", { type: "button", className: "remove", textContent: "×", title: "Remove" });
    remove.setAttribute("aria-label", `Remove ${item.title}`);
    remove.addEventListener("click", () => {
      state.history.splice(i, 1);
      renderHistory();
    });
    const node = card(item);
    node.append(remove);
    return node;
  });
  $("history").replaceChildren(...cards);
  $("history-count").textContent = state.history.length ? `(${state.history.length})` : "";
  $("recommend").disabled = state.history.length === 0;
  const names = ["validation", "test"].slice(-state.heldOut.length);
  $("history-note").textContent = state.heldOut.length
    ? `Held out of training: ${state.heldOut.map((item, i) => `${item.title} (${names[i]})`).join(", ")}. `
      + "Recommended held-out items are marked."
    : "Oldest first. Click search results to add items; × removes one.";
}

// A search box that lists what the API finds as the user types; an answer to an older query is dropped.
function liveSearch(input, list, path, field, row, empty) {
  let latest = 0;
  return async function search() {
    const query = $(input).value.trim();
    const seq = ++latest;
    if (!query) return $(list).replaceChildren();
    try {
      const found = await api(`${path}?query=${encodeURIComponent(query)}&limit=12`);
      if (seq !== latest) return;
      $(list).replaceChildren(...(found[field].length
        ? found[field].map(row)
        : [el("li", { className: "hint", textContent: empty })]));
    } catch (error) {
      showError(error);
    }
  };
}

const searchItems = liveSearch("query", "found", "items", "items",
  (item) => pick([picture(item), el("span", { textContent: item.title })], () => addItem(item)),
  "No title contains that.");

async function addByKey(event) {
  event.preventDefault();
  const key = $("key").value.trim();
  if (!key) return;
  clearError();
  try {
    addItem(await api(`items/${encodeURIComponent(key)}`));
    $("key").value = "";
  } catch (error) {
    showError(error);
  }
}

const searchUsers = liveSearch("user-query", "users", "users", "users",
  (user) => pick([el("span", { textContent: `${user.key} · ${user.train_items} items` })], () => loadUser(user.key)),
  "No user key contains that.");

async function loadUser(key) {
  clearError();
  try {
    const user = await api(`users/${encodeURIComponent(key)}/history`);
    state.history = user.history;
    state.heldOut = user.held_out;
    renderHistory();
    if (state.history.length) await recommend();
  } catch (error) {
    showError(error);
  }
}

// --- recommendations, one column per run ------------------------------------------------------------

function label(info) {
  const ablate = (info.settings.model_config || {}).ablate;
  if (info.name !== "mahn") return info.name;
  return "MAHN" + (ablate ? "-" + ablate.toUpperCase().split("").join("-") : "");
}

function column(name, info) {
  const folder = info ? info.path.split(/[\\/]/).filter(Boolean).pop() : "";
  const ndcg = info && info.test && info.test.full && info.test.full["NDCG@10"];
  const meta = info
    ? [`model ${info.name}`, `run ${folder}`, ndcg != null ? `test NDCG@10 ${ndcg.toFixed(4)} (full)` : null]
    : ["model unknown"];
  const node = el("section", { className: "column" },
    el("h2", { textContent: info ? label(info) : name }),
    el("p", { className: "meta", textContent: `${name} · ${meta.filter(Boolean).join(" · ")}` }),
    el("p", { className: "column-error", role: "alert", hidden: true }),
    el("ol", { className: "cards" }));
  node.dataset.run = name;
  return { name, node };
}

function renderColumn(run, items) {
  const last = state.heldOut.length - 1;  // the held-out items: validation, then test
  const heldOut = new Map(state.heldOut.map((item, i) => [item.key, i === last ? "test" : "validation"]));
  run.node.querySelector(".column-error").hidden = true;
  run.node.querySelector("ol").replaceChildren(...items.map((item, i) => {
    const score = el("span", { className: "score", textContent: `score ${item.score.toFixed(4)}` });
    score.dataset.score = String(item.score);  // the exact number the API sent
    const mark = heldOut.has(item.key)
      ? el("span", { className: "badge", textContent: `held-out ${heldOut.get(item.key)}` }) : null;
    const node = card(item, score, mark);
    node.append(el("span", { className: "rank", textContent: `#${i + 1}` }));
    if (mark) node.classList.add("held-out");
    return el("li", {}, node);
  }));
}

function renderColumnError(run, error) {
  const box = run.node.querySelector(".column-error");
  box.textContent = error.message;
  box.hidden = false;
  run.node.querySelector("ol").replaceChildren();
}

async function recommend(event) {
  if (event) event.preventDefault();
  if (!state.history.length) return showError("Add at least one item to the history first.");
  clearError();
  const k = Number($("k").value);
  const history = state.history.map((item) => item.key);
  const body = JSON.stringify({ history, k });
  const seq = ++state.request;
  $("results").dataset.state = "loading";
  await Promise.all(state.runs.map(async (run) => {
    try {
      const answer = await api(`recommend?run=${run.name}`,
        { method: "POST", headers: { "content-type": "application/json" }, body });
      if (seq === state.request) renderColumn(run, answer.items);
    } catch (error) {
      if (seq === state.request) renderColumnError(run, error);
    }
  }));
  if (seq !== state.request) return;
  $("results").dataset.state = "done";
  const params = new URLSearchParams(history.map((key) => ["item", key]));
  params.set("k", $("k").value);
  window.history.replaceState(null, "", `?${params}`);
}

// --- start ------------------------------------------------------------------------------------------

async function start() {
  $("query").addEventListener("input", debounce(searchItems));
  $("user-query").addEventListener("input", debounce(searchUsers));
  $("by-key").addEventListener("submit", addByKey);
  $("ask").addEventListener("submit", recommend);
  $("error-close").addEventListener("click", clearError);
  $("clear").addEventListener("click", () => {
    state.history = [];
    state.heldOut = [];
    renderHistory();
  });
  renderHistory();
  try {
    const main = await api("model?run=main");
    state.runs = [column("main", main)];
    if (main.compare) state.runs.push(column("compare", await api("model?run=compare")));
    $("runs-summary").textContent = state.runs.length > 1
      ? `${label(main)} beside ${state.runs[1].node.querySelector("h2").textContent} · ${main.items} items`
      : `${label(main)} · ${main.items} items`;
  } catch (error) {
    showError(error);
    if (!state.runs.length) state.runs = [column("main", null)];
  }
  $("results").replaceChildren(...state.runs.map((run) => run.node));
  const params = new URLSearchParams(window.location.search);
  if (params.get("k")) $("k").value = params.get("k");
  const problems = [];
  for (const key of params.getAll("item")) {
    try {
      addItem(await api(`items/${encodeURIComponent(key)}`));
    } catch (error) {
      problems.push(error.message);
    }
  }
  if (params.get("user")) await loadUser(params.get("user"));
  else if (state.history.length) await recommend();
  if (problems.length) showError(`Left out of the history from the URL: ${problems.join("; ")}`);
  document.body.dataset.ready = "true";
}

start();
