// The bridge's public API, as the README describes it: REST under /api/v1,
// server-sent events for one job, the realtime WebSocket. Nothing else. When
// an access token is saved (token.js) every call carries it; a 401 asks for one.

import { getToken, refusalMessage, tokenRefused, withToken } from "./token.js";

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

async function call(method, path, body) {
  const options = { method, headers: { Accept: "application/json" } };
  const token = getToken();
  if (token) options.headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) {
    options.headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new ApiError("The node's bridge could not be reached. Is the node running?", 0);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (response.status === 401) {
    const message = refusalMessage();
    tokenRefused();
    throw new ApiError(message, 401);
  }
  if (!response.ok) {
    // Every refusal is {"error": "<one readable line>"}.
    const message = data && typeof data.error === "string" ? data.error : `${response.status} ${response.statusText}`.trim();
    throw new ApiError(message, response.status);
  }
  return data;
}

export function listJobs({ limit = 20, offset = 0, status = "", jobType = "" } = {}) {
  const params = new URLSearchParams({ limit: String(limit), offset: String(offset) });
  if (status) params.set("status", status);
  if (jobType) params.set("job_type", jobType);
  return call("GET", `/api/v1/jobs?${params}`);
}

export const getJob = (id) => call("GET", `/api/v1/jobs/${encodeURIComponent(id)}`);
export const createJob = (body) => call("POST", "/api/v1/jobs", body);
export const retryJob = (id, body) => call("PUT", `/api/v1/jobs/${encodeURIComponent(id)}`, body);
export const cancelJob = (id) => call("POST", `/api/v1/jobs/${encodeURIComponent(id)}/cancel`);
export const ready = () => fetch("/ready", { headers: { Accept: "application/json" } });

/** "ok", "unauthorized" (and the token is asked for) or "unknown": whether this browser may use the API. */
export async function checkAccess() {
  try {
    await call("GET", "/api/v1/jobs?limit=1");
    return "ok";
  } catch (error) {
    return error.status === 401 ? "unauthorized" : "unknown";
  }
}

const FINAL = new Set(["completed", "failed", "cancelled"]);

/**
 * Follows a job over server-sent events (GET /api/v1/jobs/{id}/events, which
 * rides on WatchJob): onJob(job) for the job as it is now and at every change
 * of status; the stream is closed after a final status. onState(state, message)
 * reports "live", "reconnecting", "error" and "closed". Returns a function that
 * stops following.
 */
export function watchJob(id, { onJob, onState = () => {} }) {
  // EventSource cannot set headers: the token rides in the query.
  const source = new EventSource(withToken(`/api/v1/jobs/${encodeURIComponent(id)}/events`));
  let closed = false;
  const close = () => {
    if (!closed) {
      closed = true;
      source.close();
    }
  };
  source.addEventListener("open", () => onState("live"));
  source.addEventListener("job", (event) => {
    let job;
    try {
      job = JSON.parse(event.data);
    } catch {
      return;
    }
    onJob(job);
    if (FINAL.has(job.status)) {
      close();
      onState("closed");
    }
  });
  source.addEventListener("error", (event) => {
    if (closed) return;
    if (event.data) {
      // The node's own error, sent as `event: error`; the browser reconnects.
      let message = event.data;
      try {
        message = JSON.parse(event.data).error || message;
      } catch {
        /* keep the raw text */
      }
      onState("error", message);
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

/**
 * Opens the realtime WebSocket. A saved token is offered as the subprotocol
 * `bearer.<token>` beside "vlmnode" (the one the bridge picks); a token with
 * characters a subprotocol cannot carry goes in the query instead.
 */
export function openRealtime(numPredict) {
  const url = realtimeUrl(numPredict);
  const token = getToken();
  if (!token) return new WebSocket(url);
  try {
    return new WebSocket(url, ["vlmnode", `bearer.${token}`]);
  } catch (error) {
    if (error.name !== "SyntaxError") throw error;
    return new WebSocket(withToken(url));
  }
}

/** The WebSocket URL of the realtime endpoint, on this page's own host. */
export function realtimeUrl(numPredict) {
  const url = new URL("/api/v1/ws", window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  url.searchParams.set("format", "text"); // answers as text messages; binary ones are for the original's clients
  if (numPredict) url.searchParams.set("num_predict", String(numPredict));
  return url.toString();
}
