// The operator page (/ops): renders the panels from GET /ops/api/stream (SSE, one "snapshot"
// event every few seconds) and a job's timeline from GET /ops/api/jobs/{id}/events.
// Same-origin requests only: the sign-in cookie goes with them. Text goes in with textContent.
"use strict";

const JOB_EVENTS = [
  "accepted", "queued", "position", "scheduled", "started", "step", "generated", "moderated",
  "delivered", "failed", "retrying", "rejected", "cancelled", "cancelling", "pausing", "paused",
  "imagegen.generation.wait_estimated", "imagegen.assignment.revoked",
];
const TERMINAL = new Set(["delivered", "failed", "cancelled", "rejected"]);
const LABELS = {
  "imagegen.generation.wait_estimated": "wait estimated",
  "imagegen.assignment.revoked": "assignment revoked",
};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function table(headers, rows) {
  return el("table", {}, el("thead", {}, el("tr", {}, headers.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows));
}

const dash = (v) => (v === null || v === undefined ? "–" : v);
const secs = (v) => (v === null || v === undefined ? "–" : `${Number(v).toFixed(1)} s`);
const mib = (b) => (b === null || b === undefined ? "–" : `${(b / 2 ** 20).toFixed(0)} MiB`);
const when = (iso) => (iso ? new Date(iso).toLocaleTimeString() : "–");
const ago = (s) => {
  if (s === null || s === undefined) return "–";
  if (s < 120) return `${Number(s).toFixed(1)} s`;
  if (s < 7200) return `${(s / 60).toFixed(0)} min`;
  return `${(s / 3600).toFixed(1)} h`;
};

function jobLink(id) {
  if (!id) return "–";
  return el("a", { class: "job mono", title: "show its timeline", onclick: () => showJob(id) },
    id.slice(0, 8));
}

function setPanel(name, error, body) {
  const panel = document.getElementById(name);
  const err = panel.querySelector(".panel-error");
  err.hidden = !error;
  err.textContent = error || "";
  const target = panel.querySelector(".body");
  target.replaceChildren(...(body ? [body] : []));
}

function renderQueues(q) {
  const errors = [q.error, q.projection_error].filter(Boolean).join("; ");
  const rows = q.tiers.map((t) => el("tr", { "data-tier": t.tier },
    el("td", {}, t.tier), el("td", { class: "num" }, dash(t.queued)),
    el("td", { class: "num" }, dash(t.running)), el("td", { class: "num" }, t.waiting),
    el("td", { class: "num" }, secs(t.oldest_wait_s)),
    el("td", { class: "num" }, secs(t.next_eta_s)), el("td", { class: "num" }, secs(t.last_eta_s))));
  const parts = [table(["tier", "queued", "running", "waiting", "oldest wait", "next ETA",
    "last ETA"], rows)];
  if (q.workers) {
    parts.push(el("p", { class: "muted" },
      `scheduler sees ${q.workers.length} worker(s), idle: ${q.idle_workers.join(", ") || "none"}`));
  }
  if (q.jobs.length) {
    parts.push(table(["job", "tier", "user", "status", "#", "waited", "ETA"], q.jobs.map((j) =>
      el("tr", {}, el("td", {}, jobLink(j.job_id)), el("td", {}, j.tier), el("td", {}, j.user_id),
        el("td", {}, j.status), el("td", { class: "num" }, j.position),
        el("td", { class: "num" }, secs(j.waited_s)), el("td", { class: "num" }, secs(j.eta_s))))));
  }
  setPanel("queues", errors, el("div", {}, parts));
}

function bar(pct) {
  const fill = el("span", {});
  fill.style.width = `${pct}%`; // CSSOM, not a style attribute: the page's CSP has no inline styles
  return el("span", { class: "bar" }, fill);
}

function renderFleet(f) {
  if (!f.workers.length) {
    setPanel("fleet", f.error, f.error ? null : el("p", { class: "muted" }, "no workers"));
    return;
  }
  const rows = f.workers.map((w) => {
    const used = w.memory_used_bytes, total = w.memory_total_bytes;
    const pct = total ? Math.min(100, (100 * used) / total) : 0;
    const jobs = [w.running_job_id, ...(w.in_flight || []).map((x) => x.job_id || x)]
      .filter((x, i, all) => x && typeof x === "string" && all.indexOf(x) === i);
    return el("tr", { "data-worker": w.worker_id },
      el("td", { class: "mono" }, w.worker_id),
      el("td", { class: `state-${w.state}` }, w.state),
      el("td", {}, (w.models || []).map((m) => el("span", { class: "tag", title: `${m.kind}, ${mib(m.bytes)}` }, m.model_id))),
      el("td", {}, (w.adapters || []).length
        ? w.adapters.map((a) => el("span", { class: "tag" }, a.adapter_id || a.model_id || JSON.stringify(a)))
        : el("span", { class: "muted" }, "none")),
      el("td", {}, bar(pct), `${mib(used)} / ${mib(total)}`),
      el("td", {}, jobs.length ? jobs.map(jobLink) : el("span", { class: "muted" }, "idle")),
      el("td", { class: "num" }, ago(w.last_seen_s_ago)));
  });
  setPanel("fleet", f.error, table(["worker", "state", "models", "adapters", "memory",
    "in flight", "last seen"], rows));
}

function renderFailures(f) {
  if (!f.jobs.length) {
    setPanel("failures", f.error, f.error ? null : el("p", { class: "muted" }, "no failed jobs"));
    return;
  }
  setPanel("failures", f.error, table(["when", "job", "user", "tier", "reason", "message"],
    f.jobs.map((j) => el("tr", { "data-job": j.job_id }, el("td", {}, when(j.at)),
      el("td", {}, jobLink(j.job_id)), el("td", {}, j.user_id), el("td", {}, j.tier),
      el("td", { class: "mono" }, dash(j.reason)),
      el("td", { title: j.message || "" }, dash((j.message || "").split("\n")[0].slice(0, 160) || null))))));
}

async function redrive(id) {
  const status = document.querySelector("#dlq .dlq-status");
  status.hidden = false;
  status.textContent = `redriving ${id}…`;
  const r = await fetch(`/ops/api/dlq/${encodeURIComponent(id)}/redrive`,
    { method: "POST", credentials: "same-origin" });
  let body = {};
  try { body = await r.json(); } catch (e) { body = {}; }
  status.textContent = r.ok ? `redriven: ${id}` : `HTTP ${r.status}: ${body.detail || r.statusText}`;
}

function renderDlq(d) {
  const head = el("p", {}, `records held: ${dash(d.total)}`);
  if (!d.letters.length) {
    setPanel("dlq", d.error, d.error ? null : el("div", {}, head,
      el("p", { class: "muted" }, "no dead letters")));
    return;
  }
  const state = (x) => {
    if (x.redriven === true) {
      const again = (x.failed_again_as || []).length ? `, failed again` : "";
      return `redriven${again}`;
    }
    return x.redriven === false ? "dead" : "–";
  };
  setPanel("dlq", d.error, el("div", {}, head, table(["when", "letter", "from", "group", "job",
    "error", "state", ""],
    d.letters.map((x) => el("tr", { "data-letter": x.id }, el("td", {}, when(x.at)),
      el("td", { class: "mono", title: x.id }, x.id.slice(0, 8)),
      el("td", { class: "mono" }, `${x.source_topic}[${x.source_partition}]@${x.source_offset}`),
      el("td", { class: "mono" }, dash(x.consumer_group)),
      el("td", {}, jobLink(x.job_id)),
      el("td", { class: "mono clip", title: x.error }, x.error || ""),
      el("td", {}, state(x)),
      el("td", {}, el("button", { class: "redrive", onclick: () => redrive(x.id) }, "Redrive")))))));
}

function render(snap) {
  renderQueues(snap.queues);
  renderFleet(snap.fleet);
  renderFailures(snap.failures);
  renderDlq(snap.dlq);
  const live = document.getElementById("live");
  live.className = "live on";
  live.textContent = `live · ${when(snap.at)}`;
}

function connect() {
  const source = new EventSource("/ops/api/stream");
  source.addEventListener("snapshot", (e) => render(JSON.parse(e.data)));
  source.addEventListener("signed_out", () => { source.close(); location.reload(); });
  source.onerror = () => {
    const live = document.getElementById("live");
    live.className = "live off";
    live.textContent = "disconnected, retrying";
    if (source.readyState === EventSource.CLOSED) setTimeout(connect, 3000);
  };
}

// ---- a job's timeline ----------------------------------------------------------------------
let timeline = null;

async function showJob(id) {
  document.getElementById("job-id").value = id;
  if (timeline) timeline.close();
  const body = el("div", {});
  const head = el("p", { class: "job-head" }, `job ${id}: loading…`);
  const previews = el("div", { class: "images preview-strip", id: "previews" });
  const images = el("div", { class: "images", id: "images" });
  const rows = el("tbody", {});
  body.append(head, previews, images, el("table", { id: "events" },
    el("thead", {}, el("tr", {}, el("th", {}, "at"), el("th", {}, "event"),
      el("th", {}, "details"))), rows));
  setPanel("timeline", null, body);
  document.getElementById("timeline").scrollIntoView({ behavior: "smooth", block: "start" });
  const r = await fetch(`/ops/api/jobs/${encodeURIComponent(id)}`, { credentials: "same-origin" });
  const job = await r.json().catch(() => ({}));
  if (!r.ok) {
    setPanel("timeline", `HTTP ${r.status}: ${job.detail || r.statusText}`, null);
    return;
  }
  const status = el("span", { id: "job-status", class: `status-${job.status}` }, job.status);
  const times = Object.fromEntries((job.timeline || []).map((t) => [String(t.seq), t.at]));
  head.replaceChildren(`job `, el("code", {}, id), ` of ${job.user_id}, ${job.tier},`
    + ` model ${dash(job.model)}: `, status);
  const source = new EventSource(`/ops/api/jobs/${encodeURIComponent(id)}/events`);
  timeline = source;
  for (const name of JOB_EVENTS) {
    source.addEventListener(name, (e) => {
      const data = e.data ? JSON.parse(e.data) : {};
      const details = [];
      if (name === "step") {
        details.push(`${data.step}/${data.total_steps}`);
        if (data.preview_png_b64) {
          previews.append(el("img", { src: `data:image/png;base64,${data.preview_png_b64}`,
            alt: `preview at step ${data.step}`, title: `step ${data.step}` }));
        }
      } else if (name === "delivered") {
        for (const img of data.images || []) {
          images.append(el("figure", {}, el("img", { src: img.url, alt: `image ${img.index}`,
            class: "delivered" }), el("figcaption", {}, `image ${img.index}`)));
        }
        details.push(`${(data.images || []).length} image(s)`);
      } else if (name === "failed" || name === "retrying") {
        details.push(`${data.reason}: ${data.message}`);
      } else if (name === "rejected") {
        details.push((data.categories || []).join(", "));
      } else if (name === "position") {
        details.push(`position ${data.position}`);
      }
      const at = times[e.lastEventId];  // when it happened; else (live) when it arrived
      rows.append(el("tr", { "data-event": name }, el("td", {}, at ? when(at)
        : new Date().toLocaleTimeString()),
        el("td", { class: "mono" }, LABELS[name] || name), el("td", {}, details.join(" "))));
      if (name !== "position" && !name.includes(".")) {
        const shown = name === "step" ? "running" : name;
        status.textContent = shown;
        status.className = `status-${shown}`;
      }
      if (TERMINAL.has(name)) source.close();
    });
  }
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED) rows.append(el("tr", {},
      el("td", {}, new Date().toLocaleTimeString()), el("td", {}, "stream closed"), el("td", {})));
  };
}

document.getElementById("job-form").addEventListener("submit", (e) => {
  e.preventDefault();
  showJob(document.getElementById("job-id").value.trim());
});
document.getElementById("timeline").querySelector(".body").textContent =
  "enter a job id, or click one in another panel";
connect();
