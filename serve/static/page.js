// The page: a typed query in, ranked listings out; or a photo in, its category (a bar per
// category) and similar listings out. Plain JavaScript over the service's own API
// (/model, GET and POST /search, /predict, /listings).
"use strict";

const RESULTS = 12;
const $ = (id) => document.getElementById(id);

function setStatus(text, bad = false) {
  const status = $("status");
  status.textContent = text;
  status.classList.toggle("bad", bad);
}

async function detailOf(reply) {
  try {
    const body = await reply.json();
    return typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
  } catch {
    return `${reply.status} ${reply.statusText}`;
  }
}

async function refreshState() {
  const state = $("model-state");
  try {
    const reply = await fetch("/model");
    if (!reply.ok) {
      state.textContent = `The service has no model yet: ${await detailOf(reply)}`;
      state.classList.add("bad");
      return null;
    }
    const model = await reply.json();
    const search = model.index && model.index.available
      ? `search over ${model.index.listings} listings`
      : `no search index yet${model.index && model.index.problem ? ` (${model.index.problem})` : ""}`;
    state.textContent = `Serving ${model.name || model.uri} version ${model.version} ` +
      `(${model.engine}); ${search}.`;
    state.classList.toggle("bad", !(model.index && model.index.available));
    return model;
  } catch (error) {
    state.textContent = `The service does not answer: ${error}`;
    state.classList.add("bad");
    return null;
  }
}

function showCategory(category, probability, topK) {
  $("category-panel").hidden = false;
  $("category-answer").textContent =
    `${category} (${(probability * 100).toFixed(1)}% sure)`;
  const bars = $("bars");
  bars.replaceChildren();
  for (const score of topK) {
    const item = document.createElement("li");
    const name = document.createElement("span");
    name.textContent = score.category;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.setAttribute("role", "presentation");
    const fill = document.createElement("span");
    fill.style.width = `${Math.max(0, Math.min(100, score.probability * 100))}%`;
    bar.append(fill);
    const value = document.createElement("span");
    value.className = "value";
    value.textContent = `${(score.probability * 100).toFixed(1)}%`;
    item.setAttribute("aria-label", `${score.category}: ${value.textContent}`);
    item.append(name, bar, value);
    bars.append(item);
  }
}

function price(value) {
  return value === null || value === undefined || Number.isNaN(value)
    ? "price not given"
    : `£${Number(value).toLocaleString("en-GB", { maximumFractionDigits: 2 })}`;
}

// What an answer's `ranking` says, in words: learned vN, blend or photo.
function rankingText(ranking) {
  if (!ranking) return "";
  if (ranking.startsWith("learned ")) {
    return `Ranked by the learned ranker (${ranking.slice("learned ".length)}).`;
  }
  if (ranking === "blend") {
    return "Ranked by the hand-set blend of text relevance, photo similarity and category.";
  }
  if (ranking === "photo") return "Ranked by photo similarity.";
  return `Ranked by ${ranking}.`;
}

function showResults(title, results, ranking = null) {
  $("results-panel").hidden = false;
  $("results-title").textContent = title;
  const used = $("ranking");
  used.textContent = rankingText(ranking);
  used.hidden = !ranking;
  used.dataset.ranking = ranking || "";
  const grid = $("results");
  grid.replaceChildren();
  if (!results.length) {
    const empty = document.createElement("li");
    empty.textContent = "No listings match.";
    grid.append(empty);
    return;
  }
  for (const listing of results) {
    const item = document.createElement("li");
    item.className = "card";
    const button = document.createElement("button");
    button.type = "button";
    button.dataset.productId = listing.product_id;
    button.setAttribute("aria-label", `${listing.name}, ${price(listing.price)}, ` +
      `${listing.location || "no location"}: show similar listings`);
    const image = document.createElement("img");
    image.src = listing.thumbnail_url;
    image.alt = `Photo of ${listing.name}`;
    image.loading = "lazy";
    const body = document.createElement("div");
    body.className = "body";
    const name = document.createElement("p");
    name.className = "name";
    name.textContent = listing.name;
    const meta = document.createElement("p");
    meta.className = "meta";
    const amount = document.createElement("span");
    amount.className = "price";
    amount.textContent = price(listing.price);
    meta.append(amount, ` · ${listing.location || "no location"} · ${listing.category}` +
      ` · score ${listing.score.toFixed(2)}`);
    body.append(name, meta);
    button.append(image, body);
    button.addEventListener("click", () => showSimilar(listing));
    item.append(button);
    grid.append(item);
  }
}

async function showSimilar(listing) {
  setStatus(`Finding listings similar to ${listing.name}…`);
  const reply = await fetch(
    `/listings/${encodeURIComponent(listing.product_id)}/similar?k=${RESULTS}`);
  if (!reply.ok) {
    setStatus(await detailOf(reply), true);
    return;
  }
  const answer = await reply.json();
  showResults(`Listings similar to ${listing.name}`, answer.results);
  setStatus("");
  $("results-title").scrollIntoView({ behavior: "smooth", block: "start" });
}

async function sendPhoto(file) {
  if (!file) return;
  const preview = $("preview");
  preview.src = URL.createObjectURL(file);
  preview.alt = `The photo you chose: ${file.name}`;
  preview.hidden = false;
  setStatus("Looking at your photo…");
  const form = new FormData();
  form.append("image", file);
  form.append("k", String(RESULTS));
  let reply = await fetch("/search", { method: "POST", body: form });
  if (reply.status === 503) {
    // No search index for this version yet: the category still comes from /predict.
    const why = await detailOf(reply);
    const single = new FormData();
    single.append("image", file);
    reply = await fetch("/predict", { method: "POST", body: single });
    if (reply.ok) {
      const answer = await reply.json();
      showCategory(answer.category, answer.probability, answer.top_k);
      $("results-panel").hidden = true;
      setStatus(`No similar listings: ${why}`, true);
      return;
    }
  }
  if (!reply.ok) {
    $("category-panel").hidden = true;
    $("results-panel").hidden = true;
    setStatus(await detailOf(reply), true);
    return;
  }
  const answer = await reply.json();
  showCategory(answer.category, answer.probability, answer.top_k);
  showResults("Similar listings", answer.results, answer.ranking);
  setStatus("");
}

async function sendQuery(query) {
  const text = query.trim();
  if (!text) return;
  setStatus(`Searching for “${text}”…`);
  const reply = await fetch(`/search?q=${encodeURIComponent(text)}&k=${RESULTS}`);
  if (!reply.ok) {
    $("results-panel").hidden = true;
    setStatus(await detailOf(reply), true);
    return;
  }
  const answer = await reply.json();
  $("category-panel").hidden = true;
  showResults(`Listings for “${answer.query}”`, answer.results, answer.ranking);
  setStatus(answer.category
    ? `Read as ${answer.category} (${(answer.probability * 100).toFixed(0)}% sure): ` +
      "listings of that category rank higher."
    : "");
}

function wireSearchBox() {
  $("text-search").addEventListener("submit", (event) => {
    event.preventDefault();
    sendQuery($("q").value);
  });
}

function wireDropZone() {
  const drop = $("drop");
  const input = $("photo");
  input.addEventListener("change", () => sendPhoto(input.files[0]));
  drop.addEventListener("click", (event) => {
    if (event.target !== input && event.target.tagName !== "LABEL") input.click();
  });
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  for (const name of ["dragenter", "dragover"]) {
    drop.addEventListener(name, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    drop.addEventListener(name, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    sendPhoto(event.dataTransfer.files[0]);
  });
}

wireSearchBox();
wireDropZone();
refreshState();
setInterval(refreshState, 15000);
