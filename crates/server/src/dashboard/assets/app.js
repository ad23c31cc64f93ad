// Caged's dashboard: draws each page from the /v1 API. No framework and no build step: the
// server embeds this file as it is. Every value from the API is put in the page as text
// (textContent), never as markup.
"use strict";

const CSRF = document.querySelector('meta[name="caged-csrf"]').content;
const main = document.getElementById("main");

// ---- talking to the API -------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function api(method, path, body) {
  const init = { method, headers: { Accept: "application/json" }, credentials: "same-origin" };
  if (method !== "GET") init.headers["X-Caged-CSRF"] = CSRF;
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  if (res.status === 401) {
    location.assign("/login?next=" + encodeURIComponent(location.pathname));
    throw new ApiError(401, "unauthorized", "signed out");
  }
  const type = res.headers.get("content-type") || "";
  const data = type.includes("json") ? await res.json() : null;
  if (!res.ok) {
    const err = (data && data.error) || {};
    throw new ApiError(res.status, err.code || "error", err.message || res.statusText);
  }
  return data;
}

// ---- building the page --------------------------------------------------------------------

// h("a", {href: "/x", class: "y"}, "text", child, ...): an element; strings become text nodes.
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

function show(...children) {
  main.replaceChildren(...children);
}

let toastTimer;
function toast(message, kind) {
  const el = document.getElementById("toast");
  el.textContent = message;
  el.className = kind === "error" ? "visible error" : "visible";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => (el.className = ""), 6000);
}

function failure(err) {
  toast(err.message, "error");
}

