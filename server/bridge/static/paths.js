// The bridge's addresses the console uses, as the README describes them:
// REST under /api/v1, one job's server-sent events, the realtime WebSocket.

export const JOBS = "/api/v1/jobs";
export const job = (id) => `${JOBS}/${encodeURIComponent(id)}`;
export const jobCancel = (id) => `${job(id)}/cancel`;
export const jobEvents = (id) => `${job(id)}/events`;
export const REALTIME = "/api/v1/ws";
export const READY = "/ready";
