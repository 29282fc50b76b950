// The status page: polls /api/state (the collector's latest document) and redraws. No framework;
// every value from the server goes in through textContent, never as HTML (a meter's error text
// could contain anything).
"use strict";

const state = { interval: 2000, lastOk: null, timer: null };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-")) node.setAttribute(key, String(value));
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmt(n) { return n === null || n === undefined ? "-" : Number(n).toLocaleString("en-US"); }

function duration(seconds) {
  if (seconds === null || seconds === undefined) return "-";
  if (seconds < 90) return Math.max(0, Math.round(seconds)) + " s";
  if (seconds < 5400) return Math.round(seconds / 60) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function rate(r) {
  if (r === null || r === undefined) return "-";
  if (Math.abs(r) < 0.05) return "0/s";
  const sign = r > 0 ? "+" : "";
  return sign + r.toFixed(Math.abs(r) < 10 ? 1 : 0) + "/s";
}

function sectionError(panel, doc) {
  const box = panel.querySelector(".section-error");
  if (doc && doc.ok === false) { box.textContent = doc.error; box.hidden = false; return true; }
  box.hidden = true; box.textContent = "";
  return !doc;
}

function renderBeat(beat, schedule) {
  const panel = document.getElementById("beat-panel");
  const leader = document.getElementById("beat-leader");
  leader.replaceChildren();
  if (!sectionError(panel, beat)) {
    if (beat.held) {
      leader.append("Leader: ", el("span", { class: "ok", id: "beat-leader-name" }, beat.leader));
      if (beat.since) leader.append(el("span", { class: "muted" }, " since " + beat.since.replace("+00:00", "Z")));
    } else {
      leader.append(el("span", { class: "bad", id: "beat-leader-name" }, "no leader"), " ", beat.note || "");
    }
  }
  const body = document.querySelector("#fires tbody");
  body.replaceChildren();
  if (schedule && schedule.ok === false) {
    body.append(el("tr", {}, el("td", { colSpan: 4, class: "bad" }, schedule.error)));
    return;
  }
  for (const entry of (schedule && schedule.entries) || []) {
    body.append(el("tr", { "data-entry": entry.name },
      el("td", {}, entry.name), el("td", {}, entry.task),
      el("td", {}, entry.next.map(s => s.replace("T", " ").replace("Z", "")).join(", ")),
      el("td", { class: "num" }, duration(entry.in_seconds))));
  }
}

function renderBar(bar) {
  const total = Math.max(bar.total, 1);
  const failures = (bar.failures || []).map(f =>
    el("li", { "data-meter": f.name }, el("span", { class: "meter" }, f.name), f.reason));
  if (bar.failures_more) failures.push(el("li", { class: "muted" }, "... and " + fmt(bar.failures_more) + " more"));
  const eta = bar.eta ? "ETA " + bar.eta.replace("T", " ").replace("Z", " UTC") : null;
  return el("div", { class: "round", id: "bar-" + bar.id, "data-total": bar.total, "data-done": bar.done,
                     "data-failed": bar.failed, "data-state": bar.state },
    el("div", { class: "head" }, el("span", {}, el("strong", {}, bar.label)),
       el("span", { class: "counts" }, fmt(bar.done + bar.failed) + " of " + fmt(bar.total),
          bar.failed ? el("span", { class: "bad" }, " (" + fmt(bar.failed) + " failed)") : null)),
    el("div", { class: "bar", title: bar.text },
       el("div", { class: "done" }), el("div", { class: "failed" })),
    el("div", { class: "muted" }, [bar.text, eta].filter(Boolean).join(" · ")),
    failures.length ? el("ul", { class: "failures" }, failures) : null);
}

function sizeBars(root) {
  // Widths set through the CSSOM: the page's CSP forbids inline style attributes.
  for (const round of root.querySelectorAll(".round")) {
    const total = Math.max(Number(round.dataset.total), 1);
    round.querySelector(".done").style.width = (100 * Number(round.dataset.done) / total) + "%";
    round.querySelector(".failed").style.width = (100 * Number(round.dataset.failed) / total) + "%";
  }
}

function renderPanels(panels) {
  const root = document.getElementById("panels");
  root.replaceChildren();
  for (const panel of panels || []) {
    const box = el("section", { class: "panel", id: "panel-" + panel.name }, el("h2", {}, panel.title || panel.name));
    if (panel.ok === false) box.append(el("div", { class: "error" }, panel.error));
    if (panel.note) box.append(el("p", { class: "muted" }, panel.note));
    for (const bar of panel.bars || []) box.append(renderBar(bar));
    root.append(box);
  }
  sizeBars(root);
}

function renderHosts(hosts) {
  const panel = document.getElementById("hosts-panel");
  const root = document.getElementById("hosts");
  root.replaceChildren();
  if (sectionError(panel, hosts)) return;
  if (hosts.note) root.append(el("p", { class: "warn" }, hosts.note));
  if (!hosts.hosts.length) root.append(el("p", { class: "bad" }, "no worker answers (" + hosts.source + ")"));
  for (const host of hosts.hosts) {
    root.append(el("h3", { "data-host": host.host }, host.host));
    for (const b of host.beats || []) {
      root.append(el("div", { class: "worker", "data-beat": b.name },
        el("span", { class: "title" }, b.name),
        " " + (b.identity || "") + " · " + b.role + " · " + fmt(b.fired) + " fired",
        b.last_error ? el("span", { class: "bad" }, " · " + b.last_error) : null));
    }
    for (const w of host.workers) {
      const rows = w.pools.map(p => el("tr", { "data-pool": p.name },
        el("td", {}, p.name), el("td", {}, p.queues.map(q => q.replace(/^utilitarian\.tasks\./, "")).join(", ")),
        el("td", { class: "num" }, p.processes + " x " + p.threads),
        el("td", { class: p.consuming < p.processes ? "bad" : "ok" }, p.consuming + "/" + p.processes + " consuming",
           p.why.length ? " (" + p.why.join("; ") + ")" : ""),
        el("td", { class: "num" }, fmt(p.inflight) + " in flight")));
      root.append(el("div", { class: "worker", "data-worker": w.name },
        el("div", {}, el("span", { class: "title" }, w.name), " pid " + w.pid + " · " + w.state +
           " · " + fmt(w.done) + " done, " + fmt(w.failed) + " failed · " + (w.rate_per_s ?? 0) + "/s · restarts " +
           w.restarts, w.last_error ? el("div", { class: "bad" }, "last error: " + w.last_error) : null),
        el("table", {}, el("tbody", {}, rows))));
    }
  }
  for (const s of hosts.silent || []) {
    root.append(el("p", { class: "bad" }, "silent: " + s.where + " (" + s.error + ")"));
  }
  root.append(el("p", { class: "muted" }, "source: " + hosts.source));
}

function renderQueues(queues) {
  const panel = document.getElementById("queues-panel");
  const body = document.querySelector("#queues tbody");
  body.replaceChildren();
  if (sectionError(panel, queues)) return;
  for (const q of queues.rows) {
    body.append(el("tr", { "data-queue": q.short },
      el("td", {}, q.short), el("td", { class: "num" }, q.missing ? "missing" : fmt(q.messages)),
      el("td", { class: "num" + (q.messages && !q.consumers ? " bad" : "") }, fmt(q.consumers)),
      el("td", { class: "num" }, rate(q.rate_per_s)),
      el("td", { class: "warn" }, q.warning || "")));
  }
}

function render(doc) {
  if (doc.starting) return;
  document.getElementById("broker").textContent = doc.broker;
  renderBeat(doc.beat, doc.schedule);
  renderPanels(doc.panels);
  renderHosts(doc.hosts);
  renderQueues(doc.queues);
  state.generated = doc.generated_at;
}

function showFreshness() {
  const node = document.getElementById("freshness");
  if (!state.generated) return;
  const age = (Date.now() - Date.parse(state.generated)) / 1000;
  node.textContent = "updated " + duration(Math.max(0, age)) + " ago";
  node.className = age > 3 * state.interval / 1000 + 5 ? "bad" : "muted";
}

async function poll() {
  const banner = document.getElementById("banner");
  try {
    const response = await fetch("/api/state", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { window.location.assign("/login"); return; }
    if (!response.ok) throw new Error("HTTP " + response.status);
    const doc = await response.json();
    if (doc.interval) state.interval = doc.interval * 1000;
    render(doc);
    banner.hidden = true;
  } catch (err) {
    banner.textContent = "The dashboard does not answer (" + err.message + "); showing the last data.";
    banner.hidden = false;
  }
  showFreshness();
  state.timer = setTimeout(poll, state.interval);
}

poll();
