// Small DOM helpers shared by the pages: element building, formatting, and
// a job status's badge.

import { ACTIVE, FINAL, statusHint, statusWord } from "./statuses.js";

/**
 * h("a.button", {href: "#/jobs"}, "Jobs") builds an element. The tag may carry
 * classes ("div.card.card--wide"). Attributes: `class`, `dataset`, `on<event>`
 * handlers, `style` as an object of properties, `hidden`/`disabled`/`checked`/`selected`/`required` booleans, anything
 * else as an attribute (null/undefined/false skip it). Children: nodes, strings,
 * numbers, arrays (flattened), null/false (skipped).
 */
export function h(tag, attrs = {}, ...children) {
  const [name, ...classes] = tag.split(".");
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = [el.className, value].filter(Boolean).join(" ");
    else if (key === "dataset") Object.assign(el.dataset, value);
    // Through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    else if (key === "style") for (const [prop, v] of Object.entries(value)) el.style.setProperty(prop, v);
    else if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (["hidden", "disabled", "checked", "selected", "required", "multiple", "open"].includes(key)) el[key] = Boolean(value);
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

export function append(parent, children) {
  for (const child of [children].flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return parent;
}

export function clear(el) {
  while (el.firstChild) el.firstChild.remove();
  return el;
}

// Statuses.

/** A status badge: the word, with a shape and colour that only repeat it. */
export function statusBadge(status, { hint = false } = {}) {
  const kind = FINAL.has(status) ? status : ACTIVE.has(status) ? "active" : status === "pending" ? "pending" : "other";
  return h(
    "span.status",
    { dataset: { status: status || "unknown", kind }, title: statusHint(status) || null },
    h("span.status__icon", { "aria-hidden": "true" }),
    h("span.status__word", {}, statusWord(status)),
    hint && statusHint(status) ? h("span.status__hint", {}, ` — ${statusHint(status)}`) : null,
  );
}

// Times.

const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "medium" });
const TIME = new Intl.DateTimeFormat(undefined, { timeStyle: "medium" });
const SHORT_TIME = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });

export function parseTime(value) {
  if (!value) return null;
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

export function formatDateTime(value) {
  const date = parseTime(value);
  return date ? DATE_TIME.format(date) : "—";
}

export function formatTime(value, { short = false } = {}) {
  const date = parseTime(value);
  return date ? (short ? SHORT_TIME : TIME).format(date) : "—";
}

const DAY_TIME = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit" });
const FULL_DAY_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** Today: the time; this year: day and time; before: the full date. */
export function formatCompact(value) {
  const date = parseTime(value);
  if (!date) return "—";
  const now = new Date();
  if (date.toDateString() === now.toDateString()) return TIME.format(date);
  if (date.getFullYear() === now.getFullYear()) return DAY_TIME.format(date);
  return FULL_DAY_TIME.format(date);
}

/** <time> with a readable local date and time, and the exact instant in the title. */
export function timeEl(value, { timeOnly = false, compact = false } = {}) {
  if (!value) return h("span.muted", {}, "—");
  const text = compact ? formatCompact(value) : timeOnly ? formatTime(value) : formatDateTime(value);
  return h("time", { datetime: value, title: `${formatDateTime(value)} (${value})` }, text);
}

export function relative(value) {
  const date = parseTime(value);
  if (!date) return "";
  const seconds = Math.round((Date.now() - date.getTime()) / 1000);
  if (Math.abs(seconds) < 45) return "just now";
  const minutes = Math.round(seconds / 60);
  if (Math.abs(minutes) < 60) return `${minutes} min ago`;
  const hours = Math.round(minutes / 60);
  if (Math.abs(hours) < 24) return `${hours} h ago`;
  return `${Math.round(hours / 24)} d ago`;
}

// Bits of text.

/** A notice box; kind: "error" (role=alert), "info" or "success" (role=status). */
export function notice(kind, ...children) {
  return h(`div.notice.notice--${kind}`, { role: kind === "error" ? "alert" : "status" }, ...children);
}

export function pageHeader(title, ...extra) {
  return h("div.page-header", {}, h("h1", { tabindex: "-1" }, title), ...extra);
}

export function setTitle(text) {
  document.title = text ? `${text} · VLM Node` : "VLM Node";
}

export function json(value) {
  return JSON.stringify(value, null, 2);
}

/** A definition list from [term, value] pairs; values may be nodes or text. */
export function dl(pairs, className = "facts") {
  return h(
    `dl.${className}`,
    {},
    pairs.filter(Boolean).map(([term, value]) => h("div.facts__row", {}, h("dt", {}, term), h("dd", {}, value))),
  );
}

export function idText(id) {
  return h("code.id", { title: id }, id);
}
