// The page talks to the same /v1/ API as any client; nothing here is needed by the API itself.
"use strict";
const $ = (id) => document.getElementById(id);
let token = localStorage.getItem("retrieval-token") || "";

async function api(path, body) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = "Bearer " + token;
  const response = await fetch(path, body ? { method: "POST", headers, body: JSON.stringify(body) } : { headers });
  if (response.status === 401) $("token-box").hidden = false;
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(message);
  }
  return response;
}

function status(id, text, kind) {
  const el = $(id);
  el.textContent = text || "";
  el.className = "status" + (kind ? " " + kind : "");
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

// Tweets keep <hyperlink> and <mention> placeholders: show them as labels, never as HTML.
function tweetText(text) {
  const node = el("p", "text");
  for (const part of (text || "").split(/(<hyperlink>|<mention>)/)) {
    if (part === "<hyperlink>") node.append(el("span", "placeholder", "link"));
    else if (part === "<mention>") node.append(el("span", "placeholder", "@mention"));
    else if (part) node.append(document.createTextNode(part));
  }
  if (!text) node.append(el("span", "muted", "(no text)"));
  return node;
}

const day = (iso) => (iso ? iso.slice(0, 10) : "undated");
const index = () => $("index").value;

function card(hit) {
  const li = el("li");
  const meta = el("div", "meta");
  meta.append(el("strong", "", "@" + (hit.username || "unknown")), el("span", "", day(hit.date)));
  if (hit.likes !== null) meta.append(el("span", "", hit.likes.toLocaleString() + " likes"));
  meta.append(el("span", "", "score " + hit.score.toFixed(3)));
  const sides = Object.entries(hit.found_by || {}).map(([side, rank]) => `${side} #${rank}`);
  if (sides.length) meta.append(el("span", "muted", "found by " + sides.join(", ")));
  const f = hit.factors || {};
  if (f.relative_likes !== undefined) {
    meta.append(el("span", "muted", `${f.relative_likes.toFixed(1)}x its account's usual ${Math.round(f.typical_likes).toLocaleString()}`));
  }
  if (f.decay !== undefined && f.age_days !== undefined) meta.append(el("span", "muted", `age weight ${f.decay.toFixed(2)}`));
  if ((hit.near_copies || []).length) {
    meta.append(el("span", "muted", `+${hit.near_copies.length} near-cop${hit.near_copies.length === 1 ? "y" : "ies"}: #${hit.near_copies.join(", #")}`));
  }
  li.append(meta, tweetText(hit.content));
  const links = el("div", "meta");
  hit.media.forEach((m, i) => {
    const href = m.url || m.thumbnail || "";
    if (!/^https?:\/\//i.test(href)) return;  // only web links: a file's media may hold anything
    const a = el("a", "", m.kind + " " + (i + 1));
    a.href = href; a.target = "_blank"; a.rel = "noopener";
    links.append(a);
  });
  if (hit.id !== null && hit.content) {
    const more = el("button", "more", "more like this");
    more.type = "button";
    more.addEventListener("click", () => search({ id: hit.id }, "tweets like #" + hit.id));
    links.append(more);
  }
  li.append(links);
  return li;
}

function filters() {
  const value = (id) => $(id).value.trim() || null;
  const minLikes = $("f-min-likes").value;
  return { username: value("f-username"), company: value("f-company"), since: value("f-since"),
    until: value("f-until"), min_likes: minLikes === "" ? null : Number(minLikes) };
}

async function search(query, label) {
  status("search-status", "Searching…", "busy");
  $("results").replaceChildren();
  try {
    const k = Number($("f-k").value) || 10;
    const mode = query.text ? $("f-mode").value : "vector";
    const number = (id) => ($(id).value === "" ? null : Number($(id).value));
    const rank = $("f-rank").value;
    const steer = { rank, collapse: $("f-collapse").checked ? 0.95 : null,
      half_life_days: rank === "blend" ? number("f-half-life") : null,
      min_score: query.text && mode === "vector" ? number("f-min-score") : null };
    const body = { index: index(), k, mode, filters: filters(), ...steer, ...query };
    const found = await (await api("/v1/similar", body)).json();
    $("results").replaceChildren(...found.hits.map(card));
    status("search-status", found.hits.length ? `${found.hits.length} ${label}` : "No tweets match; try fewer filters.");
  } catch (e) {
    status("search-status", "Search failed: " + e.message, "error");
  }
}

async function predict(event) {
  event.preventDefault();
  status("draft-status", "Predicting…", "busy");
  $("prediction").hidden = true;
  try {
    const body = { index: index(), text: $("draft-text").value, username: $("draft-username").value.trim(),
      date: $("draft-date").value || null };
    const p = await (await api("/v1/predict", body)).json();
    const [low, high] = p.interval_80;
    const top = Math.max(high * 1.15, 1);
    $("pred-likes").textContent = Math.round(p.likes).toLocaleString();
    $("pred-interval").textContent = `80% interval: ${Math.round(low).toLocaleString()} – ${Math.round(high).toLocaleString()}`;
    $("pred-bar").style.left = (100 * low / top) + "%";
    $("pred-bar").style.width = (100 * (high - low) / top) + "%";
    $("pred-point").style.left = (100 * p.likes / top) + "%";
    const from = { account: "this account's tweets", company: "its company's tweets", base: "all tweets like it" }[p.prior.source];
    $("pred-prior").textContent = `Starts from ${from} (${p.prior.account_tweets} by the account); similar tweets move it ${p.adjustment_log1p >= 0 ? "up" : "down"}.`;
    $("neighbours").replaceChildren(...p.neighbours.slice(0, 8).map((n) => {
      const li = el("li");
      const text = tweetText((n.content || "").slice(0, 140));
      text.prepend(el("span", "muted", `${(100 * n.weight).toFixed(0)}% · ${n.likes} likes · @${n.username || "?"} · `));
      li.append(text);
      return li;
    }));
    $("prediction").hidden = false;
    status("draft-status", p.neighbours.length ? "" : "No earlier tweets to compare with.");
  } catch (e) {
    status("draft-status", "Prediction failed: " + e.message, "error");
  }
}

function draftCard(c, n) {
  const li = el("li");
  const likes = c.predicted_likes === null ? "" : ` · predicted ${Math.round(c.predicted_likes)} likes`;
  const voice = c.brand_voice === null ? "" : ` · brand voice ${c.brand_voice.toFixed(2)}`;
  li.append(el("div", "meta", `#${n + 1}${likes}${voice}`), tweetText(c.text || "(the model returned no usable text)"));
  if (c.near_copy) {
    const copied = `Near-copy (similarity ${c.nearest.similarity.toFixed(2)}) of @${c.nearest.username || "?"}: ${c.nearest.content}`;
    li.append(el("div", "status error", copied));
  }
  if (c.exemplars.length) {
    const cited = el("details");
    cited.append(el("summary", "", `built from ${c.exemplars.length} past tweets`));
    const list = el("ol", "compact");
    c.exemplars.forEach((e) => list.append(el("li", "", `@${e.username || "?"} (${e.likes ?? "?"} likes): ${e.content}`)));
    cited.append(list);
    li.append(cited);
  }
  return li;
}

async function write(event) {
  event.preventDefault();
  const button = event.submitter || $("write-form").querySelector("button");
  button.disabled = true;
  status("write-status", "The model is writing…", "busy");
  $("drafts").replaceChildren();
  const stream = $("write-stream");
  stream.textContent = ""; stream.hidden = false;
  try {
    const body = { index: index(), username: $("write-username").value.trim(), media: $("write-media").value,
      topic: $("write-topic").value || null, candidates: Number($("write-n").value) || 1,
      rank: $("write-rank").value, original: $("write-original").checked, stream: true };
    const reader = (await api("/v1/generate", body)).body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    const drafting = [];  // the drafts are written together, a token of each in turn
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut); buffer = buffer.slice(cut + 2);
        const kind = (block.match(/^event: (.*)$/m) || [])[1];
        const data = JSON.parse((block.match(/^data: (.*)$/m) || [, "null"])[1]);
        if (kind === "token") {
          drafting[data.candidate] = (drafting[data.candidate] || "") + data.text;
          stream.textContent = drafting.map((text, i) => `${i + 1}. ${text || ""}`).join("\n");
        }
        if (kind === "error") throw new Error(data.error);
        if (kind === "result") {
          $("drafts").replaceChildren(...data.candidates.map(draftCard));
          stream.hidden = true;
          status("write-status", data.ranked_by ? `Best first, by ${data.ranked_by.replace("_", " ")}.` : "");
        }
      }
    }
  } catch (e) {
    status("write-status", "Writing failed: " + e.message, "error");
  } finally {
    button.disabled = false;
  }
}

