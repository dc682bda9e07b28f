// The bridge's REST API (under /api/v1, as the README describes it) and its
// readiness; one job's event stream is job_stream.js, the realtime WebSocket
// ws_protocol.js. When an access token is saved (token.js) every call carries
// it; a 401 asks for one.

import { JOBS, READY, job, jobCancel } from "./paths.js";
import { getToken, refusalMessage, tokenRefused } from "./token.js";

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
  return call("GET", `${JOBS}?${params}`);
}

export const getJob = (id) => call("GET", job(id));
export const createJob = (body) => call("POST", JOBS, body);
export const retryJob = (id, body) => call("PUT", job(id), body);
export const cancelJob = (id) => call("POST", jobCancel(id));
export const ready = () => fetch(READY, { headers: { Accept: "application/json" } });

/** "ok", "unauthorized" (and the token is asked for) or "unknown": whether this browser may use the API. */
export async function checkAccess() {
  try {
    await call("GET", `${JOBS}?limit=1`);
    return "ok";
  } catch (error) {
    return error.status === 401 ? "unauthorized" : "unknown";
  }
}
