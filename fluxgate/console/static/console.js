// The FluxGate console page. Vanilla JavaScript, no build step. Everything the server sends is
// written with textContent or DOM APIs, never as HTML: a key name, a scope or a route path is
// shown as the text it is, whatever it holds.
"use strict";

(() => {
  const LIVE_MS = 1500;
  const SLOW_MS = 5000;
  const ROUTES_MS = 15000;
  let csrfToken = null;
  let stopped = false;
  const armed = new Map(); // key id -> when its revoke button was armed
  let keySearch = ""; // a name or key id to look up instead of listing every key

  const $ = (id) => document.getElementById(id);

  function el(tag, options, ...children) {
    const node = document.createElement(tag);
    const o = options || {};
    if (o.className) node.className = o.className;
    if (o.text !== undefined) node.textContent = o.text;
    if (o.title) node.title = o.title;
    if (o.type) node.type = o.type;
    for (const child of children) node.append(child); // strings become text nodes
    return node;
  }

  const show = (v) => (v === null || v === undefined || v === "" ? "–" : String(v));
  const cell = (v, className) => el("td", { className, text: show(v) });
  const num = (v) => cell(v, "num");
  const stateClass = (s) => "state-" + String(s).replace(/[^a-z_]/g, "");

  function fill(tableId, rows, emptyText) {
    const body = $(tableId).tBodies[0];
    if (rows.length === 0 && emptyText) {
      const td = el("td", { className: "note", text: emptyText });
      td.colSpan = $(tableId).tHead.rows[0].cells.length;
      rows = [el("tr", null, td)];
    }
    body.replaceChildren(...rows);
  }

  class ConsoleError extends Error {
    constructor(message, status) { super(message); this.status = status; }
  }

  async function call(method, path, body) {
    const options = { method, credentials: "same-origin", headers: {}, cache: "no-store" };
    if (method !== "GET") {
      options.headers["X-CSRF-Token"] = csrfToken || "";
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body || {});
    }
    const resp = await fetch(path, options);
    let doc = null;
    try { doc = await resp.json(); } catch (e) { doc = null; }
    if (resp.status === 401) {
      // The session ended (idle, sign-out elsewhere, admin token changed): the page at
      // /console then shows the sign-in form and says why. Not when this page is signing
      // out itself: a poll answered after the sign-out must not race its navigation.
      if (!stopped) window.location.assign("/console");
      stopped = true;
      throw new ConsoleError("signed out", 401);
    }
    if (!resp.ok) {
      const why = doc && doc.error_description ? doc.error_description : resp.statusText;
      throw new ConsoleError(why, resp.status);
    }
    return doc;
  }

  function setError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function every(ms, task) {
    const tick = async () => {
      if (stopped) return;
      try {
        await task();
        setError(null);
        $("status").textContent = "updated " + new Date().toLocaleTimeString();
      } catch (e) {
        if (!stopped) setError("Could not refresh: " + e.message);
      } finally {
        if (!stopped) setTimeout(tick, ms);
      }
    };
    tick();
  }

  // ---- live: traffic, auth failures, workers, sessions ----

  function renderLive(doc) {
    const t = doc.traffic;
    $("rps").textContent = show(t.total.rps);
    for (const q of ["p50", "p95", "p99"]) {
      $(q).textContent = t.total[q] === null ? "–" : t.total[q] + " ms";
    }
    $("requests").textContent = show(t.total.requests);
    $("window").textContent = t.window_s ? "last " + t.window_s + " s" : "(measuring…)";
    fill("traffic", t.routes.map((r) => {
      const recent = r.recent || {};
      return el("tr", null,
        cell(r.route === "" ? "(no route)" : r.route), num(r.rps), num(r.p50), num(r.p95),
        num(r.p99), num(recent["2xx"]), num(recent["3xx"]), num(recent["4xx"]),
        num(recent["5xx"]), num(r.requests));
    }), "No requests yet.");
    fill("auth-failures", t.auth_failures.map((f) =>
      el("tr", null, cell(f.method), cell(f.reason), num(f.per_minute), num(f.total))),
    "No refusals.");
    fill("shadow", t.shadow.map((d) =>
      el("tr", null, cell(d.route), cell(d.method), cell(d.decision, stateClass(d.decision)),
        cell(d.reason), num(d.per_minute), num(d.total))),
    "Nothing in shadow mode (shadow: true on a route or a middleware entry).");

    const w = doc.workers;
    $("generation").textContent = "generation " + show(w.generation) + ", " + w.size +
      " configured, " + w.restarts + " restarts";
    fill("workers", w.workers.map((x) => el("tr", null,
      cell(x.worker_id), num(x.pid), num(x.generation), cell(x.state, stateClass(x.state)),
      num(duration(x.uptime_s)))));
    const s = doc.sessions;
    const login = s.configured
      ? "Browser-login sessions: " + s.active + " active" +
        Object.entries(s.by_provider).map(([p, n]) => " · " + p + ": " + n).join("")
      : "Browser login: not configured.";
    $("sessions").textContent = login + " Console sessions: " + doc.console_sessions + ".";
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    if (s < 120) return s + " s";
    if (s < 7200) return Math.floor(s / 60) + " min";
    return Math.floor(s / 3600) + " h";
  }

  // ---- keys ----

  function keyActions(k) {
    const td = el("td");
    if (k.status !== "active" && k.status !== "grace") return td;
    const rotate = el("button", { className: "secondary", text: "rotate", type: "button" });
    rotate.dataset.action = "rotate";
    rotate.addEventListener("click", () => keyOperation("rotate", { name: k.name }));
    const revoke = el("button", { className: "danger", text: "revoke", type: "button" });
    revoke.dataset.action = "revoke";
    revoke.dataset.keyId = k.key_id;
    if (armed.has(k.key_id) && Date.now() - armed.get(k.key_id) < 5000) {
      revoke.classList.add("armed");
      revoke.textContent = "confirm revoke";
    }
    revoke.addEventListener("click", () => {
      const since = armed.get(k.key_id);
      if (since && Date.now() - since < 5000) {
        armed.delete(k.key_id);
        keyOperation("revoke", { name: k.key_id });
      } else {
        armed.set(k.key_id, Date.now());
        revoke.classList.add("armed");
        revoke.textContent = "confirm revoke";
      }
    });
    td.append(rotate, " ", revoke);
    return td;
  }

  function renderKeys(doc) {
    if (!doc.available) {
      $("keys-count").textContent = "(the key service is not running)";
      fill("keys", [], "Not available.");
      return;
    }
    if (doc.too_many) {
      $("keys-count").textContent = "(" + doc.total + " in the table: find one by name or id)";
      fill("keys", [], "Too many keys to list here: find one by name or key id.");
      return;
    }
    $("keys-count").textContent = doc.search !== undefined
      ? "(" + doc.total + " for " + JSON.stringify(doc.search) + ")"
      : doc.total > doc.keys.length
        ? "(" + doc.keys.length + " of " + doc.total + " shown)" : "(" + doc.total + ")";
    fill("keys", doc.keys.map((k) => {
      const q = k.quota;
      const row = el("tr", null,
        cell(k.name), cell(k.key_id), cell(k.status, stateClass(k.status)),
        cell(k.scopes.join(" ")), cell(q ? q.used + " / " + q.rate : "no quota"),
        cell(k.expires_at), cell(k.grace_until), cell(k.last_used_at), num(k.requests),
        keyActions(k));
      row.dataset.keyId = k.key_id;
      return row;
    }), "No keys. Generate one above, or with `fluxctl keys generate`.");
  }

  function keyMessage(text, ok) {
    const box = $("key-message");
    box.textContent = text || "";
    box.className = ok ? "message ok" : "message";
    box.hidden = !text;
  }

  function showNewKey(doc) {
    $("new-key-name").textContent = doc.name;
    $("new-key-value").textContent = doc.key;
    $("new-key").hidden = false;
  }

  async function keyOperation(kind, body) {
    keyMessage(null);
    try {
      const path = kind === "generate" ? "/console/api/keys" : "/console/api/keys/" + kind;
      const doc = await call("POST", path, body);
      if (doc.key) showNewKey(doc);
      if (kind === "revoke") {
        keyMessage("Revoked: " + doc.revoked.map((k) => k.name + " (" + k.key_id + ")").join(", "),
          true);
      }
      renderKeys(await call("GET", keysPath()));
      return doc;
    } catch (e) {
      if (e.status !== 401) keyMessage("Refused: " + e.message);
      return null;
    }
  }

  function keysPath() {
    return keySearch ? "/console/api/keys?name=" + encodeURIComponent(keySearch)
      : "/console/api/keys";
  }

  // ---- health and routes ----

  function when(unixSeconds) {
    if (!unixSeconds) return "never";
    return new Date(unixSeconds * 1000).toLocaleTimeString();
  }

  function sumValues(obj) {
    return Object.values(obj || {}).reduce((a, b) => a + (typeof b === "number" ? b : 0), 0);
  }

  function renderHealth(doc) {
    fill("jwks", doc.jwks.map((p) => el("tr", null,
      cell(p.source), num(p.expired ? 0 : (p.kids || []).length),
      cell(when(p.last_success)), num(p.failures),
      cell(p.last_error, p.last_error ? "state-error" : ""))), "No JWKS provider configured.");
    const rows = doc.introspection.map((p) => el("tr", null,
      cell(p.provider), cell("introspection"), cell(p.breaker, stateClass(p.breaker)),
      num(sumValues(p.calls)), cell(p.last_error || p.discovery_error)));
    for (const p of doc.logins) {
      const state = p.discovered ? "ok" : (p.discovery_error ? "error" : "discovering");
      rows.push(el("tr", null, cell(p.provider), cell("browser login"),
        cell(state, stateClass(state)), num(sumValues(p.counts)), cell(p.discovery_error)));
    }
    fill("authservers", rows, "No authorization server configured.");
  }

  function renderRoutes(doc) {
    fill("routes", doc.routes.map((r) => {
      const chain = el("div", { className: "chain" });
      for (const m of r.chain) {
        chain.append(el("span", { className: "chip" }, el("b", { text: m.kind }), m.summary));
      }
      if (r.public) chain.append(el("span", { className: "chip", text: "public" }));
      if (r.shadow) chain.append(el("span", { className: "chip", text: "shadow" }));
      if (!r.chain.length && !r.public) chain.append(el("span", { className: "note", text: "none" }));
      return el("tr", null, cell(r.prefix), cell(r.methods ? r.methods.join(" ") : "any"),
        cell(r.upstream), el("td", null, chain));
    }), "No routes.");
  }

  // ---- wiring ----

  async function start() {
    const session = await call("GET", "/console/api/session");
    csrfToken = session.csrf_token;
    $("signout").addEventListener("click", async () => {
      stopped = true; // no more polls, and no navigation of theirs
      try { await call("POST", "/console/logout"); } catch (e) { /* signed out anyway */ }
      window.location.assign("/console/login?signed_out=1");
    });
    $("generate").addEventListener("submit", async (event) => {
      event.preventDefault();
      const scopes = $("key-scopes").value.split(/[\s,]+/).filter(Boolean);
      const doc = await keyOperation("generate", {
        name: $("key-name").value.trim(), scopes,
        quota: $("key-quota").value.trim(), expiry: $("key-expiry").value.trim(),
      });
      if (doc) $("generate").reset();
    });
    $("search").addEventListener("submit", async (event) => {
      event.preventDefault();
      keySearch = $("key-search").value.trim();
      try { renderKeys(await call("GET", keysPath())); } catch (e) { keyMessage(e.message); }
    });
    $("new-key-dismiss").addEventListener("click", () => {
      $("new-key-value").textContent = "";
      $("new-key").hidden = true;
    });
    every(LIVE_MS, async () => renderLive(await call("GET", "/console/api/live")));
    every(SLOW_MS, async () => renderKeys(await call("GET", keysPath())));
    every(SLOW_MS, async () => renderHealth(await call("GET", "/console/api/health")));
    every(ROUTES_MS, async () => renderRoutes(await call("GET", "/console/api/routes")));
  }

  document.addEventListener("DOMContentLoaded", () => {
    start().catch((e) => { if (!stopped) setError("The console could not start: " + e.message); });
  });
})();
