// dimctl web: draws the snapshots that /events streams. Plain DOM, no
// framework; every string from the service goes in as text, never as HTML.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const tokenMeta = document.querySelector('meta[name="dimctl-token"]');
  const token = tokenMeta ? tokenMeta.content : "";
  const notRunning = new Set(["creating", "failing", "hung", "stopping", "unknown", "quarantined",
    "moving", "pending", "gone"]);
  const cards = new Map(); // node ID → its card
  let actions = false;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function dur(ms) {
    if (ms >= 3600000) return (ms / 3600000).toFixed(1).replace(/\.0$/, "") + " h";
    if (ms >= 60000) return Math.round(ms / 60000) + " min";
    if (ms >= 10000) return Math.round(ms / 1000) + " s";
    return (ms / 1000).toFixed(1) + " s";
  }

  function clock(iso) {
    const d = new Date(iso);
    return isNaN(d) ? "" : d.toISOString().slice(11, 23);
  }

  function cell(c, labelled) {
    const e = el("span", "cell s-" + c.s + (notRunning.has(c.s) ? " down" : ""), labelled ? c.k : undefined);
    e.dataset.key = c.k;
    e.dataset.state = c.s;
    let title = c.k + ": " + c.s;
    if (c.n) {
      e.dataset.holder = c.n;
      title += c.s === "moving" ? " (still on " + c.n + ")" : " (" + c.n + ")";
    }
    if (c.e) title += " · " + c.e;
    e.title = title;
    return e;
  }

  function cellsSignature(cells) {
    return cells.map((c) => c.k + "\u0000" + c.s + "\u0000" + (c.n || "")).join("\u0001");
  }

  async function post(path, body) {
    const out = $("action-result");
    out.textContent = "…";
    out.className = "";
    try {
      const res = await fetch(path, {
        method: "POST",
        headers: { "Content-Type": "application/json", "X-Dimctl-Token": token },
        body: JSON.stringify(body),
        credentials: "same-origin",
      });
      const data = await res.json();
      out.textContent = data.message || data.error || res.statusText;
      out.className = res.ok ? "ok" : "bad";
    } catch (err) {
      out.textContent = String(err);
      out.className = "bad";
    }
  }

  function card(id) {
    let c = cards.get(id);
    if (c) return c;
    const root = el("article", "node");
    root.dataset.node = id;
    const head = el("header");
    const name = el("h3", "", id);
    const badge = el("span", "badge");
    const lead = el("span", "lead", "leader");
    const weight = el("span", "muted");
    head.append(name, badge, lead, weight);
    const lease = el("div", "lease");
    const bar = el("div", "lease-bar");
    const leaseText = el("span", "lease-text");
    lease.append(bar, leaseText);
    const counts = el("p", "counts");
    const flags = el("p", "flags");
    const cellBox = el("div", "cells");
    const hidden = el("p", "muted hidden-note");
    root.append(head, lease, counts, flags, cellBox, hidden);
    let button = null;
    if (actions) {
      button = el("button", "node-action");
      button.type = "button";
      button.addEventListener("click", () => {
        if (root.dataset.state === "drained") {
          if (confirm("Undrain " + id + "? The leader gives it keys again.")) post("api/undrain", { node: id });
        } else {
          const d = $("drain-for").value;
          if (confirm("Drain " + id + " for " + d + "? Its keys move to the other nodes.")) post("api/drain", { node: id, for: d });
        }
      });
      root.append(button);
    }
    c = { root, badge, lead, weight, bar, leaseText, counts, flags, cellBox, hidden, button, sig: null };
    cards.set(id, c);
    return c;
  }

  function drawNodes(v) {
    const nodes = v.nodes || [];
    const labelled = nodes.reduce((n, x) => n + (x.cells || []).length, 0) <= 120;
    const box = $("nodes");
    const seen = new Set();
    const order = [];
    for (const n of nodes) {
      n.cells = n.cells || [];
      seen.add(n.id);
      const c = card(n.id);
      c.root.dataset.state = n.state;
      c.root.className = "node state-" + n.state;
      c.badge.textContent = n.state;
      c.lead.hidden = n.id !== v.leader;
      c.weight.textContent = "weight " + n.weight;
      const frac = n.ttl_ms > 0 ? Math.max(0, Math.min(1, n.lease_left_ms / n.ttl_ms)) : 0;
      c.bar.style.width = (frac * 100).toFixed(0) + "%";
      c.leaseText.textContent = "lease " + dur(n.lease_left_ms) + (n.ttl_ms ? " of " + dur(n.ttl_ms) : "");
      c.counts.textContent = n.assigned + " assigned · " + n.running + " running";
      const flags = [];
      if (n.state === "drained" && n.drained_for_ms) flags.push("drained for " + dur(n.drained_for_ms) + " more");
      if (n.state === "suspect") flags.push("suspect: no heartbeat for over half its TTL; its keys are at risk");
      if (n.waiting_for_ms) flags.push("waiting " + dur(n.waiting_for_ms) + " for keys (join hold)");
      if (n.unhealthy) flags.push(n.unhealthy);
      if (n.config_failing) flags.push("its getConfig fails: it keeps its keys as they are (see dimctl status)");
      c.flags.textContent = flags.join(" · ");
      c.flags.hidden = flags.length === 0;
      const sig = cellsSignature(n.cells) + (labelled ? "L" : "");
      if (sig !== c.sig) {
        c.cellBox.replaceChildren(...n.cells.map((x) => cell(x, labelled)));
        c.cellBox.classList.toggle("labelled", labelled);
        c.sig = sig;
      }
      c.hidden.textContent = n.hidden > 0 ? "+ " + n.hidden + (v.full ? " keys not drawn (over -max-keys)" : " running keys not drawn") : "";
      c.hidden.hidden = n.hidden === 0;
      if (c.button) c.button.textContent = n.state === "drained" ? "Undrain" : "Drain";
      order.push(c.root);
    }
    for (const id of [...cards.keys()]) {
      if (!seen.has(id)) cards.delete(id);
    }
    box.replaceChildren(...order);
    if (order.length === 0) box.replaceChildren(el("p", "muted", "no live nodes"));

    const gone = $("gone");
    if (v.gone && v.gone.length) {
      const sec = el("article", "node gone-nodes");
      sec.dataset.node = "";
      sec.append(el("h3", "", "On nodes no longer live"),
        el("p", "muted", v.gone.length + " keys wait for the leader to place them again"));
      const cells = el("div", "cells" + (labelled ? " labelled" : ""));
      cells.append(...v.gone.map((x) => cell(x, labelled)));
      sec.append(cells);
      gone.replaceChildren(sec);
    } else {
      gone.replaceChildren();
    }

    $("cap").textContent = v.full ? "" :
      v.keys + " keys, more than -max-keys " + v.max_keys + ": the page reads dim's bounded summary and draws only the keys that do not run.";
  }

  function drawAttention(v) {
    const rows = (v.attention || []).map((c) => {
      const tr = el("tr", "s-row-" + c.s);
      tr.dataset.key = c.k;
      tr.append(el("td", "key", c.k), el("td", "", c.s), el("td", "", c.n || "–"), el("td", "err", c.e || ""));
      return tr;
    });
    const more = v.attention_more || 0;
    if (more > 0) {
      const tr = el("tr");
      const td = el("td", "muted", "… and " + more + " more");
      td.colSpan = 4;
      tr.append(td);
      rows.push(tr);
    }
    $("attention").tBodies[0].replaceChildren(...rows);
    $("attention").hidden = rows.length === 0;
    $("attention-none").hidden = rows.length > 0;
    const n = (v.attention || []).length + more;
    $("attention-count").textContent = n ? String(n) : "";
  }

  function describeEvent(e) {
    if (e.moves && e.moves.length) {
      return e.moves.map((m) => m.from ? m.key + " " + m.from + "→" + (m.to || "–") : m.key + " → " + m.to).join(", ");
    }
    if (e.keys && e.keys.length) return e.keys.join(", ") + (e.detail ? " · " + e.detail : "");
    if (e.epoch) return "epoch " + e.epoch;
    if (e.kind === "joined" && e.detail) return "session " + e.detail;
    return e.detail || "";
  }

  function drawHistory(v) {
    const he = $("history-error");
    he.textContent = v.history_error ? "history not readable: " + v.history_error : "";
    he.hidden = !v.history_error;
    $("history").replaceChildren(...(v.history || []).map((e) => {
      const li = el("li", "ev ev-" + e.kind);
      li.dataset.kind = e.kind;
      li.append(el("time", "", clock(e.at)), el("span", "kind", e.kind), el("span", "who", e.node),
        el("span", "what", describeEvent(e) + (e.more ? " … +" + e.more : "")));
      return li;
    }));
  }

  function drawNotes(v) {
    $("notes").replaceChildren(...(v.notes || []).map((n) => el("div", "banner " + n.level, n.text)));
  }

  function draw(v) {
    const err = $("error");
    if (v.error) {
      err.textContent = "Cannot read the service (" + v.error + "); retrying. What is shown is from " + (document.body.dataset.at || "before") + ".";
      err.hidden = false;
      $("conn").dataset.conn = "stale";
      $("conn").textContent = "stale";
      return;
    }
    err.hidden = true;
    actions = v.actions;
    document.body.dataset.at = clock(v.at);
    $("leader").textContent = v.leader ? v.leader + (v.leader_live ? "" : " (not live)") : "none";
    $("leader").className = v.leader_live ? "" : "bad";
    $("epoch").textContent = String(v.epoch);
    $("keys").textContent = v.running + " of " + v.keys + " running" + (v.at_risk ? ", " + v.at_risk + " at risk" : "");
    $("time").textContent = clock(v.server_time) + " UTC";
    $("conn").dataset.conn = "live";
    $("conn").textContent = "live";
    drawNotes(v);
    drawNodes(v);
    drawAttention(v);
    drawHistory(v);
  }

  function connect() {
    const es = new EventSource("events");
    es.addEventListener("snapshot", (ev) => draw(JSON.parse(ev.data)));
    es.onerror = () => {
      $("conn").dataset.conn = "reconnecting";
      $("conn").textContent = "reconnecting…";
    };
  }

  if (token) {
    actions = true;
    $("rebalance").addEventListener("click", () => {
      if (confirm("Ask the leader to rebalance now?")) post("api/rebalance", {});
    });
  }
  connect();
})();
