// #/jobs/<id>: one job. Its input, its status history (the changes this page
// saw over server-sent events, plus when it was created and last updated), its
// error, its result (a timeline picture for task_timing_v1, the captions for
// vlm_only), the raw JSON, and retry (with edited input) and cancel, enabled
// only when the API allows them.

import { cancelJob, getJob, retryJob } from "./api.js";
import { clear, dl, h, idText, json, notice, pageHeader, setTitle, statusBadge, timeEl } from "./dom.js";
import { DEFAULT_VLM_PROMPT, field } from "./form.js";
import { watchJob } from "./job_stream.js";
import { CANCELLABLE, FINAL, RETRYABLE, statusHint, statusWord, typeWord } from "./statuses.js";
import { renderReasoning, renderTimeline } from "./timeline.js";

const HISTORY_KEY = (id) => `vlmnode.console.history.${id}`;

function loadHistory(id) {
  try {
    const value = JSON.parse(sessionStorage.getItem(HISTORY_KEY(id)) || "[]");
    return Array.isArray(value) ? value : [];
  } catch {
    return [];
  }
}

function saveHistory(id, history) {
  try {
    sessionStorage.setItem(HISTORY_KEY(id), JSON.stringify(history.slice(-100)));
  } catch {
    /* storage full or disabled: the history lives as long as the page */
  }
}

