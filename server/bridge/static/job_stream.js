// One job followed over server-sent events (GET /api/v1/jobs/{id}/events,
// which rides on WatchJob): `event: job` with the job as JSON, first as it is
// now and then at every change of status, the stream ending after a final
// one; `event: error` with {"error": "..."} when the node's watch fails, after
// which the browser reconnects by itself.

import { jobEvents } from "./paths.js";
import { FINAL } from "./statuses.js";
import { withToken } from "./token.js";

/** The job in a `job` event's data, or null when it is not one. */
export function readJobEvent(data) {
  let job;
  try {
    job = JSON.parse(data);
  } catch {
    return null;
  }
  return job && typeof job === "object" && typeof job.status === "string" ? job : null;
}

/** The words of an `error` event's data: its "error", else the text as sent. */
export function readErrorEvent(data) {
  try {
    const body = JSON.parse(data);
    if (body && typeof body.error === "string" && body.error) return body.error;
  } catch {
    /* not JSON: the raw text */
  }
  return data;
}

/**
 * onJob(job) for the job as it is now and at every change of status; the
 * stream is closed after a final status. onState(state, message) reports
 * "live", "reconnecting", "error" and "closed". Returns a function that
 * stops following.
 */
export function watchJob(id, { onJob, onState = () => {} }) {
  // EventSource cannot set headers: the token rides in the query.
  const source = new EventSource(withToken(jobEvents(id)));
  let closed = false;
  const close = () => {
    if (!closed) {
      closed = true;
      source.close();
    }
  };
  source.addEventListener("open", () => onState("live"));
  source.addEventListener("job", (event) => {
    const job = readJobEvent(event.data);
    if (!job) return;
    onJob(job);
    if (FINAL.has(job.status)) {
      close();
      onState("closed");
    }
  });
  source.addEventListener("error", (event) => {
    if (closed) return;
    if (event.data) {
      onState("error", readErrorEvent(event.data)); // the node's own error; the browser reconnects
    } else if (source.readyState === EventSource.CLOSED) {
      // Refused outright (an unknown job, a bridge answering 5xx): no reconnecting.
      closed = true;
      onState("error", "live updates stopped: the bridge refused the event stream");
    } else {
      onState("reconnecting");
    }
  });
  return close;
}
