// Trellis dashboard. Plain JavaScript, no framework, no build step. Every
// figure comes from the control plane's /v1 API on this origin; writes
// carry the session's CSRF token. Text from the API is only ever set as
// text (textContent), never parsed as HTML.
"use strict";

(function () {
  // session is {role, tokenId, expiresAt, csrf} once logged in.
  let session = null;

  const $ = (id) => document.getElementById(id);

  // el builds an element: el("a", {href: "#/x"}, "text", child, ...).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else if (v === true) e.setAttribute(k, "");
      else e.setAttribute(k, String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  // safeId turns a resource name into a piece of an element ID.
  const safeId = (s) => String(s).replace(/[^A-Za-z0-9_-]/g, "-");

  // ---- the API ----------------------------------------------------------

  class APIError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function api(method, path, body) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") {
      headers["X-Trellis-Csrf"] = session ? session.csrf : "";
    }
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      credentials: "same-origin",
      cache: "no-store",
      redirect: "error",
    });
    let data = null;
    try {
      data = await resp.json();
    } catch (e) {
      data = null;
    }
    if (!resp.ok) {
      const msg = (data && data.error) || resp.status + " " + resp.statusText;
      if (resp.status === 401 && path !== "/ui/login") showLogin(msg);
      throw new APIError(resp.status, msg);
    }
    return data;
  }

  const get = (path) => api("GET", path);
  // getOr returns fallback on a 404.
  async function getOr(path, fallback) {
    try {
      return await get(path);
    } catch (e) {
      if (e.status === 404) return fallback;
      throw e;
    }
  }

  // say tells what happened in the status line (read out by screen
  // readers); it clears itself after a while.
  let sayTimer = 0;
  function say(msg, failed) {
    const s = $("status");
    s.textContent = msg;
    s.classList.toggle("failed", !!failed);
    clearTimeout(sayTimer);
    sayTimer = setTimeout(() => (s.textContent = ""), failed ? 20000 : 8000);
  }

  // ---- formatting -------------------------------------------------------

  function when(iso) {
    if (!iso) return "—";
    const t = new Date(iso);
    if (isNaN(t)) return iso;
    return t.toLocaleString() + " (" + relative(t) + ")";
  }

  function relative(t) {
    const s = Math.round((t.getTime() - Date.now()) / 1000);
    const a = Math.abs(s);
    let txt;
    if (a < 90) txt = a + " s";
    else if (a < 90 * 60) txt = Math.round(a / 60) + " min";
    else if (a < 48 * 3600) txt = Math.round(a / 3600) + " h";
    else txt = Math.round(a / 86400) + " days";
    return s >= 0 ? "in " + txt : txt + " ago";
  }

  const hoursLeft = (iso) => (new Date(iso).getTime() - Date.now()) / 3600e3;

  function health(ok) {
    return el("span", { class: ok ? "ok" : "bad" }, ok ? "healthy" : "unhealthy");
  }

  function table(caption, head, rows, cls) {
    return el(
      "table",
      { class: cls },
      el("caption", {}, caption),
      el("thead", {}, el("tr", {}, head.map((h) => el("th", { scope: "col" }, h)))),
      el(
        "tbody",
        {},
        rows.length
          ? rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c))))
          : el("tr", {}, el("td", { colspan: head.length, class: "muted" }, "None."))
      )
    );
  }

  const svcLink = (name) => el("a", { href: "#/services/" + encodeURIComponent(name) }, name);

  // ---- traffic figures (/v1/stats, /v1/topology) -------------------------

  // Figures come from the summaries proxies send every few seconds; the
  // server keeps 15 minutes. Nothing is shown that was not measured.
  const rps = (t) => (t.requestsPerSecond || 0).toFixed(t.requestsPerSecond >= 100 ? 0 : 1);
  const pct = (t) => (t.successRate === undefined || t.successRate === null ? "—" : (t.successRate * 100).toFixed(2) + "%");
  const ms = (t, v) => (t.requests ? v.toFixed(1) + " ms" : "—");
  function bytesRate(v) {
    const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let i = 0;
    while (v >= 1024 && i < units.length - 1) {
      v /= 1024;
      i++;
    }
    return (i ? v.toFixed(1) : Math.round(v)) + " " + units[i];
  }
  const peer = (n) => (n === "" ? "(outside the mesh)" : n === "*" ? "(other)" : svcLink(n));

  // successClass colours a success rate: ok from 99 %, warn from 95 %.
  function successClass(t) {
    if (t.successRate === undefined || t.successRate === null) return "idle";
    if (t.successRate >= 0.99) return "ok";
    if (t.successRate >= 0.95) return "warn";
    return "bad";
  }

  const figures = (t) => [rps(t), el("span", { class: successClass(t) }, pct(t)), ms(t, t.p50Ms), ms(t, t.p90Ms), ms(t, t.p99Ms), bytesRate(t.bytesPerSecond || 0)];
  const figureHead = ["Requests/s", "Success", "p50", "p90", "p99", "Bytes"];

  // trafficSection shows the golden signals of one service (its versions,
  // its callers, its calls) or, without a name, of the mesh.
  async function trafficSection(name) {
    const sec = el("section", { id: "traffic", "aria-labelledby": "traffic-title" }, el("h2", { id: "traffic-title" }, "Traffic (last minute)"));
    let st;
    try {
      st = await get("/v1/stats?window=1m" + (name ? "&service=" + encodeURIComponent(name) : ""));
    } catch (e) {
      if (e.status === 401) throw e;
      sec.append(el("p", { class: "error" }, "Could not load traffic figures: " + e.message));
      return sec;
    }
    if (!name) {
      let total = 0, failed = 0, requests = 0;
      for (const s of st.services) {
        total += s.requestsPerSecond;
        requests += s.requests;
        failed += (s.codes && s.codes["5xx"]) || 0;
      }
      sec.append(
        el("div", { class: "cards", id: "traffic-counts" },
          el("div", {}, el("span", { class: "num" }, total.toFixed(1)), el("span", { class: "label" }, "Requests/s into services")),
          el("div", {}, el("span", { class: "num" }, requests ? ((1 - failed / requests) * 100).toFixed(2) + "%" : "—"), el("span", { class: "label" }, "Success rate")),
          el("div", {}, el("span", { class: "num" }, st.edges.filter((e) => e.requests > 0).length), el("span", { class: "label" }, "Edges with traffic"))),
        table("Busiest services", ["Service"].concat(figureHead), st.services.slice(0, 10).map((s) => [svcLink(s.name)].concat(figures(s))), "traffic"),
        table("Busiest edges", ["From", "To"].concat(figureHead), st.edges.slice(0, 10).map((e) => [peer(e.source), peer(e.destination)].concat(figures(e))), "traffic")
      );
      return sec;
    }
    const svc = st.services.find((s) => s.name === name);
    sec.append(
      table("Per version, as " + name + "'s proxies received it", ["Version"].concat(figureHead),
        svc ? (svc.versions || []).map((v) => [v.version || "—"].concat(figures(v))) : [], "traffic"),
      table("Callers, as their proxies sent it", ["From", "Route", "Version"].concat(figureHead),
        st.edges.filter((e) => e.destination === name).flatMap((e) => (e.routes || []).map((r) => [peer(e.source), r.route || "—", r.version || "—"].concat(figures(r)))), "traffic"),
      table("Calls from " + name, ["To"].concat(figureHead),
        st.edges.filter((e) => e.source === name).map((e) => [peer(e.destination)].concat(figures(e))), "traffic")
    );
    return sec;
  }

  // confirmBox shows what a change will do and asks before doing it.
  function confirmBox(host, title, details, onConfirm) {
    host.replaceChildren();
    const cancel = el("button", { type: "button", id: "cancel", onclick: () => host.replaceChildren() }, "Cancel");
    const ok = el("button", { type: "button", id: "confirm", class: "primary" }, "Confirm");
    ok.addEventListener("click", async () => {
      ok.disabled = true;
      cancel.disabled = true;
      try {
        await onConfirm();
        host.replaceChildren();
      } catch (e) {
        ok.disabled = false;
        cancel.disabled = false;
        say("Refused: " + e.message, true);
      }
    });
    const box = el(
      "div",
      { class: "confirm", role: "group", "aria-labelledby": "confirm-title" },
      el("h3", { id: "confirm-title" }, title),
      details,
      readOnly() ? el("p", { class: "warn" }, "This is a read-only session: the server will refuse the change.") : null,
      el("p", {}, ok, " ", cancel)
    );
    host.append(box);
    ok.focus();
  }

  const readOnly = () => !session || session.role !== "admin";

  async function apply(resources) {
    const res = await api("POST", "/v1/resources", resources);
    say("Applied " + res.applied.join(", "));
    return res;
  }

  // ---- pages --------------------------------------------------------------

  const pages = {
    overview: overviewPage,
    nodes: nodesPage,
    services: servicesPage,
    intentions: intentionsPage,
    gateways: gatewaysPage,
    topology: topologyPage,
  };

  async function overviewPage(page) {
    const [services, instances, proxies, roots] = await Promise.all([
      get("/v1/services"),
      get("/v1/instances"),
      get("/v1/proxies"),
      get("/v1/ca/roots"),
    ]);
    const unhealthy = instances.filter((i) => !i.healthy);
    const cards = el(
      "div",
      { class: "cards", id: "counts" },
      [
        ["Services", services.length],
        ["Instances", instances.length],
        ["Healthy instances", instances.length - unhealthy.length],
        ["Proxies connected", proxies.length],
        ["CA roots", (roots.certs || []).length],
      ].map(([label, n]) => el("div", {}, el("span", { class: "num" }, n), el("span", { class: "label" }, label)))
    );

    const items = [];
    for (const i of unhealthy) {
      items.push(el("li", {}, el("span", { class: "bad" }, "Unhealthy: "), "instance " + i.id + " of ", svcLink(i.service)));
    }
    for (const p of proxies) {
      if (p.error) {
        items.push(el("li", {}, el("span", { class: "bad" }, "Rejected snapshot: "), p.instance + " (" + p.error + ")"));
      } else if (p.ackedVersion !== p.sentVersion) {
        items.push(el("li", {}, el("span", { class: "warn" }, "Old snapshot: "), p.instance + " applied " + (p.ackedVersion || "none") + ", sent " + p.sentVersion));
      }
      if (p.svidExpiresAt && hoursLeft(p.svidExpiresAt) < 6) {
        items.push(el("li", {}, el("span", { class: "warn" }, "Certificate near expiry: "), p.instance + " " + when(p.svidExpiresAt)));
      }
    }
    for (const r of roots.certs || []) {
      if (hoursLeft(r.notAfter) < 30 * 24) {
        items.push(el("li", {}, el("span", { class: "warn" }, "CA root near expiry: "), r.subject + " " + when(r.notAfter)));
      }
    }
    page.append(
      el("h1", {}, "Overview"),
      cards,
      el("h2", {}, "Needs attention"),
      items.length ? el("ul", { class: "attention", id: "attention" }, items) : el("p", { class: "ok", id: "attention" }, "Nothing needs attention."),
      el("h2", {}, "CA roots"),
      table(
        "Trust domain " + roots.trustDomain,
        ["Subject", "Fingerprint (SHA-256)", "Expires"],
        (roots.certs || []).map((r) => [r.subject, el("code", {}, r.fingerprint.slice(0, 16) + "…"), when(r.notAfter)])
      ),
      await trafficSection()
    );
  }

  async function nodesPage(page) {
    const [proxies, instances] = await Promise.all([get("/v1/proxies"), get("/v1/instances")]);
    const byID = new Map(instances.map((i) => [i.id, i]));
    const nodes = new Map();
    for (const p of proxies) {
      const n = p.node || "(node not reported)";
      if (!nodes.has(n)) nodes.set(n, []);
      nodes.get(n).push(p);
    }
    page.append(el("h1", {}, "Nodes"));
    if (!nodes.size) page.append(el("p", { class: "muted" }, "No proxy is connected."));
    for (const [node, ps] of [...nodes].sort((a, b) => a[0].localeCompare(b[0]))) {
      const rows = ps.map((p) => {
        const i = byID.get(p.instance) || {};
        let ack;
        if (p.error) ack = el("span", { class: "bad" }, "rejected " + p.sentVersion + ": " + p.error);
        else if (p.ackedVersion === p.sentVersion) ack = el("span", { class: "ok" }, p.ackedVersion + " (current)");
        else ack = el("span", { class: "warn" }, (p.ackedVersion || "none") + " (sent " + p.sentVersion + ")");
        return [
          svcLink(p.service),
          p.instance,
          i.address ? i.address + ":" + i.port : "—",
          i.network || "default",
          ack,
          when(p.connectedAt),
          when(p.svidExpiresAt),
        ];
      });
      page.append(
        el("section", { class: "node", "aria-labelledby": "node-" + safeId(node) },
          el("h2", { id: "node-" + safeId(node) }, node),
          table(ps.length + " proxies", ["Service", "Instance", "Address", "Network", "Snapshot acknowledged", "Connected since", "Certificate expires"], rows))
      );
    }
  }

  async function servicesPage(page, name) {
    if (name) return servicePage(page, name);
    const services = await get("/v1/services");
    page.append(
      el("h1", {}, "Services"),
      table(
        services.length + " services",
        ["Service", "Protocol", "Instances", "Healthy", "Declared"],
        services.map((s) => [
          svcLink(s.name),
          s.protocol,
          s.instances,
          el("span", { class: s.healthy === s.instances ? "ok" : "bad" }, s.healthy),
          s.declared ? "yes" : "no (registered only)",
        ])
      )
    );
  }

  async function servicePage(page, name) {
    const [instances, intentions, route] = await Promise.all([
      get("/v1/instances?service=" + encodeURIComponent(name)),
      get("/v1/intentions"),
      getOr("/v1/resources/Route/" + encodeURIComponent(name), null),
    ]);
    page.append(
      el("p", {}, el("a", { href: "#/services" }, "← Services")),
      el("h1", {}, "Service " + name),
      table(
        "Instances",
        ["Instance", "Version", "Address", "Network", "Health", "Registered"],
        instances.map((i) => [i.id, i.version || "—", i.address + ":" + i.port, i.network || "default", health(i.healthy), when(i.registeredAt)])
      )
    );
    page.append(el("h2", {}, "Route"));
    if (!route) {
      page.append(el("p", { class: "muted", id: "no-route" }, "No Route: calls go to every healthy instance alike."));
    } else {
      page.append(routeEditor(route));
      if (route.spec.rules.some((r) => r.canary)) {
        page.append(canarySection(await getOr("/v1/routes/" + encodeURIComponent(name) + "/canary", null)));
      }
    }
    const into = intentions.filter((r) => r.spec.destination === name);
    const out = intentions.filter((r) => r.spec.source === name);
    page.append(
      el("h2", {}, "Intentions"),
      table("In: who may call " + name, ["Source", "Decision"], into.map((r) => [r.spec.source === "*" ? "any service" : svcLink(r.spec.source), decision(r.spec)])),
      table("Out: whom " + name + " may call", ["Destination", "Decision"], out.map((r) => [svcLink(r.spec.destination), decision(r.spec)])),
      await trafficSection(name)
    );
  }

  // routeEditor shows a Route's rules with their weights editable: a
  // change is previewed (the Route as it will be), confirmed, then
  // applied as the whole Route.
  function routeEditor(route) {
    const box = el("div", { id: "route" });
    const inputs = [];
    route.spec.rules.forEach((rule, ri) => {
      const label = rule.name || "rule-" + (ri + 1);
      const rows = (rule.targets || []).map((t, ti) => {
        const id = "weight-" + ri + "-" + ti;
        const input = el("input", { id, class: "weight", type: "number", min: 0, max: 10000, step: 1, value: t.weight, disabled: readOnly() });
        inputs.push({ ri, ti, input });
        return [el("label", { for: id }, "Version " + t.version), input];
      });
      box.append(
        el("h3", {}, label + " — " + matchText(rule.match)),
        rows.length ? table("Weights of " + label, ["Version", "Weight"], rows) : el("p", { class: "muted" }, "Every version alike.")
      );
    });
    const confirmHost = el("div", {});
    const preview = el("button", { type: "button", id: "preview-route", disabled: !inputs.length || readOnly() }, "Preview change");
    preview.addEventListener("click", () => {
      const next = JSON.parse(JSON.stringify(route));
      const changes = [];
      for (const { ri, ti, input } of inputs) {
        const w = Number(input.value);
        if (!Number.isInteger(w) || w < 0) {
          say("Weight of " + next.spec.rules[ri].targets[ti].version + ": want a whole number, 0 or more", true);
          input.focus();
          return;
        }
        const t = next.spec.rules[ri].targets[ti];
        if (t.weight !== w) changes.push((next.spec.rules[ri].name || "rule-" + (ri + 1)) + ": " + t.version + " " + t.weight + " → " + w);
        t.weight = w;
      }
      if (!changes.length) {
        say("No weight changed.");
        return;
      }
      confirmBox(
        confirmHost,
        "Apply Route " + route.name + "?",
        el("div", {}, el("ul", {}, changes.map((c) => el("li", {}, c))), el("p", {}, "The Route will be:"), el("pre", {}, JSON.stringify(next, null, 2))),
        async () => {
          await apply([next]);
          render();
        }
      );
    });
    box.append(el("p", {}, preview), confirmHost);
    return box;
  }

  // canarySection shows where a Route's canary stands and its events,
  // read-only: the server moves the weights.
  function canarySection(st) {
    const box = el("div", { id: "canary" }, el("h3", {}, "Canary"));
    if (!st) {
      box.append(el("p", { class: "muted" }, "Not started yet: the server starts it within a second or two."));
      return box;
    }
    const cls = st.state === "rolled-back" ? "bad" : st.state === "promoted" ? "ok" : "";
    box.append(
      el("p", { id: "canary-state" },
        "Rule " + st.rule + ": ", el("span", { class: cls }, st.state), ", " + st.version + " at " + st.weight + " %, " +
        st.stable + " at " + (100 - st.weight) + " % (step " + (st.step + 1) + ", since " + when(st.stepStarted) + ")")
    );
    const d = st.last;
    if (d) {
      box.append(
        table("Last decision", ["When", "Decision", "Requests", "Success rate", "p99", "Why"], [
          [when(d.at), d.action, d.requests, d.successRate == null ? "—" : d.successRate.toFixed(2) + " %", d.p99Ms.toFixed(1) + " ms", d.reason],
        ])
      );
    }
    box.append(table("Events", ["When", "Event"], (st.events || []).slice().reverse().map((e) => [when(e.at), e.message]), "canary-events"));
    return box;
  }

  function matchText(m) {
    if (!m) return "all requests";
    const parts = [];
    if (m.pathPrefix) parts.push("path prefix " + m.pathPrefix);
    if (m.pathExact) parts.push("path " + m.pathExact);
    if (m.pathRegex) parts.push("path ~ " + m.pathRegex);
    if (m.methods && m.methods.length) parts.push(m.methods.join("|"));
    for (const h of m.headers || []) {
      parts.push("header " + h.name + (h.exact ? " = " + h.exact : h.prefix ? " ^= " + h.prefix : h.regex ? " ~ " + h.regex : " present"));
    }
    return parts.length ? parts.join(", ") : "all requests";
  }

  function decision(spec) {
    if (spec.permissions && spec.permissions.length) {
      return el("span", {}, "L7: ", el("ul", {}, spec.permissions.map((p) => el("li", {}, el("span", { class: p.action === "allow" ? "ok" : "bad" }, p.action), " " + matchText(p.http)))));
    }
    return el("span", { class: spec.action === "allow" ? "ok" : "bad" }, spec.action);
  }

  async function intentionsPage(page) {
    const [intentions, services, mesh] = await Promise.all([
      get("/v1/intentions"),
      get("/v1/services"),
      getOr("/v1/resources/Mesh/default", null),
    ]);
    const policy = (mesh && mesh.spec && mesh.spec.defaultPolicy) || "deny";
    const confirmHost = el("div", { id: "intention-confirm" });
    const names = services.map((s) => s.name);

    const rows = intentions.map((r) => {
      const s = r.spec;
      const other = s.action === "allow" ? "deny" : "allow";
      const change = s.permissions && s.permissions.length ? null : el(
        "button",
        { type: "button", id: "set-" + other + "-" + safeId(r.name), "aria-label": other + " " + s.source + " to " + s.destination, disabled: readOnly() },
        other === "deny" ? "Deny" : "Allow"
      );
      if (change) {
        change.addEventListener("click", () => {
          const next = { kind: "Intention", name: r.name, spec: Object.assign({}, s, { action: other }) };
          confirmBox(confirmHost, "Change intention " + r.name + "?", el("p", {}, s.source + " → " + s.destination + ": " + s.action + " → " + other), async () => {
            await apply([next]);
            render();
          });
        });
      }
      const del = el("button", { type: "button", class: "danger", id: "delete-" + safeId(r.name), "aria-label": "Delete intention " + r.name, disabled: readOnly() }, "Delete");
      del.addEventListener("click", () => {
        confirmBox(confirmHost, "Delete intention " + r.name + "?", el("p", {}, s.source + " → " + s.destination + " then gets the mesh's default policy (" + policy + ")."), async () => {
          await api("DELETE", "/v1/resources/Intention/" + encodeURIComponent(r.name));
          say("Deleted intention " + r.name);
          render();
        });
      });
      return [r.name, s.source === "*" ? "any service" : svcLink(s.source), svcLink(s.destination), decision(s), s.description || "", el("span", {}, change, " ", del)];
    });

    // The matrix: each source's decision for each destination.
    const sources = [...new Set(names.concat(intentions.map((r) => r.spec.source)))].sort();
    const dests = [...new Set(names.concat(intentions.map((r) => r.spec.destination)))].sort();
    const cell = (src, dst) => {
      const exact = intentions.find((r) => r.spec.source === src && r.spec.destination === dst);
      const any = intentions.find((r) => r.spec.source === "*" && r.spec.destination === dst);
      const r = exact || (src !== "*" ? any : null);
      if (!r) return el("span", { class: "muted", title: "default policy" }, "(" + policy + ")");
      if (r.spec.permissions && r.spec.permissions.length) return el("span", { class: "warn" }, "L7");
      return el("span", { class: r.spec.action === "allow" ? "ok" : "bad" }, r.spec.action + (exact ? "" : " (*)"));
    };
    const matrix = el(
      "table",
      { class: "matrix", id: "matrix" },
      el("caption", {}, "Source (rows) × destination (columns); (" + policy + ") is the mesh's default policy, (*) an intention for any source, L7 a rule per request"),
      el("thead", {}, el("tr", {}, el("td", {}), dests.map((d) => el("th", { scope: "col" }, d)))),
      el("tbody", {}, sources.map((src) => el("tr", {}, el("th", { scope: "row" }, src === "*" ? "any (*)" : src), dests.map((d) => el("td", {}, cell(src, d))))))
    );

    // Adding one: choose, preview, confirm.
    const opt = (v, label) => el("option", { value: v }, label || v);
    const srcSel = el("select", { id: "new-source", name: "source" }, opt("*", "any service (*)"), names.map((n) => opt(n)));
    const dstSel = el("select", { id: "new-destination", name: "destination" }, names.map((n) => opt(n)));
    const actSel = el("select", { id: "new-action", name: "action" }, opt("allow"), opt("deny"));
    const desc = el("input", { id: "new-description", name: "description", type: "text", maxlength: 200 });
    const form = el(
      "form",
      { class: "inline", id: "new-intention" },
      el("label", { for: "new-source" }, "Source", srcSel),
      el("label", { for: "new-destination" }, "Destination", dstSel),
      el("label", { for: "new-action" }, "Action", actSel),
      el("label", { for: "new-description" }, "Description", desc),
      el("button", { type: "submit", disabled: readOnly() }, "Preview")
    );
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const src = srcSel.value, dst = dstSel.value;
      const existing = intentions.find((r) => r.spec.source === src && r.spec.destination === dst);
      const name = existing ? existing.name : src.replace("*", "any") + "." + dst;
      const spec = { source: src, destination: dst, action: actSel.value };
      if (desc.value.trim()) spec.description = desc.value.trim();
      const res = { kind: "Intention", name, spec };
      confirmBox(confirmHost, (existing ? "Replace" : "Add") + " intention " + name + "?", el("pre", {}, JSON.stringify(res, null, 2)), async () => {
        await apply([res]);
        render();
      });
    });

    page.append(
      el("h1", {}, "Intentions"),
      el("p", {}, "Calls no intention matches are ", el("strong", {}, policy === "allow" ? "allowed" : "denied"), " (the mesh's default policy)."),
      confirmHost,
      table(intentions.length + " intentions", ["Name", "Source", "Destination", "Decision", "Description", ""], rows),
      el("h2", {}, "Matrix"),
      matrix,
      el("h2", {}, "Add or replace an intention"),
      form
    );
  }

  async function gatewaysPage(page) {
    const [gateways, instances, proxies] = await Promise.all([get("/v1/resources/Gateway"), get("/v1/instances"), get("/v1/proxies")]);
    page.append(el("h1", {}, "Gateways"));
    if (!gateways.length) page.append(el("p", { class: "muted" }, "No Gateway resource."));
    const healthOf = (svc) => {
      const ins = instances.filter((i) => i.service === svc);
      if (!ins.length) return el("span", { class: "bad" }, "no instance");
      const ok = ins.filter((i) => i.healthy).length;
      return el("span", { class: ok === ins.length ? "ok" : ok ? "warn" : "bad" }, ok + " of " + ins.length + " healthy");
    };
    for (const g of gateways) {
      const running = proxies.filter((p) => p.service === g.name);
      const sec = el("section", { "aria-labelledby": "gw-" + safeId(g.name) }, el("h2", { id: "gw-" + safeId(g.name) }, g.name),
        el("p", {}, running.length ? running.length + " gateway proxies connected: " + running.map((p) => p.instance + (p.node ? " on " + p.node : "")).join(", ") : el("span", { class: "bad" }, "No gateway proxy connected.")));
      for (const l of g.spec.listeners) {
        sec.append(el("h3", {}, "Port " + l.port + " — " + l.protocol + (l.tls ? " (certificate: " + (l.tls.source || (l.tls.certFile ? "files" : "self-signed")) + ")" : "")));
        if (l.routes && l.routes.length) {
          sec.append(table("Routes, first match wins", ["Host", "Path prefix", "Service", "Rewrite", "Health"],
            l.routes.map((r) => [r.host || "any", r.pathPrefix || "/", svcLink(r.service), r.rewritePrefix || "—", healthOf(r.service)])));
        }
        if (l.targets && l.targets.length || l.defaultService) {
          const rows = (l.targets || []).map((t) => [t.sni, svcLink(t.service), healthOf(t.service)]);
          if (l.defaultService) rows.push([el("em", {}, "no SNI or no match"), svcLink(l.defaultService), healthOf(l.defaultService)]);
          sec.append(table("Pass-through targets" + (l.proxyProtocol ? " (PROXY protocol v2)" : ""), ["SNI", "Service", "Health"], rows));
        }
      }
      page.append(sec);
    }
  }

  // ---- the topology graph -------------------------------------------------

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== undefined && v !== null) e.setAttribute(k, String(v));
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }

  // layout places services in columns by how far they are from a caller
  // that nobody calls (left to right, as requests flow), then in rows.
  function layout(topo) {
    const names = topo.nodes.map((n) => n.name);
    const into = new Map(names.map((n) => [n, 0]));
    const next = new Map(names.map((n) => [n, []]));
    for (const e of topo.edges) {
      if (!next.has(e.source) || !into.has(e.destination) || e.source === e.destination) continue;
      next.get(e.source).push(e.destination);
      into.set(e.destination, into.get(e.destination) + 1);
    }
    const depth = new Map();
    let queue = names.filter((n) => into.get(n) === 0);
    if (!queue.length) queue = names.slice(0, 1);
    for (const n of queue) depth.set(n, 0);
    // Breadth first; a cycle stops where it was already placed.
    for (let i = 0; i < queue.length; i++) {
      for (const m of next.get(queue[i])) {
        if (!depth.has(m)) {
          depth.set(m, depth.get(queue[i]) + 1);
          queue.push(m);
        }
      }
    }
    for (const n of names) if (!depth.has(n)) depth.set(n, 0);
    const cols = [];
    for (const n of names) {
      const d = depth.get(n);
      (cols[d] = cols[d] || []).push(n);
    }
    const pos = new Map();
    const colW = 290, rowH = 90, nodeW = 150, nodeH = 44;
    cols.forEach((col, ci) => (col || []).forEach((n, ri) => pos.set(n, { x: 20 + ci * colW, y: 20 + ri * rowH, w: nodeW, h: nodeH })));
    const width = 40 + Math.max(1, cols.length) * colW;
    const height = 40 + Math.max(1, ...cols.map((c) => (c || []).length)) * rowH;
    return { pos, width, height };
  }

  // drawTopology draws nodes as boxes and edges as arrows whose width
  // grows with requests/s and whose colour is the success rate's.
  function drawTopology(topo) {
    const { pos, width, height } = layout(topo);
    const root = svg("svg", { id: "topology-graph", viewBox: "0 0 " + width + " " + height, width, height, role: "img", "aria-labelledby": "topology-title" },
      svg("title", { id: "topology-title" }, "Services and the calls between them, last minute"),
      svg("defs", {}, ...["ok", "warn", "bad", "idle"].map((c) =>
        svg("marker", { id: "arrow-" + c, class: "arrow " + c, viewBox: "0 0 10 10", refX: 10, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 12, markerHeight: 12, orient: "auto-start-reverse" },
          svg("path", { d: "M 0 0 L 10 5 L 0 10 z" })))));
    const maxRps = Math.max(1, ...topo.edges.map((e) => e.requestsPerSecond || 0));
    for (const e of topo.edges) {
      const a = pos.get(e.source), b = pos.get(e.destination);
      if (!a || !b) continue;
      const cls = successClass(e);
      const w = 1.5 + 8 * Math.sqrt((e.requestsPerSecond || 0) / maxRps);
      const x1 = a.x + a.w, y1 = a.y + a.h / 2;
      let x2 = b.x, y2 = b.y + b.h / 2;
      let d;
      if (a === b) {
        d = `M ${a.x + a.w - 20} ${a.y} C ${a.x + a.w + 30} ${a.y - 40}, ${a.x + a.w + 30} ${a.y + a.h + 40}, ${a.x + a.w - 20} ${a.y + a.h}`;
      } else if (b.x <= a.x) {
        // Backwards (a cycle or the same column): around the boxes' bottoms.
        x2 = b.x + b.w / 2;
        y2 = b.y + b.h;
        const low = Math.max(a.y, b.y) + a.h + 30;
        d = `M ${a.x + a.w / 2} ${a.y + a.h} C ${a.x + a.w / 2} ${low}, ${x2} ${low}, ${x2} ${y2}`;
      } else {
        const mx = (x1 + x2) / 2;
        d = `M ${x1} ${y1} C ${mx} ${y1}, ${mx} ${y2}, ${x2} ${y2}`;
      }
      // A TCP edge has no requests: its figure is bytes per second.
      const short = e.requests ? rps(e) + "/s · " + pct(e) : bytesRate(e.bytesPerSecond || 0);
      const label = e.source + " → " + e.destination + ": " + (e.requests ? rps(e) + " requests/s, success " + pct(e) : bytesRate(e.bytesPerSecond || 0) + " over TCP");
      root.append(svg("g", { class: "edge " + cls, id: "edge-" + safeId(e.source) + "--" + safeId(e.destination),
        "data-rps": e.requestsPerSecond || 0, "data-bps": e.bytesPerSecond || 0 },
        svg("title", {}, label),
        svg("path", { d, "stroke-width": w.toFixed(1), "marker-end": "url(#arrow-" + cls + ")", fill: "none" }),
        svg("text", { x: (x1 + x2) / 2, y: (y1 + y2) / 2 - w / 2 - 4, "text-anchor": "middle", class: "edge-label" }, short)));
    }
    for (const n of topo.nodes) {
      const p = pos.get(n.name);
      const link = svg("a", { href: "#/services/" + encodeURIComponent(n.name), class: "node " + successClass(n), id: "node-" + safeId(n.name) },
        svg("title", {}, n.name + ": " + (n.requests ? rps(n) + " requests/s received, success " + pct(n) : bytesRate(n.bytesPerSecond || 0) + " received over TCP")),
        svg("rect", { x: p.x, y: p.y, width: p.w, height: p.h, rx: 6 }),
        svg("text", { x: p.x + p.w / 2, y: p.y + 18, "text-anchor": "middle", class: "node-name" }, n.name),
        svg("text", { x: p.x + p.w / 2, y: p.y + 35, "text-anchor": "middle", class: "node-figures" },
          n.requests ? rps(n) + "/s · " + pct(n) : n.bytesPerSecond ? bytesRate(n.bytesPerSecond) : "no traffic"));
      root.append(link);
    }
    return root;
  }

  // topologyRefresh is how often the graph is redrawn.
  const topologyRefresh = 3000;

  async function topologyPage(page) {
    const host = el("div", { id: "topology", "aria-live": "off" });
    const edges = el("div", { id: "topology-edges" });
    const stamp = el("p", { class: "muted", id: "topology-at" });
    page.append(
      el("h1", {}, "Topology"),
      el("p", { class: "muted" }, "Services and the calls between them over the last minute, as the proxies measured them. Edge width: requests per second; colour: success rate (green from 99 %, amber from 95 %, red below, grey without requests). Redrawn every " + topologyRefresh / 1000 + " s."),
      host,
      stamp,
      edges
    );
    const draw = async () => {
      const topo = await get("/v1/topology?window=1m");
      host.replaceChildren(topo.nodes.length ? drawTopology(topo) : el("p", { class: "muted" }, "No service yet."));
      edges.replaceChildren(table("Edges", ["From", "To"].concat(figureHead),
        topo.edges.map((e) => [peer(e.source), peer(e.destination)].concat(figures(e))), "traffic"));
      stamp.textContent = "Measured at " + new Date(topo.at).toLocaleTimeString() + ".";
    };
    await draw();
    // Redraws until this page is replaced (another page, or Refresh).
    const timer = setInterval(async () => {
      if (page.getAttribute("data-loaded") && !page.isConnected) {
        clearInterval(timer);
        return;
      }
      try {
        await draw();
      } catch (e) {
        if (e.status === 401) clearInterval(timer);
        else stamp.textContent = "Could not refresh: " + e.message;
      }
    }, topologyRefresh);
  }

  // ---- routing and session -------------------------------------------------

  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
    const name = pages[parts[0]] ? parts[0] : "overview";
    return { name, arg: parts[1] };
  }

  let rendering = 0;
  async function render() {
    if (!session) return;
    const { name, arg } = route();
    for (const a of document.querySelectorAll("#nav a")) {
      if (a.getAttribute("href") === "#/" + name) a.setAttribute("aria-current", "page");
      else a.removeAttribute("aria-current");
    }
    const mine = ++rendering;
    const page = el("div", { id: "page", "data-page": name, "data-route": arg ? name + "/" + arg : name, "aria-busy": "true" });
    try {
      await pages[name](page, arg);
    } catch (e) {
      if (e.status === 401) return;
      page.append(el("p", { class: "error", role: "alert" }, "Could not load: " + e.message));
    }
    if (mine !== rendering) return; // a newer render began meanwhile
    page.removeAttribute("aria-busy");
    page.setAttribute("data-loaded", "true");
    $("page").replaceWith(page);
    document.title = "Trellis — " + name[0].toUpperCase() + name.slice(1);
  }

  function showLogin(msg) {
    session = null;
    $("nav").hidden = true;
    $("who").hidden = true;
    rendering++; // a render still loading is not shown
    $("page").replaceWith(el("div", { id: "page" }));
    $("login").hidden = false;
    $("login-error").textContent = msg && msg !== "not logged in" ? msg : "";
    $("token").focus();
  }

  function loggedIn(s) {
    session = s;
    $("login").hidden = true;
    $("nav").hidden = false;
    $("who").hidden = false;
    $("role").textContent = (s.role === "admin" ? "Admin" : "Viewer (read-only)") + " · token " + s.tokenId;
    render();
    $("main").focus();
  }

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = $("token");
    try {
      const s = await api("POST", "/ui/login", { token: input.value.trim() });
      input.value = "";
      loggedIn(s);
    } catch (e) {
      $("login-error").textContent = e.message;
    }
  });

  $("logout").addEventListener("click", async () => {
    try {
      await api("POST", "/ui/logout");
    } catch (e) {
      // The session is gone either way.
    }
    showLogin("Logged out.");
  });

  $("refresh").addEventListener("click", () => render());
  window.addEventListener("hashchange", () => {
    render();
    $("main").focus();
  });

  // At load: resume the session the cookie holds, or ask for a token.
  fetch("/ui/session", { credentials: "same-origin", cache: "no-store" })
    .then((r) => (r.ok ? r.json() : Promise.reject(r)))
    .then(loggedIn, () => showLogin(""));
})();
