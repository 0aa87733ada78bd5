// The auditor's page: search the audit log, page through it, inspect an event, check the chain, export.
// Plain JavaScript served by the app itself (no CDN); every call carries the auditor's bearer token.
"use strict";

const api = (path) => new URL(path, new URL("../", window.location.href)).toString();
const $ = (sel) => document.querySelector(sel);
const state = { first: null, next: null, page: 0, loading: 0 };

function token() {
  return sessionStorage.getItem("auditToken") || "";
}

async function call(url, accept = "application/fhir+json") {
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${token()}`, Accept: accept } });
  if (!resp.ok) {
    let text = `${resp.status} ${resp.statusText}`;
    try {
      const body = await resp.json();
      if (body.issue && body.issue[0]) text += `: ${body.issue[0].diagnostics || body.issue[0].code}`;
    } catch (e) { /* not JSON */ }
    throw new Error(text);
  }
  return resp;
}

function say(text) {
  $("#message").textContent = text || "";
}

function searchUrl() {
  const form = new FormData($("#filters"));
  const params = new URLSearchParams();
  for (const name of ["patient", "agent", "action", "outcome"]) {
    const value = (form.get(name) || "").trim();
    if (value) params.append(name, value);
  }
  if (form.get("from")) params.append("date", `ge${form.get("from")}`);
  if (form.get("to")) params.append("date", `lt${form.get("to")}`);
  params.append("_count", "20");
  return api(`fhir/R4/AuditEvent?${params}`);
}

function exportUrl(format) {
  const form = new FormData($("#filters"));
  const params = new URLSearchParams({ format });
  const patient = (form.get("patient") || "").trim();
  const client = (form.get("agent") || "").trim();
  if (patient) params.append("patient", patient);
  if (client) params.append("client", client);
  if (form.get("from")) params.append("start", form.get("from"));
  if (form.get("to")) params.append("end", form.get("to"));
  return api(`audit/export?${params}`);
}

const OUTCOMES = { "0": "success", "4": "refused", "8": "server error", "12": "major failure" };

function clientOf(event) {
  const agent = (event.agent || []).find((a) => a.type.coding[0].code === "110153");
  if (!agent) return "";
  return (agent.who.identifier && agent.who.identifier.value) || agent.who.display || "";
}

function refsOf(event, role) {
  return (event.entity || [])
    .filter((e) => e.role && e.role.code === role && e.what)
    .map((e) => e.what.reference);
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
}

function showEvents(bundle) {
  const body = $("#events tbody");
  body.replaceChildren();
  const entries = bundle.entry || [];
  for (const entry of entries) {
    const event = entry.resource;
    const row = document.createElement("tr");
    row.dataset.id = event.id;
    cell(row, event.recorded);
    cell(row, event.action);
    cell(row, (event.subtype && event.subtype[0].display) || event.type.display);
    cell(row, OUTCOMES[event.outcome] || event.outcome, event.outcome === "0" ? "" : "failure");
    cell(row, clientOf(event));
    cell(row, refsOf(event, "1").join(", "));
    cell(row, refsOf(event, "4").join(", "));
    row.addEventListener("click", () => showDetail(event, row));
    body.appendChild(row);
  }
  const next = (bundle.link || []).find((l) => l.relation === "next");
  state.next = next ? api(new URL(next.url).pathname.slice(1) + new URL(next.url).search) : null;
  $("#next").disabled = !state.next;
  $("#first").disabled = state.page === 0;
  $("#page-info").textContent = `page ${state.page + 1}, ${entries.length} events`;
  say(entries.length ? "" : "No event matches these filters.");
}

function showDetail(event, row) {
  for (const r of document.querySelectorAll("#events tr.selected")) r.classList.remove("selected");
  row.classList.add("selected");
  $("#detail").hidden = false;
  $("#detail-id").textContent = event.id;
  const facts = {
    Recorded: event.recorded,
    Action: event.action,
    Outcome: `${OUTCOMES[event.outcome] || event.outcome}${event.outcomeDesc ? ` (${event.outcomeDesc})` : ""}`,
    Client: clientOf(event),
    Patients: refsOf(event, "1").join(", ") || "none",
    Resources: refsOf(event, "4").join(", ") || "none",
  };
  const list = $("#detail-summary");
  list.replaceChildren();
  for (const [name, value] of Object.entries(facts)) {
    const dt = document.createElement("dt");
    dt.textContent = name;
    const dd = document.createElement("dd");
    dd.textContent = value;
    list.append(dt, dd);
  }
  $("#detail-json").textContent = JSON.stringify(event, null, 2);
}

async function load(url) {
  const ticket = ++state.loading; // an older search answering late must not overwrite a newer one
  try {
    const resp = await call(url);
    const bundle = await resp.json();
    if (ticket === state.loading) showEvents(bundle);
  } catch (err) {
    if (ticket === state.loading) say(err.message);
  }
}

async function chainStatus() {
  const el = $("#chain-status");
  try {
    const status = await (await call(api("audit/status"), "application/json")).json();
    const checkpoint = status.checkpoint
      ? `; last signed checkpoint at seq ${status.checkpoint.seq}, ${status.checkpoint.time}`
      : "; no signed checkpoint yet";
    el.textContent = status.ok
      ? `Chain verified up to seq ${status.verified_to}${checkpoint}`
      : `Chain check FAILED: ${status.problems.join("; ")}`;
    el.className = `status ${status.ok ? "ok" : "bad"}`;
  } catch (err) {
    el.textContent = `Chain status unavailable: ${err.message}`;
    el.className = "status bad";
  }
}

async function download(format) {
  try {
    const resp = await call(exportUrl(format), "*/*");
    const blob = await resp.blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `audit-export.${format === "bundle" ? "json" : format}`;
    document.body.appendChild(link);
    link.click();
    link.remove();
    say(`Downloaded ${link.download} (${blob.size} bytes).`);
  } catch (err) {
    say(err.message);
  }
}

function start() {
  $("#token").value = token();
  $("#use-token").addEventListener("click", () => {
    sessionStorage.setItem("auditToken", $("#token").value.trim());
    chainStatus();
    $("#filters").requestSubmit();
  });
  $("#filters").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.page = 0;
    state.first = searchUrl();
    load(state.first);
  });
  $("#next").addEventListener("click", () => {
    if (!state.next) return;
    state.page += 1;
    load(state.next);
  });
  $("#first").addEventListener("click", () => {
    state.page = 0;
    load(state.first);
  });
  for (const button of document.querySelectorAll("#download button")) {
    button.addEventListener("click", () => download(button.dataset.format));
  }
  if (token()) {
    chainStatus();
    $("#filters").requestSubmit();
  }
}

document.addEventListener("DOMContentLoaded", start);
