// #/jobs: the jobs, newest first, paged and filtered by status and type.
// Unfinished jobs on the page are followed live over server-sent events; the
// list itself is re-read every few seconds so new jobs appear.

import { listJobs } from "./api.js";
import { clear, h, idText, notice, pageHeader, relative, setTitle, statusBadge, timeEl } from "./dom.js";
import { watchJob } from "./job_stream.js";
import { ACTIVE, FINAL, JOB_TYPES, STATUSES, statusWord, typeWord } from "./statuses.js";

const PAGE_SIZES = [10, 20, 50, 100];
// Browsers open at most six HTTP/1.1 connections to one host, and each event
// stream holds one; beyond this many unfinished jobs, the rest of the page is
// kept current by re-reading the list.
const MAX_STREAMS = 4;
const POLL_MS = 4000;

function readState(query) {
  const status = query.get("status") || "";
  const jobType = query.get("type") || "";
  const size = Number(query.get("size"));
  const page = Math.max(1, Math.floor(Number(query.get("page")) || 1));
  return {
    status: STATUSES.includes(status) ? status : "",
    jobType: JOB_TYPES.includes(jobType) ? jobType : "",
    size: Number.isInteger(size) && size >= 1 && size <= 1000 ? size : 20,
    page,
  };
}

function stateHash(state) {
  const params = new URLSearchParams();
  if (state.status) params.set("status", state.status);
  if (state.jobType) params.set("type", state.jobType);
  if (state.size !== 20) params.set("size", String(state.size));
  if (state.page > 1) params.set("page", String(state.page));
  const search = params.toString();
  return `#/jobs${search ? `?${search}` : ""}`;
}

function select(id, label, value, options, onChange) {
  return h(
    "div.field.field--inline",
    {},
    h("label", { for: id }, label),
    h(
      "select",
      { id, name: id, onchange: (event) => onChange(event.target.value) },
      options.map(([optionValue, text]) => h("option", { value: optionValue, selected: optionValue === value }, text)),
    ),
  );
}

