// The page of "baton web": it draws the state that /events streams, and
// nothing else; it writes nothing anywhere. Every text goes in with
// textContent, so names and notes show as typed and cannot inject markup.
"use strict";

const main = document.getElementById("entries");
const empty = document.getElementById("empty");
let last = null;      // the latest state
let skew = 0;         // server clock minus ours, in ms

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// human prints a duration as baton does: 850ms, 12s, 3m4s, 2h5m.
function human(ms) {
  if (ms < 0) ms = 0;
  if (ms < 1000) return Math.round(ms / 10) * 10 + "ms";
  let s = Math.round(ms / 1000);
  if (s < 60) return s + "s";
  let m = Math.floor(s / 60); s %= 60;
  if (m < 60) return m + "m" + (s ? s + "s" : "");
  const h = Math.floor(m / 60); m %= 60;
  return h + "h" + (m ? m + "m" : "");
}

function now() { return Date.now() + skew; }

function card(e) {
  const c = el("section", "prim" + (e.free ? " free" : ""));
  c.dataset.id = e.id;
  c.dataset.kind = e.kind;
  c.dataset.name = e.name;
  const h = el("h2");
  h.append(el("span", "kind", e.kind), el("span", "name", e.name));
  c.append(h);
  const line = el("div");
  line.append(el("span", "summary", e.summary));
  if (e.held_since != null && !e.free) {
    const hf = el("span", "heldfor");
    hf.dataset.since = e.held_since;
    line.append(hf);
  }
  c.append(line);
  if (e.fields && e.fields.length) {
    const dl = el("dl");
    for (const f of e.fields) {
      const dd = el("dd", "field-" + f.label.replace(/\s+/g, "-"));
      if (f.text !== undefined && f.text !== "") dd.textContent = f.text;
      else if (!f.items || f.items.length === 0) dd.textContent = "none";
      else {
        const ol = el("ol");
        for (const it of f.items) ol.append(el("li", "", it));
        dd.append(ol);
      }
      dl.append(el("dt", "", f.label), dd);
    }
    c.append(dl);
  }
  if (e.timeline && e.timeline.length) {
    c.append(el("div", "tl-label", "timeline (" + e.changes + " since web started)"));
    const ol = el("ol", "timeline");
    for (const t of e.timeline) {
      const li = el("li", t.to == null ? "current" : "");
      li.dataset.token = t.token;
      if (t.from != null) li.dataset.from = t.from;
      if (t.to != null) li.dataset.to = t.to;
      li.title = t.holder + " · token " + t.token;
      ol.append(li);
    }
    c.append(ol);
  }
  return c;
}

// tick redraws what moves with time: held for, and each timeline entry.
function tick() {
  const t = now();
  for (const hf of document.querySelectorAll(".heldfor")) {
    hf.textContent = "for " + human(t - Number(hf.dataset.since));
  }
  for (const li of document.querySelectorAll(".timeline li")) {
    const who = li.title.split(" · ")[0];
    if (li.dataset.from === undefined) {
      li.textContent = (li.dataset.to ? "until " + new Date(Number(li.dataset.to)).toLocaleTimeString() : "since before") + " · " + who;
    } else {
      const end = li.dataset.to ? Number(li.dataset.to) : t;
      li.textContent = human(end - Number(li.dataset.from)) + " · " + who;
    }
  }
}

function draw(s) {
  last = s;
  skew = s.now - Date.now();
  document.getElementById("rev").textContent = "revision " + s.revision;
  document.getElementById("scope").textContent = (s.prefix + s.under) || "(all keys)";
  const cards = s.entries.map(card);
  main.replaceChildren(...(cards.length ? cards : [empty]));
  tick();
}

function connect() {
  const conn = document.getElementById("conn");
  const es = new EventSource("events");
  es.addEventListener("state", (ev) => {
    conn.textContent = "live";
    conn.className = "conn up";
    draw(JSON.parse(ev.data));
  });
  es.onerror = () => {
    conn.textContent = "reconnecting";
    conn.className = "conn down";
  };
}

connect();
setInterval(tick, 1000);
