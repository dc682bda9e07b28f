// #/submit: create a task_timing_v1 or vlm_only job. The node checks the
// query against the domain at once, and its refusal is shown in its words.
// #/submit?from=<id> starts from an existing job's type, domain, query and input.

import { createJob, getJob } from "./api.js";
import { clear, h, notice, pageHeader, setTitle } from "./dom.js";
import { DEFAULT_VLM_PROMPT, field, radioGroup, splitIds } from "./form.js";
import { typeWord } from "./statuses.js";

const DRAFT_KEY = "vlmnode.console.draft";

function loadDraft() {
  try {
    return JSON.parse(localStorage.getItem(DRAFT_KEY) || "{}") || {};
  } catch {
    return {};
  }
}

function saveDraft(draft) {
  try {
    localStorage.setItem(DRAFT_KEY, JSON.stringify(draft));
  } catch {
    /* private mode: nothing to remember */
  }
}

function draftFromJob(job) {
  const query = job.query || {};
  const input = job.input || {};
  return {
    job_type: job.job_type,
    domain_id: job.domain_id,
    ids: (query.ids || []).join("\n"),
    name: query.name || "",
    data_type: query.data_type || "",
    vlm_prompt: input.vlm_prompt || "",
    prompt: input.prompt || "",
    webhook_url: input.webhook_url || "",
  };
}

export async function render(root, ctx) {
  setTitle("New job");
  const from = ctx.query.get("from");
  const messages = h("div.error-slot");
  let draft = loadDraft();
  if (from) {
    try {
      draft = draftFromJob(await getJob(from));
      messages.append(notice("info", "Filled in from job ", h("code", {}, from), ". Change what you need and create a new job."));
    } catch (error) {
      messages.append(notice("error", `Could not read job ${from}: ${error.message}`));
    }
    if (ctx.signal.aborted) return;
  }
  let jobType = draft.job_type === "vlm_only" ? "vlm_only" : "task_timing_v1";

  const llmField = field({
    id: "llm-prompt",
    label: "LLM prompt",
    hint: "What the language model should find in the captioned timeline, e.g. when a task started and ended.",
    kind: "textarea",
    attrs: { rows: 3, value: draft.prompt || "" },
  });

  const typeGroup = radioGroup({
    name: "job-type",
    legend: "Job type",
    value: jobType,
    options: [
      ["task_timing_v1", typeWord("task_timing_v1"), "Caption each image, then ask the LLM when the task started and ended (task_timing_v1)."],
      ["vlm_only", typeWord("vlm_only"), "Caption each image with the vision model and return the captions (vlm_only)."],
    ],
    onChange: (value) => {
      jobType = value;
      llmField.hidden = value !== "task_timing_v1";
    },
  });
  llmField.hidden = jobType !== "task_timing_v1";

  const submitButton = h("button.button.button--primary", { type: "submit" }, "Create job");
  const form = h(
    "form.card.form",
    { novalidate: true, "aria-label": "New job", onsubmit: (event) => submit(event) },
    typeGroup,
    field({
      id: "domain-id",
      label: "Domain id",
      hint: "The posemesh domain that holds the photos (a UUID).",
      attrs: { type: "text", autocomplete: "off", spellcheck: "false", value: draft.domain_id || "", class: "mono" },
    }),
    h(
      "fieldset.group",
      {},
      h("legend", {}, "Images"),
      h("p.hint", {}, "Leave all three empty to take every image in the domain."),
      field({
        id: "image-ids",
        label: "Image ids",
        optional: true,
        hint: "One id per line, or separated by commas.",
        kind: "textarea",
        attrs: { rows: 3, spellcheck: "false", class: "mono", value: draft.ids || "" },
      }),
      h(
        "div.field-row",
        {},
        field({ id: "query-name", label: "Name", optional: true, hint: "Only the item with this exact name.", attrs: { type: "text", autocomplete: "off", value: draft.name || "" } }),
        field({ id: "query-data-type", label: "Data type", optional: true, hint: "e.g. jpg", attrs: { type: "text", autocomplete: "off", value: draft.data_type || "" } }),
      ),
    ),
    field({
      id: "vlm-prompt",
      label: "VLM prompt",
      hint: "What the vision model is asked about each image.",
      kind: "textarea",
      attrs: { rows: 2, value: draft.vlm_prompt || DEFAULT_VLM_PROMPT },
    }),
    llmField,
    field({
      id: "webhook-url",
      label: "Webhook URL",
      optional: true,
      hint: "Receives the result as a POST when the job ends.",
      attrs: { type: "url", autocomplete: "url", spellcheck: "false", placeholder: "https://example.com/hook", value: draft.webhook_url || "" },
    }),
    h(
      "details.more",
      {},
      h("summary", {}, "More options"),
      h(
        "div.field-row",
        {},
        field({ id: "priority", label: "Priority", optional: true, hint: "Higher runs first.", attrs: { type: "number", step: "1", inputmode: "numeric" } }),
        field({ id: "max-attempts", label: "Attempts", optional: true, hint: "Tries before it fails (node default when empty).", attrs: { type: "number", min: "1", step: "1", inputmode: "numeric" } }),
        field({ id: "idempotency-key", label: "Idempotency key", optional: true, hint: "The same key returns the same job.", attrs: { type: "text", autocomplete: "off" } }),
      ),
    ),
    messages,
    h("div.form-actions", {}, submitButton, h("a.button.button--quiet", { href: "#/jobs" }, "Back to jobs")),
  );

  root.append(pageHeader("New job"), h("p.lead", {}, "Caption a domain's photos and find when a task started and ended, or just caption them."), form);

  const value = (id) => form.querySelector(`#${id}`).value;

  function body() {
    const query = { ids: splitIds(value("image-ids")) };
    if (value("query-name").trim()) query.name = value("query-name").trim();
    if (value("query-data-type").trim()) query.data_type = value("query-data-type").trim();
    const input = { vlm_prompt: value("vlm-prompt") };
    if (jobType === "task_timing_v1") input.prompt = value("llm-prompt");
    if (value("webhook-url").trim()) input.webhook_url = value("webhook-url").trim();
    const request = { job_type: jobType, domain_id: value("domain-id").trim(), query, input };
    for (const [id, key] of [["priority", "priority"], ["max-attempts", "max_attempts"]]) {
      const text = value(id).trim();
      if (text) request[key] = Number(text);
    }
    if (value("idempotency-key").trim()) request.idempotency_key = value("idempotency-key").trim();
    return request;
  }

  async function submit(event) {
    event.preventDefault();
    const request = body();
    clear(messages);
    submitButton.disabled = true;
    submitButton.textContent = "Creating…";
    form.setAttribute("aria-busy", "true");
    try {
      const job = await createJob(request);
      saveDraft({
        job_type: request.job_type,
        domain_id: request.domain_id,
        vlm_prompt: request.input.vlm_prompt,
        prompt: request.input.prompt || draft.prompt || "",
        webhook_url: request.input.webhook_url || "",
      });
      if (!ctx.signal.aborted) window.location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
    } catch (error) {
      if (ctx.signal.aborted) return;
      messages.append(
        notice(
          "error",
          h("strong", {}, error.status >= 500 || error.status === 0 ? "The job could not be sent. " : "The node refused the job. "),
          h("span.error-text", {}, error.message),
        ),
      );
      messages.querySelector(".notice").setAttribute("tabindex", "-1");
      messages.querySelector(".notice").focus();
    } finally {
      submitButton.disabled = false;
      submitButton.textContent = "Create job";
      form.removeAttribute("aria-busy");
    }
  }
}