// A confirmation in a modal <dialog>; resolves to true when confirmed.
function confirmAction(title, text, action) {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { class: "confirm", "aria-labelledby": "confirm-title" },
      h("h2", { id: "confirm-title" }, title),
      h("p", {}, text),
      h(
        "form",
        { method: "dialog", class: "row" },
        h("button", { value: "cancel", class: "secondary" }, "Cancel"),
        h("button", { value: "confirm", class: "danger", id: "confirm-button" }, action),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

// ---- formatting ---------------------------------------------------------------------------

function money(micros) {
  const sign = micros < 0 ? "-" : "";
  const abs = Math.abs(micros);
  return `${sign}$${Math.floor(abs / 1e6)}.${String(abs % 1e6).padStart(6, "0")}`;
}

function duration(seconds) {
  seconds = Math.floor(seconds);
  if (seconds < 60) return `${seconds}s`;
  const m = Math.floor(seconds / 60);
  if (m < 60) return `${m}m ${String(seconds % 60).padStart(2, "0")}s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours}h ${String(m % 60).padStart(2, "0")}m`;
  return `${Math.floor(hours / 24)}d ${hours % 24}h`;
}

function ago(iso) {
  const seconds = (Date.now() - Date.parse(iso)) / 1000;
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, `${duration(Math.max(0, seconds))} ago`);
}

function clock(iso) {
  return h("time", { datetime: iso, title: new Date(iso).toLocaleString() }, new Date(iso).toLocaleTimeString());
}

function stateBadge(state) {
  return h("span", { class: `badge state-${state}`, dataset: { state } }, state);
}

function trustBadge(score, rating) {
  if (score === undefined || score === null) return h("span", { class: "muted" }, "–");
  return h(
    "span",
    { class: `badge trust-${rating}`, title: `Trust ${score}/100 (${rating})`, dataset: { rating } },
    `${score} ${rating}`,
  );
}

// Spend against budget: amber from 80%, red from 95%.
function costGauge(cost) {
  if (!cost) return h("span", { class: "muted" }, "–");
  const total = money(cost.total_micros);
  if (cost.budget_micros === null || cost.budget_micros === undefined) {
    return h("span", { class: "cost", title: "No budget" }, total);
  }
  const percent = cost.budget_percent || 0;
  const level = percent >= 95 ? "critical" : percent >= 80 ? "warning" : "ok";
  const bar = h("span", { class: "fill" });
  bar.style.width = `${Math.min(100, percent)}%`;
  return h(
    "span",
    { class: "cost" },
    h(
      "span",
      {
        class: `gauge ${level}`,
        role: "meter",
        "aria-valuemin": 0,
        "aria-valuemax": 100,
        "aria-valuenow": Math.min(100, percent),
        "aria-label": `Budget used: ${percent}%`,
        dataset: { level },
      },
      bar,
    ),
    ` ${total} of ${money(cost.budget_micros)} (${percent}%)`,
  );
}

function previewLinks(previews) {
  if (!previews || previews.length === 0) return h("span", { class: "muted" }, "–");
  return h(
    "span",
    { class: "previews" },
    previews.map((p) => h("a", { href: p.url, target: "_blank", rel: "noopener noreferrer" }, `:${p.port}`)),
  );
}

// ---- the sandboxes list -------------------------------------------------------------------

async function listPage() {
  document.title = "Sandboxes · Caged";
  const params = new URLSearchParams(location.search);
  const filters = {
    state: params.get("state") || "active",
    template: params.get("template") || "",
    q: params.get("q") || "",
  };
  const tbody = h("tbody");
  const count = h("p", { class: "muted", "aria-live": "polite" });
  const stateSelect = h(
    "select",
    { id: "filter-state", name: "state" },
    ["active", "running", "paused", "destroyed", "all"].map((s) =>
      h("option", { value: s, selected: s === filters.state }, s === "active" ? "running or paused" : s),
    ),
  );
  const templateSelect = h("select", { id: "filter-template", name: "template" }, h("option", { value: "" }, "any"));
  const search = h("input", { id: "filter-q", name: "q", type: "search", value: filters.q, placeholder: "id or name" });
  const form = h(
    "form",
    { class: "filters", role: "search" },
    h("label", { for: "filter-state" }, "State"),
    stateSelect,
    h("label", { for: "filter-template" }, "Template"),
    templateSelect,
    h("label", { for: "filter-q" }, "Search"),
    search,
  );
  show(
    h("div", { class: "heading" }, h("h1", {}, "Sandboxes"), h("a", { class: "button", href: "/new" }, "New sandbox")),
    form,
    count,
    h(
      "table",
      { class: "list", id: "sandboxes" },
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Sandbox", "State", "Template", "Age", "Running", "Cost", "Trust", "Previews"].map((c) => h("th", { scope: "col" }, c)),
        ),
      ),
      tbody,
    ),
  );

  let sandboxes = [];
  const draw = () => {
    const q = search.value.trim().toLowerCase();
    const rows = sandboxes.filter(
      (s) =>
        (stateSelect.value === "active"
          ? s.state !== "destroyed"
          : stateSelect.value === "all" || s.state === stateSelect.value) &&
        (!templateSelect.value || s.template === templateSelect.value) &&
        (!q || s.id.includes(q) || (s.name || "").toLowerCase().includes(q)),
    );
    count.textContent = `${rows.length} of ${sandboxes.length} ${loadedDestroyed ? "" : "live "}sandboxes`;
    tbody.replaceChildren(
      ...rows.map((s) =>
        h(
          "tr",
          { dataset: { id: s.id } },
          h(
            "td",
            { "data-label": "Sandbox" },
            h("a", { href: `/sandboxes/${s.id}` }, s.id),
            s.name ? h("span", { class: "muted" }, ` ${s.name}`) : null,
          ),
          h("td", { "data-label": "State" }, stateBadge(s.state)),
          h("td", { "data-label": "Template" }, s.template),
          h("td", { "data-label": "Age" }, ago(s.created_at)),
          h("td", { "data-label": "Running" }, duration(s.running_seconds)),
          h("td", { "data-label": "Cost" }, costGauge(s.cost)),
          h("td", { "data-label": "Trust" }, trustBadge(s.trust_score, s.trust_rating)),
          h("td", { "data-label": "Previews" }, previewLinks(s.preview_urls)),
        ),
      ),
    );
    if (rows.length === 0) {
      tbody.append(h("tr", {}, h("td", { colspan: 8, class: "muted" }, "No sandboxes match.")));
    }
  };
  const syncUrl = () => {
    const next = new URLSearchParams();
    if (stateSelect.value !== "active") next.set("state", stateSelect.value);
    if (templateSelect.value) next.set("template", templateSelect.value);
    if (search.value.trim()) next.set("q", search.value.trim());
    history.replaceState(null, "", next.toString() ? `/?${next}` : "/");
    draw();
  };
  form.addEventListener("input", syncUrl);
  // Destroyed sandboxes are read only when asked for (an account collects many).
  const wantsDestroyed = () => ["destroyed", "all"].includes(stateSelect.value);
  let loadedDestroyed = wantsDestroyed();
  stateSelect.addEventListener("change", () => {
    if (wantsDestroyed() && !loadedDestroyed) load().catch(failure);
  });
  form.addEventListener("submit", (e) => e.preventDefault());

  const load = async () => {
    loadedDestroyed = wantsDestroyed();
    const data = await api("GET", loadedDestroyed ? "/v1/sandboxes?all=true" : "/v1/sandboxes");
    sandboxes = data.sandboxes.reverse(); // newest first
    const templates = [...new Set(sandboxes.map((s) => s.template))].sort();
    const chosen = templateSelect.value || filters.template;
    templateSelect.replaceChildren(
      h("option", { value: "" }, "any"),
      templates.map((t) => h("option", { value: t, selected: t === chosen }, t)),
    );
    draw();
  };
  await load();
  // The list is cheap to read; a few seconds is live enough for states, costs and previews.
  const timer = setInterval(() => load().catch(() => {}), 5000);
  addEventListener("pagehide", () => clearInterval(timer));
}

// ---- one sandbox ----------------------------------------------------------------------------

