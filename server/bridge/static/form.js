// Form fields with labels and hints tied to their inputs.

import { h } from "./dom.js";

/**
 * A labelled field. kind: "input" (attrs.type), "textarea" or "select", or
 * `control`, an element built by the caller with the id (and its hint's id,
 * `<id>-hint`, in aria-describedby). `hint` is read out with the input
 * (aria-describedby); `after` goes below the control.
 */
export function field({ id, label, hint, kind = "input", optional = false, attrs = {}, children = [], control = null, after = [] }) {
  const hintId = hint ? `${id}-hint` : null;
  return h(
    "div.field",
    { dataset: { field: id } },
    h("label", { for: id }, label, optional ? h("span.optional", {}, " (optional)") : null),
    hint ? h("p.hint", { id: hintId }, hint) : null,
    control || h(kind, { id, name: id, "aria-describedby": hintId, ...attrs }, ...children),
    after,
  );
}

export function radioGroup({ name, legend, value, options, onChange }) {
  return h(
    "fieldset.choice-group",
    {},
    h("legend", {}, legend),
    options.map(([optionValue, title, description]) => {
      const id = `${name}-${optionValue}`;
      return h(
        "div.choice",
        {},
        h("input", {
          type: "radio",
          id,
          name,
          value: optionValue,
          checked: optionValue === value,
          "aria-describedby": description ? `${id}-desc` : null,
          onchange: () => onChange(optionValue),
        }),
        h(
          "label",
          { for: id },
          h("span.choice__title", {}, title),
          description ? h("span.choice__desc", { id: `${id}-desc` }, description) : null,
        ),
      );
    }),
  );
}

/** "a, b\nc d" -> ["a", "b", "c", "d"] */
export function splitIds(text) {
  return text
    .split(/[\s,;]+/)
    .map((part) => part.trim())
    .filter(Boolean);
}

export const DEFAULT_VLM_PROMPT = "Describe what you see in this image";