async function loadIndexes() {
  try {
    const indexes = await (await api("/v1/indexes")).json();
    $("index").replaceChildren(...indexes.map((i) => { const o = el("option", "", i.name); o.value = i.name; return o; }));
    const show = () => {
      const i = indexes.find((x) => x.name === index());
      $("index-info").textContent = i ? `${i.rows.toLocaleString()} tweets · ${i.spaces.join(" + ")} · version ${i.version}` : "";
    };
    $("index").addEventListener("change", show);
    show();
  } catch (e) {
    status("search-status", "Cannot list the indexes: " + e.message, "error");
  }
}

$("search-form").addEventListener("submit", (event) => {
  event.preventDefault();
  search({ text: $("query").value }, "similar tweets");
});
$("image-query").addEventListener("change", () => {
  const file = $("image-query").files[0];
  if (!file) return;
  if (file.size > 10 * 2 ** 20) {
    status("search-status", "That picture is over 10 MiB; choose a smaller one.", "error");
    return;
  }
  const reader = new FileReader();
  reader.onload = () => search({ image: reader.result }, "tweets with pictures like it");
  reader.readAsDataURL(file);
});
$("draft-form").addEventListener("submit", predict);
$("write-form").addEventListener("submit", write);
$("token-save").addEventListener("click", () => {
  token = $("token").value.trim();
  localStorage.setItem("retrieval-token", token);
  $("token-box").hidden = true;
  loadIndexes();
});
loadIndexes();