function section(title, ...children) {
  const id = `section-${title.toLowerCase().replace(/[^a-z]+/g, "-")}`;
  return h("section.card", { "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

function text(value) {
  return value ? h("span.prewrap", {}, value) : h("span.muted", {}, "—");
}

function queryText(query) {
  if (!query) return "—";
  const parts = [];
  const ids = query.ids || [];
  parts.push(ids.length ? `${ids.length} image ${ids.length === 1 ? "id" : "ids"}` : "all images in the domain");
  if (query.name) parts.push(`name “${query.name}”`);
  if (query.data_type) parts.push(`data type “${query.data_type}”`);
  return parts.join(", ");
}

export async function render(root, ctx) {
  const id = ctx.id;
  setTitle(`Job ${id.slice(0, 8)}`);
  let job;
  try {
    job = await getJob(id);
  } catch (error) {
    if (ctx.signal.aborted) return;
    root.append(
      h("p.back", {}, h("a", { href: "#/jobs" }, h("span", { "aria-hidden": "true" }, "← "), "All jobs")),
      pageHeader("Job not available"),
      notice("error", error.status === 404 ? `No such job: ${error.message}` : `Could not read the job: ${error.message}`),
    );
    return;
  }
  if (ctx.signal.aborted) return;

  let history = loadHistory(id);
  let stopWatching = null;
  let shownOutput = null;

  // The frame of the page, filled by update().
  const statusSlot = h("div.job-status");
  const liveLine = h("p.live-line", { "aria-live": "polite" });
  const retryButton = h("button.button", { type: "button", "aria-expanded": "false", "aria-controls": "retry-panel", onclick: () => toggleRetry() }, "Retry…");
  const cancelButton = h("button.button.button--danger", { type: "button", onclick: () => cancel() }, "Cancel job");
  const actionHint = h("p.actions__hint", { id: "actions-hint" });
  retryButton.setAttribute("aria-describedby", "actions-hint");
  cancelButton.setAttribute("aria-describedby", "actions-hint");
  const actionMessages = h("div.error-slot");
  const retryPanel = h("div.retry-panel", { id: "retry-panel", hidden: true });
  const details = h("div");
  const inputSlot = h("div");
  const historyList = h("ol.history");
  const errorSection = h("div");
  const resultSlot = h("div");
  const rawPre = h("pre.raw__json", { tabindex: "0" });
  const raw = h("details.raw", {}, h("summary", {}, "Raw JSON"), rawPre);

  root.append(
    h("p.back", {}, h("a", { href: "#/jobs" }, h("span", { "aria-hidden": "true" }, "← "), "All jobs")),
    pageHeader(h("span", {}, "Job ", h("code.id.id--heading", {}, id))),
    h(
      "div.job-top",
      {},
      statusSlot,
      h(
        "div.actions",
        { role: "group", "aria-label": "Job actions" },
        retryButton,
        cancelButton,
        h("a.button.button--quiet", { href: `#/submit?from=${encodeURIComponent(id)}` }, "Copy to a new job"),
      ),
    ),
    h("div.job-notes", {}, liveLine, actionHint),
    actionMessages,
    retryPanel,
    errorSection,
    h(
      "div.job-grid",
      {},
      h("div.job-grid__main", {}, section("Result", resultSlot, raw)),
      h(
        "div.job-grid__side",
        {},
        section("Details", details),
        section("Input", inputSlot),
        section("Status history", historyList, h("p.hint", {}, "Changes seen while this page was open, with when the job was created and last updated.")),
      ),
    ),
  );

  function record(next) {
    const last = history[history.length - 1];
    if (last && last.kind === "status" && last.status === next.status && last.at === next.updated_at) return;
    if (last && last.kind === "status" && last.status === next.status) {
      last.at = next.updated_at;
    } else {
      history.push({ kind: "status", status: next.status, at: next.updated_at });
    }
    saveHistory(id, history);
  }

  function renderHistory() {
    const items = [
      h("li.history__item", { dataset: { kind: "created" } }, h("span.history__what", {}, "Created"), timeEl(job.created_at)),
    ];
    for (const entry of history) {
      if (entry.kind === "retry") {
        items.push(h("li.history__item", { dataset: { kind: "retry" } }, h("span.history__what", {}, "Retried from this page"), timeEl(entry.at, { timeOnly: true })));
      } else {
        items.push(h("li.history__item", { dataset: { kind: "status", status: entry.status } }, h("span.history__what", {}, statusBadge(entry.status)), timeEl(entry.at, { timeOnly: true })));
      }
    }
    items.push(h("li.history__item.history__item--updated", { dataset: { kind: "updated" } }, h("span.history__what", {}, "Last updated"), timeEl(job.updated_at, { timeOnly: true })));
    historyList.replaceChildren(...items);
  }

  function renderResult() {
    const key = JSON.stringify([job.status, job.output]);
    if (key === shownOutput) return;
    shownOutput = key;
    clear(resultSlot);
    const output = job.output;
    if (!output) {
      const waiting = FINAL.has(job.status)
        ? job.status === "completed"
          ? "The job completed without an output."
          : `The job ${statusWord(job.status).toLowerCase()} before it had a result.`
        : "The result appears here when the job completes.";
      resultSlot.append(h("p.muted.result-empty", {}, waiting));
      return;
    }
    if (typeof output.temporal_output === "string" && output.temporal_output) {
      resultSlot.append(h("h3", {}, "The answer"), h("p.answer", {}, output.temporal_output));
    }
    if (Array.isArray(output.timeline)) {  // task_timing_v1 (a job's input.job_type may have asked for vlm_only)
      resultSlot.append(
        renderTimeline(output),
        h("h3", {}, "The LLM's reasoning"),
        renderReasoning(output),
      );
    }
    if (Array.isArray(output.responses)) {
      resultSlot.append(
        h("p.small.muted", {}, `${output.responses.length} ${output.responses.length === 1 ? "caption" : "captions"}, in time order.`),
        h(
          "ol.responses",
          { "aria-label": "Captions" },
          output.responses.map((item) =>
            h(
              "li.response",
              {},
              h("div.response__meta", {}, timeEl(item.taken_at || item.timestamp), h("code.id", { title: item.image_id }, item.image_id)),
              h("p.response__text", {}, item.response || h("span.muted", {}, "No caption")),
            ),
          ),
        ),
      );
    }
    const skipped = Array.isArray(output.skipped) ? output.skipped : [];
    if (skipped.length) {
      resultSlot.append(
        h("h3", {}, "Images that could not be read"),
        h(
          "ul.skipped",
          {},
          skipped.map((item) => h("li", {}, h("strong", {}, item.name || item.image_id), ": ", item.reason || "unreadable")),
        ),
      );
    }
  }

  function update(next) {
    job = next;
    setTitle(`Job ${id.slice(0, 8)} · ${statusWord(job.status)}`);
    clear(statusSlot).append(statusBadge(job.status, { hint: true }));
    statusSlot.dataset.status = job.status;

    const canRetry = RETRYABLE.has(job.status);
    const canCancel = CANCELLABLE.has(job.status);
    retryButton.disabled = !canRetry;
    cancelButton.disabled = !canCancel;
    if (!canRetry && !retryPanel.hidden) toggleRetry(false);
    actionHint.textContent = canRetry
      ? "Finished: it can be retried, with the same or an edited input."
      : canCancel
        ? "It can be cancelled until it finishes, and retried after."
        : `While it is ${statusWord(job.status).toLowerCase()}, it can be neither retried nor cancelled.`;

    details.replaceChildren(
      dl([
        ["Status", h("span", {}, statusWord(job.status), statusHint(job.status) ? h("span.muted", {}, ` — ${statusHint(job.status)}`) : null)],
        ["Type", h("span", {}, typeWord(job.job_type), " ", h("code.muted", {}, job.job_type))],
        ["Domain", job.domain_id ? idText(job.domain_id) : "—"],
        ["Images", queryText(job.query)],
        ["Attempts", `${job.attempts} of ${job.max_attempts}`],
        ["Priority", String(job.priority)],
        ["Created", timeEl(job.created_at)],
        ["Updated", timeEl(job.updated_at)],
      ]),
    );
    const input = job.input || {};
    inputSlot.replaceChildren(
      dl([
        ["VLM prompt", text(input.vlm_prompt)],
        job.job_type === "task_timing_v1" || input.prompt ? ["LLM prompt", text(input.prompt)] : null,
        ["Webhook", input.webhook_url ? h("span.break", {}, input.webhook_url) : h("span.muted", {}, "none")],
        (job.query?.ids || []).length
          ? ["Image ids", h("ul.id-list", {}, job.query.ids.map((imageId) => h("li", {}, h("code", {}, imageId))))]
          : null,
      ]),
    );

    clear(errorSection);
    if (job.error) {
      errorSection.append(
        h(
          "section.card.card--error",
          { "aria-labelledby": "section-error" },
          h("h2", { id: "section-error" }, "Error"),
          h("p.error-message", {}, job.error.message || "No message"),
          job.error.code ? h("p.small.muted", {}, "Code ", h("code", {}, job.error.reason ? `${job.error.reason} (${job.error.code})` : job.error.code)) : null,
        ),
      );
    }
    record(job);
    renderHistory();
    renderResult();
    rawPre.textContent = json(job);
  }

  function follow() {
    if (stopWatching) stopWatching();
    stopWatching = null;
    if (FINAL.has(job.status)) {
      liveLine.hidden = true;
      return;
    }
    liveLine.hidden = false;
    liveLine.textContent = "Live: this page follows the job as it changes.";
    liveLine.dataset.live = "true";
    stopWatching = watchJob(id, {
      onJob: (next) => {
        if (ctx.signal.aborted) return;
        update(next);
      },
      onState: (state, message) => {
        if (ctx.signal.aborted) return;
        if (state === "live") {
          liveLine.textContent = "Live: this page follows the job as it changes.";
          liveLine.dataset.live = "true";
        } else if (state === "closed") {
          liveLine.hidden = true;
          stopWatching = null;
        } else if (state === "reconnecting") {
          liveLine.textContent = "Connection to the node lost; reconnecting…";
          liveLine.dataset.live = "false";
        } else if (state === "error") {
          liveLine.textContent = `Live updates: ${message}`;
          liveLine.dataset.live = "false";
        }
      },
    });
  }
  ctx.onCleanup(() => stopWatching && stopWatching());

  // Retry with the same or an edited input.
  function toggleRetry(open = retryPanel.hidden) {
    retryButton.setAttribute("aria-expanded", String(open));
    if (!open) {
      retryPanel.hidden = true;
      clear(retryPanel);
      return;
    }
    const input = job.input || {};
    const messages = h("div.error-slot");
    const submit = h("button.button.button--primary", { type: "submit" }, "Retry job");
    const form = h(
      "form.card.form",
      {
        "aria-labelledby": "retry-title",
        novalidate: true,
        onsubmit: async (event) => {
          event.preventDefault();
          const value = (fieldId) => form.querySelector(`#${fieldId}`).value;
          const body = { vlm_prompt: value("retry-vlm-prompt") };
          if (job.job_type === "task_timing_v1") body.prompt = value("retry-llm-prompt");
          else if (input.prompt) body.prompt = input.prompt;
          if (value("retry-webhook-url").trim()) body.webhook_url = value("retry-webhook-url").trim();
          clear(messages);
          submit.disabled = true;
          submit.textContent = "Retrying…";
          try {
            const retried = await retryJob(id, { job_type: job.job_type, input: body });
            if (ctx.signal.aborted) return;
            history.push({ kind: "retry", at: new Date().toISOString() });
            saveHistory(id, history);
            toggleRetry(false);
            update(retried);
            follow();
            clear(actionMessages).append(notice("success", "Retried: the job is queued again."));
            retryButton.focus();
          } catch (error) {
            if (ctx.signal.aborted) return;
            messages.append(notice("error", `The node refused the retry: ${error.message}`));
          } finally {
            submit.disabled = false;
            submit.textContent = "Retry job";
          }
        },
      },
      h("h2", { id: "retry-title" }, "Retry with this input"),
      h("p.hint", {}, "The job keeps its id, domain and images; edit the input if you like."),
      field({ id: "retry-vlm-prompt", label: "VLM prompt", kind: "textarea", attrs: { rows: 2, value: input.vlm_prompt || DEFAULT_VLM_PROMPT } }),
      job.job_type === "task_timing_v1"
        ? field({ id: "retry-llm-prompt", label: "LLM prompt", kind: "textarea", attrs: { rows: 3, value: input.prompt || "" } })
        : null,
      field({ id: "retry-webhook-url", label: "Webhook URL", optional: true, attrs: { type: "url", value: input.webhook_url || "", spellcheck: "false" } }),
      messages,
      h(
        "div.form-actions",
        {},
        submit,
        h("button.button.button--quiet", { type: "button", onclick: () => { toggleRetry(false); retryButton.focus(); } }, "Close"),
      ),
    );
    retryPanel.replaceChildren(form);
    retryPanel.hidden = false;
    form.querySelector("textarea, input").focus();
  }

  async function cancel() {
    clear(actionMessages);
    cancelButton.disabled = true;
    try {
      const cancelled = await cancelJob(id);
      if (ctx.signal.aborted) return;
      update(cancelled);
      follow();
      const done = notice("success", cancelled.status === "cancelled" ? "The job was cancelled." : "Cancelling: the worker is stopping the job.");
      done.setAttribute("tabindex", "-1");
      actionMessages.append(done);
      done.focus(); // the button that had focus is now disabled
    } catch (error) {
      if (ctx.signal.aborted) return;
      actionMessages.append(notice("error", `The node refused to cancel: ${error.message}`));
      update(job);
    }
  }

  update(job);
  follow();
}
