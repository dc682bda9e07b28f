// A task_timing_v1 result as a picture: the captioned images on a time axis,
// the span the LLM chose between the detected start and end, and the same
// timeline as a list that reads well without the picture.

import { h, parseTime } from "./dom.js";

const TIME = new Intl.DateTimeFormat(undefined, { hour: "numeric", minute: "2-digit", second: "2-digit" });
const DATE_TIME = new Intl.DateTimeFormat(undefined, { month: "short", day: "numeric", hour: "numeric", minute: "2-digit", second: "2-digit" });

function duration(ms) {
  const seconds = Math.round(Math.abs(ms) / 1000);
  if (seconds < 60) return `${seconds} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return seconds % 60 ? `${minutes} min ${seconds % 60} s` : `${minutes} min`;
  const hours = Math.floor(minutes / 60);
  return minutes % 60 ? `${hours} h ${minutes % 60} min` : `${hours} h`;
}

function percent(value) {
  return `${Math.round(value * 1000) / 10}%`;
}

/** Labels for a row's place in the task: start, end, during or outside. */
function markOf(index, startIndex, endIndex) {
  if (index === startIndex && index === endIndex) return "start-end";
  if (index === startIndex) return "start";
  if (index === endIndex) return "end";
  if (startIndex >= 0 && endIndex >= 0 && index > startIndex && index < endIndex) return "during";
  return "outside";
}

const MARK_WORDS = { "start-end": "Start and end", start: "Start", end: "End", during: "During the task", outside: "" };

function moment(kind, point, row, format) {
  const title = kind === "start" ? "Start" : "End";
  if (!point) {
    return h(
      `div.moment.moment--${kind}`,
      { dataset: { moment: kind } },
      h("p.moment__label", {}, h("span.mark-icon", { "aria-hidden": "true", dataset: { mark: kind } }), title),
      h("p.moment__time.muted", {}, "Not found"),
      h("p.small.muted", {}, `The LLM found no ${kind} in the timeline.`),
    );
  }
  const confidence = typeof point.confidence === "number" ? `${Math.round(point.confidence * 100)}% confident` : "";
  return h(
    `div.moment.moment--${kind}`,
    { dataset: { moment: kind } },
    h("p.moment__label", {}, h("span.mark-icon", { "aria-hidden": "true", dataset: { mark: kind } }), title),
    h("p.moment__time", {}, h("time", { datetime: point.timestamp, title: point.timestamp }, format(point.timestamp))),
    h("p.small", {}, row ? row.name || row.image_id : point.image_id),
    confidence ? h("p.small.muted", {}, confidence) : null,
  );
}

export function renderTimeline(output) {
  const rows = Array.isArray(output.timeline) ? output.timeline : [];
  const task = output.task || {};
  const start = task.start || null;
  const end = task.end || null;
  const startIndex = start ? rows.findIndex((row) => row.image_id === start.image_id) : -1;
  const endIndex = end ? rows.findIndex((row) => row.image_id === end.image_id) : -1;

  const times = rows.map((row) => parseTime(row.timestamp)?.getTime() ?? NaN);
  const known = times.filter((t) => !Number.isNaN(t));
  const min = known.length ? Math.min(...known) : 0;
  const max = known.length ? Math.max(...known) : 0;
  const spansDays = known.length && new Date(min).toDateString() !== new Date(max).toDateString();
  const fmt = (value) => {
    const date = parseTime(value);
    return date ? (spansDays ? DATE_TIME : TIME).format(date) : String(value ?? "—");
  };
  // Place by time; when the times do not spread (or are unknown), by order.
  const position = (index) => {
    const t = times[index];
    if (max > min && !Number.isNaN(t)) return (t - min) / (max - min);
    return rows.length > 1 ? index / (rows.length - 1) : 0.5;
  };

  const summaryParts = [`${rows.length} captioned ${rows.length === 1 ? "image" : "images"}`];
  if (known.length) summaryParts.push(`from ${fmt(rows[times.indexOf(min)].timestamp)} to ${fmt(rows[times.indexOf(max)].timestamp)}`);
  if (start && end) summaryParts.push(`the task runs from ${fmt(start.timestamp)} to ${fmt(end.timestamp)}`);
  else if (start) summaryParts.push(`the task starts at ${fmt(start.timestamp)}; no end was found`);
  else if (end) summaryParts.push(`the task ends at ${fmt(end.timestamp)}; no start was found`);
  else summaryParts.push("no start or end was found");
  const summary = `${summaryParts.join(", ")}.`;

  // The axis.
  const axis = h("div.tl-axis", { role: "img", "aria-label": `Timeline: ${summary}` }, h("div.tl-track"));
  if (startIndex >= 0 || endIndex >= 0) {
    const a = position(startIndex >= 0 ? startIndex : 0);
    const b = position(endIndex >= 0 ? endIndex : rows.length - 1);
    axis.append(h("div.tl-span", { style: { "--from": percent(Math.min(a, b)), "--to": percent(Math.max(a, b)) } }));
  }
  rows.forEach((row, index) => {
    const mark = markOf(index, startIndex, endIndex);
    axis.append(
      h("span.tl-dot", {
        dataset: { mark },
        style: { "--pos": percent(position(index)) },
        title: `${fmt(row.timestamp)} · ${row.name || row.image_id}: ${row.caption || ""}`,
      }),
    );
  });
  const flag = (kind, index, text) =>
    h(`span.tl-flag.tl-flag--${kind}`, { dataset: { flag: kind }, style: { "--pos": percent(position(index)) } }, text);
  if (startIndex >= 0 && startIndex === endIndex) axis.append(flag("both", startIndex, "Start · End"));
  else {
    if (startIndex >= 0) axis.append(flag("start", startIndex, "Start"));
    if (endIndex >= 0) axis.append(flag("end", endIndex, "End"));
  }
  const scale = h("div.tl-scale", { "aria-hidden": "true" });
  if (known.length) {
    const steps = max > min ? 4 : 0;
    for (let i = 0; i <= steps; i += 1) {
      const t = steps ? min + ((max - min) * i) / steps : min;
      scale.append(h("span.tl-tick", { style: { "--pos": percent(steps ? i / steps : 0.5) } }, (spansDays ? DATE_TIME : TIME).format(new Date(t))));
    }
  }

  // The same, as a list.
  const events = h(
    "ol.tl-events",
    { "aria-label": "Captioned images in time order" },
    rows.map((row, index) => {
      const mark = markOf(index, startIndex, endIndex);
      return h(
        "li.tl-event",
        { dataset: { mark, imageId: row.image_id } },
        h("div.tl-event__time", {}, h("time", { datetime: row.timestamp, title: row.timestamp }, fmt(row.timestamp))),
        h(
          "div.tl-event__body",
          {},
          h(
            "p.tl-event__name",
            {},
            h("span", {}, row.name || row.image_id),
            MARK_WORDS[mark] ? h("span.tl-badge", { dataset: { mark } }, MARK_WORDS[mark]) : null,
          ),
          h("p.tl-event__caption", {}, row.caption || h("span.muted", {}, "No caption")),
          row.name ? h("p.tl-event__id", {}, h("code", {}, row.image_id)) : null,
        ),
      );
    }),
  );

  const startRow = startIndex >= 0 ? rows[startIndex] : null;
  const endRow = endIndex >= 0 ? rows[endIndex] : null;
  let length = null;
  if (start && end) {
    const a = parseTime(start.timestamp);
    const b = parseTime(end.timestamp);
    if (a && b) length = duration(b - a);
  }

  return h(
    "figure.timeline",
    {},
    h(
      "div.moments",
      {},
      moment("start", start, startRow, fmt),
      h(
        "div.moment.moment--length",
        {},
        h("p.moment__label", {}, "Duration"),
        h("p.moment__time", {}, length ?? "—"),
        h("p.small.muted", {}, start && end ? "between start and end" : "needs a start and an end"),
      ),
      moment("end", end, endRow, fmt),
    ),
    rows.length ? h("div.tl-chart", {}, axis, scale) : null,
    h("figcaption.visually-hidden", {}, summary),
    rows.length ? events : h("p.muted", {}, "The timeline is empty."),
  );
}

/** The LLM's reasoning: overall, and for the start and the end. */
export function renderReasoning(output) {
  const task = output.task || {};
  const items = [];
  if (task.reasoning) items.push(["Overall", task.reasoning]);
  if (task.start?.reasoning) items.push(["Start", task.start.reasoning]);
  if (task.end?.reasoning) items.push(["End", task.end.reasoning]);
  if (!items.length) return h("p.muted", {}, "The LLM gave no reasoning.");
  return h(
    "dl.reasoning",
    {},
    items.map(([term, text]) => h("div.reasoning__item", {}, h("dt", {}, term), h("dd", {}, text))),
  );
}
