// Warren console: local times, live refresh, confirmed actions with the
// session's CSRF token, batch actions with per-item refusals.
"use strict";
const csrf = document.querySelector('meta[name="csrf"]').content;

function localTimes(root) {
  for (const t of root.querySelectorAll("time[datetime]")) {
    const d = new Date(t.getAttribute("datetime"));
    if (isNaN(d)) continue;
    t.title = t.getAttribute("datetime").replace(/\.\d+Z$/, "Z") + " (UTC)";
    t.textContent = d.toLocaleString();
  }
}

function flash(lines, ok) {
  const f = document.getElementById("flash");
  const div = document.createElement("div");
  div.className = ok ? "ok" : "bad";
  div.textContent = lines;
  f.replaceChildren(div);
}

async function call(method, path, body) {
  const opts = { method, headers: { "x-csrf-token": csrf } };
  if (body !== undefined) {
    opts.headers["content-type"] = "application/json";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  let j = null;
  try { j = await r.json(); } catch (e) { j = null; }
  return { ok: r.ok, json: j };
}

// The enroll page's command, from the token in the URL's fragment.
function enrollCommand(root) {
  const pre = root.querySelector("[data-enroll-cmd]");
  const token = location.hash.slice(1);
  if (pre && token) pre.textContent = "warren enroll " + decodeURIComponent(token);
}

async function refresh() {
  const main = document.querySelector("main[data-live]");
  if (!main || document.hidden) return;
  // Not while a labels form is being filled in.
  const editing = main.querySelector("form[data-labels]");
  if (editing && [...editing.elements].some(e => e.value !== (e.defaultValue || ""))) return;
  const keep = new Set([...main.querySelectorAll("input[type=checkbox]:checked")].map(c => c.value));
  const r = await fetch(location.href, { headers: { "x-fragment": "1" } });
  if (!r.ok) return;
  main.innerHTML = await r.text();
  for (const c of main.querySelectorAll("input[type=checkbox]")) c.checked = keep.has(c.value);
  localTimes(main);
  enrollCommand(main);
}

document.addEventListener("click", async (ev) => {
  const b = ev.target.closest("[data-action]");
  if (b) {
    ev.preventDefault();
    if (b.dataset.confirm && !confirm(b.dataset.confirm)) return;
    const [method, path] = b.dataset.action.split(" ");
    const body = b.dataset.body ? JSON.parse(b.dataset.body) : undefined;
    const r = await call(method, path, body);
    if (r.ok) { flash((r.json && (r.json.message || r.json.token)) || "done", true); if (!b.dataset.stay) setTimeout(refresh, 10); }
    else flash((r.json && r.json.error) || "refused", false);
    return;
  }
  const batch = ev.target.closest("[data-batch]");
  if (batch) {
    ev.preventDefault();
    const items = [...document.querySelectorAll("input.pick:checked")].map(c => c.value);
    if (!items.length) { flash("select one or more rows first", false); return; }
    if (!confirm(batch.dataset.confirm + "\n\n" + items.join("\n"))) return;
    const [method, tpl] = batch.dataset.batch.split(" ");
    const refused = [];
    let done = 0;
    for (const it of items) {
      const body = batch.dataset.batchBody ? JSON.parse(batch.dataset.batchBody.replace("{item}", it)) : undefined;
      const r = await call(method, tpl.replace("{item}", it), body);
      if (r.ok) done++; else refused.push(it + ": " + ((r.json && r.json.error) || "refused"));
    }
    flash(done + " done" + (refused.length ? ", " + refused.length + " refused:\n" + refused.join("\n") : ""), !refused.length);
    refresh();
    return;
  }
  const copy = ev.target.closest("[data-copy]");
  if (copy) {
    const text = document.getElementById(copy.dataset.copy).textContent;
    navigator.clipboard.writeText(text).then(() => flash("copied", true), () => flash("copy failed: select and copy by hand", false));
  }
  const all = ev.target.closest("input.pick-all");
  if (all) for (const c of document.querySelectorAll("input.pick")) c.checked = all.checked;
});

document.addEventListener("submit", async (ev) => {
  const f = ev.target;
  if (f.dataset.labels) {
    ev.preventDefault();
    await saveLabels(f);
    return;
  }
  if (f.dataset.api) {
    ev.preventDefault();
    if (f.dataset.confirm && !confirm(f.dataset.confirm)) return;
    const [method, path] = f.dataset.api.split(" ");
    const body = {};
    for (const [k, v] of new FormData(f)) if (v !== "") body[k] = f.elements[k].type === "number" ? Number(v) : v;
    const r = await call(method, path, body);
    if (r.ok) {
      const j = r.json || {};
      if (j.token && f.dataset.enroll !== undefined) {
        // The token stays in the fragment: browsers never send it.
        location.href = "/enroll/" + encodeURIComponent(j.system) + "/" + encodeURIComponent(j.name) + "#" + j.token;
        return;
      } else flash(j.message || "done", true);
      f.reset();
      refresh();
    } else flash((r.json && r.json.error) || "refused", false);
    return;
  }
  if (f.classList.contains("export")) {
    ev.preventDefault();
    location.href = exportUrl(f);
    return;
  }
  if (f.classList.contains("range")) {
    for (const [loc, utc] of [["since_local", "since"], ["until_local", "until"]]) {
      const v = f.elements[loc] && f.elements[loc].value;
      f.elements[utc].value = v ? new Date(v).toISOString() : "";
      if (f.elements[loc]) f.elements[loc].disabled = true;
    }
    for (const el of f.elements) if (el.name && el.value === "" && !el.disabled) el.disabled = true;
  }
});

// The device page's labels form: {"set": {K: V}, "remove": [K], "reset": [K]}.
async function saveLabels(f) {
  const words = n => f.elements[n].value.split(/\s+/).filter(w => w);
  const set = {};
  for (const w of words("label_set")) {
    const i = w.indexOf("=");
    if (i < 0) { flash("label " + JSON.stringify(w) + ": expected KEY=VALUE", false); return; }
    set[w.slice(0, i)] = w.slice(i + 1);
  }
  const [method, path] = f.dataset.labels.split(" ");
  const r = await call(method, path, { set, remove: words("label_remove"), reset: words("label_reset") });
  if (!r.ok) { flash((r.json && r.json.error) || "refused", false); return; }
  const d = (r.json && r.json.data) || {};
  const shown = Object.entries(d.labels || {}).map(([k, v]) => k + "=" + v).join(" ") || "none";
  flash("admin labels: " + shown + "; hidden: " + ((d.hidden || []).join(" ") || "none"), true);
  f.reset();
  refresh();
}

// The CSV export of the log's filters, with the columns ticked.
function exportUrl(f) {
  const cols = [...f.querySelectorAll("input[name=col]:checked")].map(c => c.value);
  const q = new URLSearchParams();
  for (const el of f.querySelectorAll("input[type=hidden]")) if (el.value) q.set(el.name, el.value);
  if (cols.length) q.set("columns", cols.join(","));
  return "/api/v1/audit.csv?" + q.toString();
}

function rangeInputs() {
  const f = document.querySelector("form.range");
  if (!f) return;
  const pad = n => String(n).padStart(2, "0");
  for (const [loc, utc] of [["since_local", "since"], ["until_local", "until"]]) {
    const v = f.elements[utc].value;
    if (!v) continue;
    const d = new Date(v);
    f.elements[loc].value = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + "T" + pad(d.getHours()) + ":" + pad(d.getMinutes());
  }
}

localTimes(document);
enrollCommand(document);
rangeInputs();
setInterval(refresh, 2000);