async function sandboxPage(id) {
  document.title = `${id} · Caged`;
  let sandbox;
  try {
    sandbox = await api("GET", `/v1/sandboxes/${id}`);
  } catch (err) {
    show(h("h1", {}, "Sandbox not found"), h("p", { role: "alert" }, err.message), h("a", { href: "/" }, "All sandboxes"));
    return;
  }
  const header = h("div", { class: "heading" });
  const overview = h("section", { "aria-labelledby": "overview-title", id: "overview" });
  const sessions = h("section", { "aria-labelledby": "sessions-title", id: "sessions" });
  const previews = h("section", { "aria-labelledby": "previews-title", id: "previews" });
  const snapshots = h("section", { "aria-labelledby": "snapshots-title", id: "snapshots" });
  const events = h("ol", { class: "events", id: "events", "aria-live": "off" });
  const KINDS = ["state", "exec", "session", "process", "fs", "file_open", "network", "trust", "llm", "budget", "port", "preview", "http", "snapshot", "file", "init"];
  const kindFilter = h(
    "select",
    { id: "event-kind" },
    h("option", { value: "" }, "all kinds"),
    KINDS.map((kind) => h("option", { value: kind }, kind)),
  );
  const shown = (item) => !kindFilter.value || item.dataset.kind === kindFilter.value;
  kindFilter.addEventListener("change", () => {
    for (const item of events.children) item.hidden = !shown(item);
  });
  const config = h("section", { "aria-labelledby": "config-title", id: "config" });
  const settings = h("section", { "aria-labelledby": "settings-title", id: "settings" });
  show(
    header,
    h(
      "div",
      { class: "columns" },
      h("div", {}, overview, sessions, previews, snapshots, settings, config),
      h(
        "section",
        { "aria-labelledby": "events-title", class: "events-panel" },
        h("h2", { id: "events-title" }, "Events ", h("span", { class: "live", id: "live" }, "connecting")),
        h(
          "div",
          { class: "inline" },
          h("label", { for: "event-kind" }, "Show"),
          kindFilter,
        ),
        events,
      ),
    ),
  );

  const refresh = async () => {
    sandbox = await api("GET", `/v1/sandboxes/${id}`);
    drawHeader();
    drawOverview();
    drawPreviews();
    settings.hidden = sandbox.state === "destroyed";
  };

  const act = (fn) => async (event) => {
    const button = event.currentTarget;
    button.disabled = true;
    button.setAttribute("aria-busy", "true");
    try {
      await fn();
    } catch (err) {
      failure(err);
    } finally {
      button.disabled = false;
      button.removeAttribute("aria-busy");
    }
  };

  const drawHeader = () => {
    const s = sandbox;
    const live = s.state !== "destroyed";
    header.replaceChildren(
      h("h1", {}, `Sandbox ${s.id}`, s.name ? h("span", { class: "muted" }, ` ${s.name}`) : null, " ", stateBadge(s.state)),
      h(
        "div",
        { class: "row actions" },
        s.state === "running"
          ? h("button", { id: "pause", class: "secondary", onclick: act(async () => {
              await api("POST", `/v1/sandboxes/${id}/pause`);
              await refresh();
              toast("Paused.");
            }) }, "Pause")
          : null,
        s.state === "paused"
          ? h("button", { id: "resume", class: "secondary", onclick: act(async () => {
              await api("POST", `/v1/sandboxes/${id}/resume`);
              await refresh();
              toast("Resumed.");
            }) }, "Resume")
          : null,
        live
          ? h("button", { id: "destroy", class: "danger", onclick: act(async () => {
              const yes = await confirmAction(
                `Destroy sandbox ${id}?`,
                "Its container and files are deleted. Snapshots are kept.",
                "Destroy",
              );
              if (!yes) return;
              await api("DELETE", `/v1/sandboxes/${id}`);
              await refresh();
              toast("Destroyed.");
            }) }, "Destroy")
          : null,
      ),
    );
  };

  const drawOverview = () => {
    const s = sandbox;
    const r = s.resources;
    const row = (term, ...value) => [h("dt", {}, term), h("dd", {}, ...value)];
    overview.replaceChildren(
      h("h2", { id: "overview-title" }, "Overview"),
      h(
        "dl",
        { class: "facts" },
        row("State", stateBadge(s.state), s.destroyed_reason ? ` (${s.destroyed_reason})` : ""),
        row("Template", s.template, " · ", s.isolation),
        row("Resources", `${r.cpu} vCPU · ${r.memory_mb} MB · ${r.disk_gb} GB disk`),
        row("Network", s.network_mode, s.allowed_hosts && s.allowed_hosts.length ? `: ${s.allowed_hosts.join(", ")}` : ""),
        row("Created", ago(s.created_at)),
        row("Running time", duration(s.running_seconds)),
        row("Idle timeout", duration(s.timeout_seconds)),
        row("Cost", costGauge(s.cost)),
        row("Trust", trustBadge(s.trust_score, s.trust && s.trust.rating)),
      ),
    );
  };

  const expanded = new Set();
  const drawSessions = async () => {
    const data = await api("GET", `/v1/sandboxes/${id}/sessions`);
    const list = data.sessions.slice().reverse();
    sessions.replaceChildren(
      h("h2", { id: "sessions-title" }, "Sessions"),
      list.length === 0
        ? h("p", { class: "muted" }, "No sessions yet: each caged shell, agent or WebSocket exec is one.")
        : h(
            "table",
            { class: "list" },
            h("thead", {}, h("tr", {}, ["Session", "Command", "Started", "Trust", "Tokens", "LLM cost"].map((c) => h("th", { scope: "col" }, c)))),
            h(
              "tbody",
              {},
              list.map((s) => {
                const detail = h("tr", { class: "detail", hidden: true }, h("td", { colspan: 6 }, h("p", { class: "muted" }, "Loading…")));
                const expand = async (open) => {
                  toggle.setAttribute("aria-expanded", String(open));
                  detail.hidden = !open;
                  if (open) expanded.add(s.id);
                  else expanded.delete(s.id);
                  if (open) detail.firstChild.replaceChildren(await sessionDetail(s.id));
                };
                const toggle = h(
                  "button",
                  { class: "link", "aria-expanded": "false", "aria-label": `Penalties of session ${s.id}`, dataset: { session: s.id }, onclick: () =>
                    expand(toggle.getAttribute("aria-expanded") !== "true").catch(failure) },
                  s.id,
                );
                // Stays open across redraws.
                if (expanded.has(s.id)) expand(true).catch(failure);
                return [
                  h(
                    "tr",
                    { dataset: { id: s.id } },
                    h("td", { "data-label": "Session" }, toggle, " ", h("span", { class: "muted" }, s.state)),
                    h("td", { "data-label": "Command" }, h("code", {}, (s.command || []).join(" "))),
                    h("td", { "data-label": "Started" }, ago(s.started_at)),
                    h("td", { "data-label": "Trust" }, trustBadge(s.trust_score, s.trust_rating)),
                    h("td", { "data-label": "Tokens" }, `${s.tokens_in} in / ${s.tokens_out} out`),
                    h("td", { "data-label": "LLM cost" }, money(s.llm_cost_micros)),
                  ),
                  detail,
                ];
              }),
            ),
          ),
    );
  };

  const sessionDetail = async (sid) => {
    const s = await api("GET", `/v1/sessions/${sid}`);
    if (!s.penalties || s.penalties.length === 0) {
      return h("p", { class: "muted" }, `No penalties: trust ${s.trust_score} (${s.trust_rating}).`);
    }
    return h(
      "ul",
      { class: "penalties" },
      s.penalties.map((p) =>
        h(
          "li",
          {},
          h("strong", {}, `−${p.points} ${p.rule}`),
          ` ${p.reason}`,
          p.evidence ? h("pre", { class: "evidence" }, JSON.stringify(p.evidence, null, 2)) : null,
        ),
      ),
    );
  };

  // Forms are built once and kept: a redraw (any event may cause one) must not take what the
  // user is typing away from them.
  const previewList = h("div");
  const previewForm = (() => {
    const port = h("input", { id: "protect-port", type: "number", min: 1, max: 65535, required: true, inputmode: "numeric" });
    const password = h("input", { id: "protect-password", type: "password", autocomplete: "new-password", minlength: 1 });
    const form = h(
      "form",
      { class: "inline", id: "protect-form", onsubmit: async (e) => {
        e.preventDefault();
        try {
          const value = password.value === "" ? null : password.value;
          await api("PUT", `/v1/sandboxes/${id}/previews/${port.value}`, { password: value });
          toast(value === null ? `Port ${port.value} is open to anyone with the URL.` : `Port ${port.value} is protected.`);
          password.value = "";
          await refresh();
        } catch (err) {
          failure(err);
        }
      } },
      h("label", { for: "protect-port" }, "Port"),
      port,
      h("label", { for: "protect-password" }, "Password (empty: none)"),
      password,
      h("button", { type: "submit" }, "Set password"),
    );
    return form;
  })();
  previews.append(h("h2", { id: "previews-title" }, "Previews"), previewList, previewForm);
  const drawPreviews = () => {
    const list = sandbox.previews || [];
    previewForm.hidden = sandbox.state === "destroyed";
    previewList.replaceChildren(
      list.length === 0
        ? h("p", { class: "muted" }, "No port is listening. A server started inside the sandbox shows up here within a second.")
        : h(
            "ul",
            { class: "plain" },
            list.map((p) =>
              h(
                "li",
                { dataset: { port: p.port } },
                h("a", { href: p.url, target: "_blank", rel: "noopener noreferrer" }, p.url),
                p.listening ? "" : h("span", { class: "muted" }, " (not listening)"),
                p.protected ? h("span", { class: "badge" }, "password") : null,
              ),
            ),
          ),
    );
  };

  const snapshotList = h("div");
  const snapshotForm = (() => {
    const name = h("input", { id: "snapshot-name", name: "name", placeholder: "optional", maxlength: 63 });
    const create = h(
      "form",
      { class: "inline", id: "snapshot-form", onsubmit: async (e) => {
        e.preventDefault();
        const button = create.querySelector("button");
        button.disabled = true;
        button.textContent = "Taking snapshot…";
        try {
          const snap = await api("POST", `/v1/sandboxes/${id}/snapshots`, name.value ? { name: name.value } : {});
          toast(`Snapshot ${snap.id} taken.`);
          name.value = "";
          await drawSnapshots();
        } catch (err) {
          failure(err);
        } finally {
          button.disabled = false;
          button.textContent = "Take snapshot";
        }
      } },
      h("label", { for: "snapshot-name" }, "Name"),
      name,
      h("button", { type: "submit" }, "Take snapshot"),
    );
    return create;
  })();
  snapshots.append(h("h2", { id: "snapshots-title" }, "Snapshots"), snapshotList, snapshotForm);
  const drawSnapshots = async () => {
    const data = await api("GET", `/v1/sandboxes/${id}/snapshots`);
    const list = data.snapshots.slice().reverse();
    const live = sandbox.state !== "destroyed";
    snapshotForm.hidden = !live;
    snapshotList.replaceChildren(
      list.length === 0
        ? h("p", { class: "muted" }, "No snapshots.")
        : h(
            "table",
            { class: "list" },
            h("thead", {}, h("tr", {}, ["Snapshot", "Kind", "Taken", "Size", "Actions"].map((c) => h("th", { scope: "col" }, c)))),
            h(
              "tbody",
              {},
              list.map((snap) =>
                h(
                  "tr",
                  { dataset: { id: snap.id } },
                  h("td", { "data-label": "Snapshot" }, h("code", {}, snap.id), snap.name ? ` ${snap.name}` : ""),
                  h("td", { "data-label": "Kind" }, snap.kind),
                  h("td", { "data-label": "Taken" }, ago(snap.created_at)),
                  h("td", { "data-label": "Size" }, bytes(snap.size_bytes)),
                  h(
                    "td",
                    { class: "row", "data-label": "Actions" },
                    h("a", { class: "button secondary", href: `/v1/snapshots/${snap.id}/download`, download: `${snap.id}.tar.gz` }, "Download"),
                    h("button", { class: "secondary", dataset: { action: "fork" }, onclick: act(async () => {
                      const fork = await api("POST", `/v1/snapshots/${snap.id}/fork`, {});
                      toast(`Forked into ${fork.id}.`);
                      location.assign(`/sandboxes/${fork.id}`);
                    }) }, "Fork"),
                    live
                      ? h("button", { class: "secondary", dataset: { action: "restore" }, onclick: act(async () => {
                          const yes = await confirmAction(
                            `Restore ${snap.id}?`,
                            "The sandbox's files are replaced by the snapshot's. Anything written since is lost.",
                            "Restore",
                          );
                          if (!yes) return;
                          await api("POST", `/v1/sandboxes/${id}/restore`, { snapshot_id: snap.id });
                          toast(`Restored ${snap.id}.`);
                          await refresh();
                        }) }, "Restore")
                      : null,
                    h("button", { class: "danger", dataset: { action: "delete" }, onclick: act(async () => {
                      const yes = await confirmAction(`Delete ${snap.id}?`, "The snapshot cannot be brought back.", "Delete");
                      if (!yes) return;
                      await api("DELETE", `/v1/snapshots/${snap.id}`);
                      toast(`Deleted ${snap.id}.`);
                      await drawSnapshots();
                    }) }, "Delete"),
                  ),
                ),
              ),
            ),
          ),
    );
  };

  // A live sandbox's budget, and its allowlist in allowlist mode: changed while it runs.
  const buildSettings = () => {
    const budget = h("input", {
      id: "budget-usd", type: "number", step: "0.000001", min: 0.000001, placeholder: "none",
      value: sandbox.budget_usd ?? "", "aria-describedby": "budget-help",
    });
    const budgetForm = h(
      "form",
      { class: "inline", id: "budget-form", onsubmit: async (e) => {
        e.preventDefault();
        const remove = e.submitter && e.submitter.value === "remove";
        try {
          const value = remove || budget.value === "" ? null : Number(budget.value);
          await api("PUT", `/v1/sandboxes/${id}/budget`, { budget_usd: value });
          if (value === null) budget.value = "";
          toast(value === null ? "Budget removed." : `Budget set to $${value}.`);
          await refresh();
        } catch (err) {
          failure(err);
        }
      } },
      h("label", { for: "budget-usd" }, "Budget (USD)"),
      budget,
      h("button", { type: "submit", value: "set" }, "Set budget"),
      h("button", { type: "submit", value: "remove", class: "secondary" }, "Remove"),
      h("p", { class: "muted help", id: "budget-help" }, "At 100% a final snapshot is taken and the sandbox is destroyed."),
    );
    const parts = [h("h2", { id: "settings-title" }, "Settings"), budgetForm];
    if (sandbox.network_mode === "allowlist") {
      const hosts = h("textarea", { id: "allowlist", rows: 3 }, (sandbox.allowed_hosts || []).join("\n"));
      parts.push(
        h(
          "form",
          { id: "allowlist-form", class: "field", onsubmit: async (e) => {
            e.preventDefault();
            try {
              const list = hosts.value.split(/\s+/).filter(Boolean);
              await api("PUT", `/v1/sandboxes/${id}/network/allowed-hosts`, { allowed_hosts: list });
              toast("Allowlist saved: new connections follow it now.");
              await refresh();
            } catch (err) {
              failure(err);
            }
          } },
          h("label", { for: "allowlist" }, "Allowed hosts (one a line)"),
          hosts,
          h("div", {}, h("button", { type: "submit" }, "Save allowlist")),
        ),
      );
    }
    settings.replaceChildren(...parts);
  };

  const drawConfig = () => {
    config.replaceChildren(
      h("h2", { id: "config-title" }, ".caged.yaml"),
      h("p", { class: "muted" }, "The config this sandbox was made from; caged create -f FILE makes another like it."),
      h("pre", { class: "yaml", id: "caged-yaml", tabindex: 0 }, sandbox.caged_yaml || ""),
    );
  };

  drawHeader();
  drawOverview();
  drawPreviews();
  buildSettings();
  drawConfig();
  await Promise.all([drawSessions().catch(failure), drawSnapshots().catch(failure)]);

  // Live: every event is drawn as it comes; the parts it may change are read again.
  let pending = null;
  const stale = new Set();
  const later = (part) => {
    stale.add(part);
    if (pending) return;
    pending = setTimeout(async () => {
      const parts = [...stale];
      stale.clear();
      pending = null;
      try {
        if (parts.includes("sandbox")) await refresh();
        if (parts.includes("sessions")) await drawSessions();
        if (parts.includes("snapshots")) await drawSnapshots();
      } catch (err) {
        if (err.status !== 404) failure(err);
      }
    }, 300);
  };
  follow(`/v1/sandboxes/${id}/events?follow=true`, (event) => {
    const item = eventItem(event);
    item.hidden = !shown(item);
    events.prepend(item);
    while (events.childElementCount > 300) events.lastElementChild.remove();
    const kind = event.kind;
    if (["state", "port", "preview", "budget", "llm", "trust", "init"].includes(kind)) later("sandbox");
    if (["session", "trust", "llm", "exec"].includes(kind)) later("sessions");
    if (["snapshot"].includes(kind)) later("snapshots");
  });
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  return `${n.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
}

function summary(event) {
  const p = event.payload || {};
  switch (event.kind) {
    case "state":
      return `${p.from ? `${p.from} → ` : "created, "}${p.to}${p.reason ? ` (${p.reason})` : ""}`;
    case "exec":
      return `${[].concat(p.cmd || []).join(" ")} → exit ${p.exit_code}${p.timed_out ? " (timed out)" : ""}`;
    case "process":
      return p.op === "exec" ? (p.argv || [p.exe || "?"]).join(" ") : `${p.op} ${p.downloader || ""} | ${p.shell || ""}`;
    case "fs":
      return ["created", "written", "deleted", "moved"].filter((k) => p[k]).map((k) => `${p[k]} ${k}`).join(", ") +
        (p.paths && p.paths.length ? `: ${p.paths.slice(0, 3).map((x) => x.path).join(", ")}` : "");
    case "trust":
      return p.op === "penalty" ? `−${p.points} ${p.rule}: ${p.reason} (score ${p.score})` : `rating ${p.from} → ${p.to}`;
    case "llm":
      return p.refused ? `refused: ${p.message}` : `${p.provider} ${p.model}: ${p.tokens_in} in / ${p.tokens_out} out, ${money(p.cost_micros || 0)}`;
    case "session":
      return p.op === "start" ? `start (${p.agent_type || p.channel || ""})` : `end (${p.reason || ""})`;
    case "port":
      return `port ${p.port} ${p.state}`;
    case "budget":
      return p.message || `${p.op} ${p.level || ""}`;
    default: {
      const parts = Object.entries(p)
        .filter(([, v]) => v !== null && typeof v !== "object")
        .map(([k, v]) => `${k}=${v}`);
      return parts.join(" ").slice(0, 200);
    }
  }
}

function eventItem(event) {
  return h(
    "li",
    { dataset: { kind: event.kind, seq: event.seq } },
    clock(event.at),
    " ",
    h("span", { class: `kind kind-${event.kind}` }, event.kind),
    " ",
    h("span", { class: "what" }, summary(event)),
  );
}

// Server-Sent Events read with fetch (EventSource would need a listener per kind), resumed
// after the last sequence number when the connection drops.
async function follow(url, onEvent) {
  const live = document.getElementById("live");
  let after = 0;
  for (;;) {
    try {
      const res = await fetch(`${url}&after=${after}`, { headers: { Accept: "text/event-stream" }, credentials: "same-origin" });
      if (res.status === 401) return location.assign("/login");
      if (!res.ok) throw new Error(res.statusText);
      live.textContent = "live";
      live.className = "live on";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        let end;
        while ((end = buffer.indexOf("\n\n")) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const data = block
            .split("\n")
            .filter((line) => line.startsWith("data:"))
            .map((line) => line.slice(5).replace(/^ /, ""))
            .join("\n");
          if (!data) continue;
          const event = JSON.parse(data);
          after = Math.max(after, event.seq);
          onEvent(event);
        }
      }
    } catch (err) {
      // fall through to reconnect
    }
    live.textContent = "reconnecting";
    live.className = "live";
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---- creating a sandbox -----------------------------------------------------------------------

const FIELDS = {
  name: "name",
  template: "template",
  isolation: "isolation",
  "resources.cpu": "cpu",
  "resources.memory": "memory",
  "resources.disk": "disk",
  timeout: "timeout",
  network_mode: "network_mode",
  allowed_hosts: "allowed_hosts",
  budget: "budget",
  init_script: "init_script",
  env: "env",
};

async function newPage() {
  document.title = "New sandbox · Caged";
  const field = (id, label, input, help) =>
    h(
      "div",
      { class: "field" },
      h("label", { for: id }, label),
      input,
      help ? h("p", { class: "muted help", id: `${id}-help` }, help) : null,
      h("p", { class: "error", id: `${id}-error`, hidden: true }),
    );
  const input = (id, attrs) => h("input", { id, name: id, "aria-describedby": `${id}-help`, ...attrs });
  const template = h("select", { id: "template", name: "template" }, h("option", { value: "base" }, "base"));
  const allowed = h("textarea", { id: "allowed_hosts", name: "allowed_hosts", rows: 3, "aria-describedby": "allowed_hosts-help", placeholder: "pypi.org\n*.npmjs.org" });
  const networkMode = h(
    "fieldset",
    { id: "network_mode", class: "radios" },
    h("legend", {}, "Network"),
    ["full", "allowlist", "none"].map((mode) =>
      h("label", {}, h("input", { type: "radio", name: "network_mode", value: mode, checked: mode === "full" }), ` ${mode}`),
    ),
    h("p", { class: "error", id: "network_mode-error", hidden: true }),
  );
  const allowedField = field("allowed_hosts", "Allowed hosts (one a line)", allowed, "Exact names or *.example.com; only these are reachable.");
  const form = h(
    "form",
    { id: "create-form", class: "card wide", novalidate: true },
    field("name", "Name", input("name", { placeholder: "optional", maxlength: 63 })),
    field("template", "Template", template, "Loading the catalogue…"),
    field(
      "isolation",
      "Isolation",
      h("select", { id: "isolation", name: "isolation" }, h("option", { value: "container" }, "container (runc)"), h("option", { value: "gvisor" }, "gvisor (runsc)")),
    ),
    h(
      "div",
      { class: "grid3" },
      field("cpu", "vCPUs", input("cpu", { type: "number", step: "0.1", min: 0.1, max: 64, value: 1 })),
      field("memory", "Memory (MB)", input("memory", { type: "number", min: 64, max: 262144, value: 512 })),
      field("disk", "Disk (GB)", input("disk", { type: "number", min: 1, max: 4096, value: 5 })),
    ),
    field("timeout", "Idle timeout (seconds)", input("timeout", { type: "number", min: 1, max: 2592000, value: 900 }), "Asleep after this long without activity."),
    networkMode,
    allowedField,
    field("budget", "Budget (USD)", input("budget", { type: "number", step: "0.000001", min: 0.000001, placeholder: "none" }), "Destroyed (after a final snapshot) when its spend reaches this."),
    field("env", "Environment (KEY=value, one a line)", h("textarea", { id: "env", name: "env", rows: 2 })),
    field("init_script", "Init script", h("textarea", { id: "init_script", name: "init_script", rows: 3, placeholder: "pip install -r requirements.txt" })),
    h("p", { class: "error", id: "form-error", role: "alert", hidden: true }),
    h("button", { type: "submit", id: "create" }, "Create sandbox"),
  );
  const syncAllowed = () => {
    allowedField.hidden = form.elements.network_mode.value !== "allowlist";
  };
  networkMode.addEventListener("change", syncAllowed);
  syncAllowed();
  show(h("h1", {}, "New sandbox"), h("p", { class: "muted" }, "The same settings as a .caged.yaml, checked the same way."), form);
  // The catalogue: each template with what it says of itself; its tools' versions under it.
  const templateHelp = form.querySelector("#template-help");
  let catalogue = [];
  const describeTemplate = () => {
    const t = catalogue.find((t) => t.name === template.value);
    if (!t) return (templateHelp.textContent = "");
    const tools = Object.entries(t.tools || {}).map(([tool, version]) => `${tool} ${version}`);
    templateHelp.textContent = [...tools, `${Math.round(t.size_bytes / 1e6)} MB`].join(" · ");
  };
  template.setAttribute("aria-describedby", "template-help");
  template.addEventListener("change", describeTemplate);
  api("GET", "/v1/templates")
    .then((data) => {
      catalogue = data.templates;
      if (catalogue.length)
        template.replaceChildren(
          ...catalogue.map((t) =>
            h("option", { value: t.name, selected: t.name === "base" }, t.description ? `${t.name} — ${t.description}` : t.name),
          ),
        );
      describeTemplate();
    })
    .catch(() => {});

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".error")) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const v = (name) => form.elements[name].value.trim();
    const number = (name) => (v(name) === "" ? undefined : Number(v(name)));
    const config = {
      template: v("template"),
      isolation: v("isolation"),
      resources: { cpu: number("cpu"), memory: number("memory"), disk: number("disk") },
      timeout: number("timeout"),
      network_mode: form.elements.network_mode.value,
    };
    if (v("name")) config.name = v("name");
    if (v("budget")) config.budget = number("budget");
    if (config.network_mode === "allowlist") config.allowed_hosts = v("allowed_hosts").split(/\s+/).filter(Boolean);
    if (v("init_script")) config.init_script = form.elements.init_script.value;
    const env = {};
    for (const line of v("env").split("\n").filter((l) => l.trim())) {
      const eq = line.indexOf("=");
      if (eq <= 0) return fieldError("env", `env: "${line}" is not KEY=value`);
      env[line.slice(0, eq).trim()] = line.slice(eq + 1);
    }
    if (Object.keys(env).length) config.env = env;
    const button = document.getElementById("create");
    button.disabled = true;
    button.textContent = "Creating…";
    try {
      const sandbox = await api("POST", "/v1/sandboxes", config);
      location.assign(`/sandboxes/${sandbox.id}`);
    } catch (err) {
      if (err.code === "invalid_config") {
        // Messages start with the key they are about: "resources.cpu: must be …".
        const key = Object.keys(FIELDS).find((k) => err.message.startsWith(`${k}`));
        fieldError(key ? FIELDS[key] : null, err.message);
      } else {
        fieldError(null, err.message);
      }
      button.disabled = false;
      button.textContent = "Create sandbox";
    }
  });
}

function fieldError(id, message) {
  const target = (id && document.getElementById(`${id}-error`)) || document.getElementById("form-error");
  target.textContent = message;
  target.hidden = false;
  target.setAttribute("role", "alert");
  const input = id && document.getElementById(id);
  if (input) {
    input.setAttribute("aria-invalid", "true");
    input.setAttribute("aria-errormessage", `${id}-error`);
    input.focus();
  }
}

// ---- usage over time --------------------------------------------------------------------------

async function usagePage() {
  document.title = "Usage · Caged";
  const params = new URLSearchParams(location.search);
  const days = params.get("days") || "30";
  const data = await api("GET", `/v1/account/usage?days=${encodeURIComponent(days)}`);
  const rows = data.days;
  show(
    h("h1", {}, "Usage"),
    h(
      "p",
      {},
      `Last ${rows.length} days: ${money(data.total_micros)} (compute ${money(data.compute_micros)}, LLM ${money(data.llm_micros)}).`,
    ),
    h(
      "nav",
      { class: "row", "aria-label": "Period" },
      ["7", "30", "90"].map((d) => h("a", { href: `/usage?days=${d}`, "aria-current": d === days ? "page" : null }, `${d} days`)),
    ),
    chart(rows),
    h(
      "details",
      {},
      h("summary", {}, "The figures as a table"),
      h(
        "table",
        { class: "list", id: "usage-table" },
        h("thead", {}, h("tr", {}, ["Day", "Spend", "Compute", "LLM", "LLM calls", "Sandboxes running", "Running time"].map((c) => h("th", { scope: "col" }, c)))),
        h(
          "tbody",
          {},
          rows
            .slice()
            .reverse()
            .map((d) =>
              h(
                "tr",
                { dataset: { date: d.date } },
                h("td", {}, d.date),
                h("td", {}, money(d.total_micros)),
                h("td", {}, money(d.compute_micros)),
                h("td", {}, money(d.llm_micros)),
                h("td", {}, String(d.llm_calls)),
                h("td", {}, String(d.sandboxes_running)),
                h("td", {}, duration(d.running_seconds)),
              ),
            ),
        ),
      ),
    ),
  );
}

// Dollars with as many decimals as the scale needs ($0.0012 on a chart of cents).
function axisMoney(micros, max) {
  const decimals = max >= 1e6 ? 2 : max >= 1e4 ? 4 : 6;
  return `$${(micros / 1e6).toFixed(decimals)}`;
}

// Spend per day as bars, sandboxes running per day as a line, in SVG drawn here.
function chart(rows) {
  const NS = "http://www.w3.org/2000/svg";
  const s = (tag, attrs, ...children) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    el.append(...children);
    return el;
  };
  const W = 720, H = 240, left = 56, right = 40, top = 12, bottom = 28;
  const plotW = W - left - right, plotH = H - top - bottom;
  const maxSpend = Math.max(1, ...rows.map((d) => d.total_micros));
  const maxBoxes = Math.max(1, ...rows.map((d) => d.sandboxes_running));
  const step = plotW / rows.length;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-labelledby": "chart-title chart-desc", id: "usage-chart" });
  svg.append(
    s("title", { id: "chart-title" }, "Spend and running sandboxes per day"),
    s("desc", { id: "chart-desc" }, `Bars: spend per day, up to ${money(maxSpend)}. Line: sandboxes running, up to ${maxBoxes}.`),
  );
  for (const frac of [0, 0.5, 1]) {
    const y = top + plotH * (1 - frac);
    svg.append(
      s("line", { x1: left, x2: W - right, y1: y, y2: y, class: "grid" }),
      s("text", { x: left - 6, y: y + 4, class: "axis", "text-anchor": "end" }, axisMoney(Math.round(maxSpend * frac), maxSpend)),
      s("text", { x: W - right + 6, y: y + 4, class: "axis" }, String(Math.round(maxBoxes * frac))),
    );
  }
  rows.forEach((d, i) => {
    const x = left + i * step;
    const compute = (d.compute_micros / maxSpend) * plotH;
    const llm = (d.llm_micros / maxSpend) * plotH;
    const bar = s("g", { class: "day", "data-date": d.date });
    bar.append(
      s("title", {}, `${d.date}: ${money(d.total_micros)}, ${d.sandboxes_running} sandboxes`),
      s("rect", { x: x + step * 0.15, width: step * 0.7, y: top + plotH - compute, height: compute, class: "compute" }),
      s("rect", { x: x + step * 0.15, width: step * 0.7, y: top + plotH - compute - llm, height: llm, class: "llm" }),
    );
    svg.append(bar);
    if (i % Math.ceil(rows.length / 8) === 0) {
      svg.append(s("text", { x: x + step / 2, y: H - 8, class: "axis", "text-anchor": "middle" }, d.date.slice(5)));
    }
  });
  const points = rows.map((d, i) => `${left + i * step + step / 2},${top + plotH - (d.sandboxes_running / maxBoxes) * plotH}`).join(" ");
  svg.append(s("polyline", { points, class: "boxes" }));
  return h(
    "figure",
    {},
    svg,
    h(
      "figcaption",
      { class: "legend" },
      h("span", { class: "swatch compute" }), " compute ",
      h("span", { class: "swatch llm" }), " LLM ",
      h("span", { class: "swatch boxes" }), " sandboxes running (right axis)",
    ),
  );
}

// ---- routing ------------------------------------------------------------------------------------

async function route() {
  const path = location.pathname;
  const sandbox = path.match(/^\/sandboxes\/([0-9a-f]{8})$/);
  for (const link of document.querySelectorAll("header nav a")) {
    const here = link.getAttribute("href") === path || (path.startsWith("/sandboxes/") && link.getAttribute("href") === "/");
    if (here) link.setAttribute("aria-current", "page");
  }
  try {
    if (path === "/") await listPage();
    else if (path === "/new") await newPage();
    else if (path === "/usage") await usagePage();
    else if (sandbox) await sandboxPage(sandbox[1]);
    else show(h("h1", {}, "Not found"), h("a", { href: "/" }, "All sandboxes"));
  } catch (err) {
    if (err.status !== 401) show(h("h1", {}, "Something went wrong"), h("p", { role: "alert" }, err.message));
  }
}

route();
