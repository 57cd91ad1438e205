"""The page of ``emdcli review``: one self-contained HTML document (its script and style inline, no
request leaves the machine). It reads ``/api/state`` and says every decision through ``/api/decide``
or ``/api/undo``, the token of its own address on each call. Keyboard only:

- ``j`` / ``k`` (or the arrows): the next / previous query;
- ``a`` or Enter: accept the prediction; ``1`` .. ``9``: correct it to that class; ``c``: a class by
  name (a new one too); ``n``: none of these; ``s``: skip; ``u``: undo the last decision.
"""

from __future__ import annotations

__all__ = ["review_page"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>emdcli review</title>
<style>
body{font:14px system-ui,sans-serif;margin:1rem 2rem;color:#222}
h1{font-size:1.2rem} h2{font-size:1rem;margin:1.2rem 0 .4rem}
.keys{color:#555} .classes span{margin-right:1rem} .classes b{color:#06c}
.item{display:flex;gap:.8rem;align-items:center;padding:.4rem;border:2px solid transparent;border-radius:6px}
.item.focus{border-color:#06c;background:#eef5ff}
.item img{width:96px;height:96px;object-fit:contain;background:#f4f4f4}
.support img{width:48px;height:48px;object-fit:contain;opacity:.85}
.meta{min-width:22rem} .low{color:#b35c00} .rejected{color:#a00} #status{color:#060;min-height:1.2em}
.suggested{outline:2px dashed #b35c00}
</style></head><body>
<h1>emdcli review</h1>
<p class="keys"><b>j</b>/<b>k</b> move &middot; <b>a</b> or Enter accept &middot; <b>1</b>-<b>9</b> correct to class
&middot; <b>c</b> class by name &middot; <b>n</b> none of these &middot; <b>s</b> skip &middot; <b>u</b> undo</p>
<p class="classes" id="classes"></p>
<p id="status"></p>
<div id="queue"></div>
<script>
"use strict";
const token = new URLSearchParams(location.search).get("token") || "";
let state = null, order = [], focus = 0;
const $ = (id) => document.getElementById(id);
const api = (path) => path + (path.includes("?") ? "&" : "?") + "token=" + encodeURIComponent(token);

function say(text) { $("status").textContent = text; }

function render() {
  const classes = state.classes;
  $("classes").innerHTML = "";
  classes.forEach((c, i) => {
    const span = document.createElement("span");
    span.innerHTML = "<b>" + (i < 9 ? i + 1 : "") + "</b> ";
    span.appendChild(document.createTextNode(c + " (" + state.examples[c] + ")"));
    $("classes").appendChild(span);
  });
  const queue = $("queue");
  queue.innerHTML = "";
  order = [];
  const suggested = new Set(state.suggested);
  const groups = classes.map((c) => [c, state.items.filter((it) => !it.rejected && it.predicted === c)]);
  groups.push(["none of these (rejected)", state.items.filter((it) => it.rejected)]);
  for (const [name, items] of groups) {
    if (!items.length) continue;
    const h = document.createElement("h2");
    h.textContent = name + " \\u2014 " + items.length;
    queue.appendChild(h);
    for (const it of items) {
      const row = document.createElement("div");
      row.className = "item" + (suggested.has(it.id) ? " suggested" : "");
      row.dataset.id = it.id;
      const img = document.createElement("img");
      img.src = api("/img/q/" + it.id);
      img.alt = it.path;
      const meta = document.createElement("div");
      meta.className = "meta";
      const conf = Math.round(100 * it.confidence);
      meta.innerHTML = "<div></div><div class='" + (it.margin < 0.2 ? "low" : "") + "'></div><div></div>";
      meta.children[0].textContent = it.path;
      meta.children[1].textContent = (it.rejected ? "rejected, nearest " : "") + it.predicted + " " + conf + "%";
      meta.children[2].textContent = it.runner_up ? "runner-up " + it.runner_up : "";
      const support = document.createElement("div");
      support.className = "support";
      const ci = classes.indexOf(it.predicted);
      for (let k = 0; k < Math.min(3, state.examples[it.predicted] || 0); k++) {
        const ex = document.createElement("img");
        ex.src = api("/img/s/" + ci + "/" + k);
        ex.alt = "example of " + it.predicted;
        support.appendChild(ex);
      }
      row.append(img, meta, support);
      queue.appendChild(row);
      order.push(it.id);
    }
  }
  focus = Math.min(focus, Math.max(0, order.length - 1));
  show();
  if (!order.length) say("nothing left to decide (" + state.decided + " decided)");
}

function show() {
  document.querySelectorAll(".item").forEach((el, i) => el.classList.toggle("focus", i === focus));
  const el = document.querySelectorAll(".item")[focus];
  if (el) el.scrollIntoView({block: "nearest"});
}

async function call(path, body) {
  const r = await fetch(api(path), {method: "POST", headers: {"Content-Type": "application/json"},
                                    body: JSON.stringify(body || {})});
  const answer = await r.json();
  if (!r.ok) { say("not done: " + answer.error); return; }
  state = answer;
  render();
}

async function decide(action, label) {
  if (!order.length) return;
  const id = order[focus];
  await call("/api/decide", {id: id, action: action, label: label});
  if (state) say(action + (label ? " " + label : "") + ": done (" + state.decided + " decided)");
}

document.addEventListener("keydown", (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey) return;
  const k = e.key;
  if (k === "j" || k === "ArrowDown") { focus = Math.min(focus + 1, order.length - 1); show(); }
  else if (k === "k" || k === "ArrowUp") { focus = Math.max(focus - 1, 0); show(); }
  else if (k === "a" || k === "Enter") decide("accept");
  else if (k === "n") decide("none");
  else if (k === "s") decide("skip");
  else if (k === "u") call("/api/undo").then(() => say("undone"));
  else if (k >= "1" && k <= "9") {
    const c = state.classes[Number(k) - 1];
    if (c !== undefined) decide("correct", c);
  } else if (k === "c") {
    const name = prompt("class (an existing one, or a new one):");
    if (name) decide("correct", name);
  } else return;
  e.preventDefault();
});

fetch(api("/api/state")).then((r) => r.json()).then((s) => { state = s; render(); });
</script></body></html>
"""


def review_page() -> str:
    """The HTML document of the review page."""
    return _PAGE