export async function render(root, ctx) {
  setTitle("Jobs");
  const state = readState(ctx.query);
  const rows = new Map(); // job id -> {tr, job}
  const streams = new Map(); // job id -> close()
  let loading = false;
  let lastLoad = null;

  const tbody = h("tbody");
  const table = h(
    "table.jobs-table",
    {},
    h("caption.visually-hidden", {}, "Jobs, newest first"),
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        ["Job", "Status", "Type", "Domain", "Created", "Updated"].map((name) => h("th", { scope: "col" }, name)),
      ),
    ),
    tbody,
  );
  const tableWrap = h("div.table-wrap", {}, table);
  const empty = h("div.empty", { hidden: true });
  const errorBox = h("div.error-slot");
  const liveLine = h("p.live-line", {});
  const pageInfo = h("span.pager__info", { "aria-live": "polite" });
  const prev = h("button.button", { type: "button", onclick: () => goTo(state.page - 1) }, h("span", { "aria-hidden": "true" }, "← "), "Newer");
  const next = h("button.button", { type: "button", onclick: () => goTo(state.page + 1) }, "Older", h("span", { "aria-hidden": "true" }, " →"));
  const pager = h("nav.pager", { "aria-label": "Pages of jobs" }, prev, pageInfo, next);

  const filters = h(
    "form.filters",
    { role: "search", "aria-label": "Filter jobs", onsubmit: (event) => event.preventDefault() },
    select("filter-status", "Status", state.status, [["", "Any status"], ...STATUSES.map((s) => [s, statusWord(s)])], (v) => {
      state.status = v;
      state.page = 1;
      reload();
    }),
    select("filter-type", "Job type", state.jobType, [["", "Any type"], ...JOB_TYPES.map((t) => [t, `${typeWord(t)} (${t})`])], (v) => {
      state.jobType = v;
      state.page = 1;
      reload();
    }),
    select("filter-size", "Per page", String(state.size), [...new Set([...PAGE_SIZES, state.size])].sort((a, b) => a - b).map((n) => [String(n), String(n)]), (v) => {
      state.size = Number(v);
      state.page = 1;
      reload();
    }),
    h("button.button", { type: "button", onclick: () => load() }, "Refresh"),
  );

  root.append(
    pageHeader("Jobs", h("a.button.button--primary", { href: "#/submit" }, "New job")),
    filters,
    errorBox,
    h("section.card.card--flush", { "aria-label": "Job list" }, liveLine, tableWrap, empty),
    pager,
  );

  function goTo(page) {
    state.page = Math.max(1, page);
    reload();
  }

  function reload() {
    // Filters live in the address (bookmarkable) without re-mounting the page.
    history.replaceState(null, "", stateHash(state));
    load();
  }

  function cell(label, ...children) {
    return h("td", { dataset: { label } }, ...children);
  }

  function fillRow(tr, job) {
    tr.dataset.status = job.status;
    const cells = tr.children;
    clear(cells[1]).append(statusBadge(job.status));
    clear(cells[5]).append(h("div", {}, timeEl(job.updated_at, { compact: true }), h("span.muted.small.block", {}, relative(job.updated_at))));
  }

  function buildRow(job) {
    const tr = h(
      "tr",
      { dataset: { jobId: job.id } },
      cell("Job", h("a.job-link", { href: `#/jobs/${encodeURIComponent(job.id)}`, "aria-label": `Job ${job.id}` }, idText(job.id))),
      cell("Status"),
      cell("Type", h("span", { title: job.job_type }, typeWord(job.job_type))),
      cell("Domain", job.domain_id ? idText(job.domain_id) : h("span.muted", {}, "—")),
      cell("Created", timeEl(job.created_at, { compact: true })),
      cell("Updated"),
    );
    fillRow(tr, job);
    return tr;
  }

  function showJob(job, { flash = false } = {}) {
    const row = rows.get(job.id);
    if (!row) return;
    // A list read that started before an event arrived must not undo it.
    if (Date.parse(job.updated_at) < Date.parse(row.job.updated_at)) return;
    const changed = row.job.status !== job.status || row.job.updated_at !== job.updated_at;
    row.job = job;
    if (!changed) return;
    fillRow(row.tr, job);
    if (flash) {
      row.tr.classList.remove("flash");
      void row.tr.offsetWidth; // restart the animation
      row.tr.classList.add("flash");
    }
  }

  function renderRows(jobs) {
    const next = jobs.map((job) => {
      const row = rows.get(job.id);
      if (row) {
        showJob(job);
        return row;
      }
      return { tr: buildRow(job), job };
    });
    const sameOrder =
      next.length === tbody.children.length && next.every((row, i) => tbody.children[i] === row.tr);
    rows.clear();
    for (const row of next) rows.set(row.job.id, row);
    if (!sameOrder) tbody.replaceChildren(...next.map((row) => row.tr));
  }

  function syncStreams() {
    // The unfinished jobs in view, busiest first, then newest.
    const wanted = [...rows.values()]
      .map((row) => row.job)
      .filter((job) => !FINAL.has(job.status))
      .sort((a, b) => Number(ACTIVE.has(b.status)) - Number(ACTIVE.has(a.status)))
      .slice(0, MAX_STREAMS)
      .map((job) => job.id);
    for (const [id, close] of streams) {
      if (!wanted.includes(id)) {
        close();
        streams.delete(id);
      }
    }
    for (const id of wanted) {
      if (streams.has(id)) continue;
      const close = watchJob(id, {
        onJob: (job) => {
          showJob(job, { flash: true });
          if (FINAL.has(job.status)) {
            streams.delete(id);
            markLive();
            syncStreams();
          }
        },
        onState: () => {},
      });
      streams.set(id, close);
    }
    markLive();
  }

  function markLive() {
    for (const [id, row] of rows) row.tr.dataset.live = streams.has(id) ? "true" : "false";
    const unfinished = [...rows.values()].filter((row) => !FINAL.has(row.job.status)).length;
    const parts = [];
    if (streams.size) parts.push(`Live: following ${streams.size} unfinished ${streams.size === 1 ? "job" : "jobs"} as they change`);
    else if (rows.size) parts.push("All jobs on this page are finished");
    if (unfinished > streams.size) parts.push(`${unfinished - streams.size} more refreshed every few seconds`);
    if (lastLoad) parts.push(`list read at ${lastLoad.toLocaleTimeString()}`);
    liveLine.textContent = parts.join(" · ");
    liveLine.dataset.live = streams.size ? "true" : "false";
  }

  async function load({ quiet = false } = {}) {
    if (loading) return;
    loading = true;
    const offset = (state.page - 1) * state.size;
    try {
      // One more than a page, to know whether there is an older page.
      const jobs = await listJobs({ limit: state.size + 1, offset, status: state.status, jobType: state.jobType });
      if (ctx.signal.aborted) return;
      clear(errorBox);
      lastLoad = new Date();
      const pageJobs = jobs.slice(0, state.size);
      renderRows(pageJobs);
      const filtered = state.status || state.jobType;
      empty.hidden = pageJobs.length > 0;
      tableWrap.hidden = pageJobs.length === 0;
      clear(empty).append(
        state.page > 1
          ? h("p", {}, "No jobs on this page. ", h("button.link", { type: "button", onclick: () => goTo(1) }, "Back to the newest jobs"))
          : filtered
            ? h("p", {}, "No jobs match these filters.")
            : h("p", {}, "No jobs yet. ", h("a", { href: "#/submit" }, "Submit the first one"), "."),
      );
      prev.disabled = state.page <= 1;
      next.disabled = jobs.length <= state.size;
      pager.hidden = prev.disabled && next.disabled;
      pageInfo.textContent = pageJobs.length
        ? `Page ${state.page} · jobs ${offset + 1}–${offset + pageJobs.length}`
        : `Page ${state.page}`;
      syncStreams();
    } catch (error) {
      if (ctx.signal.aborted) return;
      if (!quiet || !errorBox.firstChild) {
        clear(errorBox).append(notice("error", `Could not read the jobs: ${error.message}`));
      }
    } finally {
      loading = false;
    }
  }

  const timer = setInterval(() => {
    if (document.visibilityState === "visible") load({ quiet: true });
  }, POLL_MS);
  ctx.onCleanup(() => {
    clearInterval(timer);
    for (const close of streams.values()) close();
    streams.clear();
  });
  await load();
}
