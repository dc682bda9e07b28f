// The realtime WebSocket's protocol (/api/v1/ws, server/bridge/websocket.py).
// A client sends its prompt as a text message and each image as a binary
// one. The bridge answers in text messages: JSON chunks {"response", "done"}
// (with ?format=text; the last also names the `frames` it answered and
// `frames_dropped`), {"error", "done"} refusals (done: the socket closes
// after it), and notices in plain words. Without ?format=text the chunks
// come as binary messages, Ollama's objects {model, created_at, response,
// done, ...} with the same `frames` and `frames_dropped` on the last.

import { REALTIME } from "./paths.js";
import { getToken, withToken } from "./token.js";

export const SUBPROTOCOL = "vlmnode"; // the one the bridge picks
export const MAX_NUM_PREDICT = 8192; // the bridge refuses a longer answer limit

/** The WebSocket URL of the realtime endpoint on `page`'s host, answers as text messages. */
export function realtimeUrl(numPredict, page = window.location.href) {
  const url = new URL(REALTIME, page);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  url.searchParams.set("format", "text"); // binary answers are for the original's clients
  if (numPredict) url.searchParams.set("num_predict", String(numPredict));
  return url.toString();
}

/**
 * Opens the realtime WebSocket. A saved token is offered as the subprotocol
 * `bearer.<token>` beside "vlmnode"; a token with characters a subprotocol
 * cannot carry goes in the query instead.
 */
export function openRealtime(numPredict) {
  const url = realtimeUrl(numPredict);
  const token = getToken();
  let socket;
  if (!token) socket = new WebSocket(url);
  else {
    try {
      socket = new WebSocket(url, [SUBPROTOCOL, `bearer.${token}`]);
    } catch (error) {
      if (error.name !== "SyntaxError") throw error;
      socket = new WebSocket(withToken(url));
    }
  }
  socket.binaryType = "arraybuffer"; // for readMessage
  return socket;
}

/** The prompt to send before the next images: the text when it is new to this connection, else null. */
export function promptToSend(text, sentPrompt) {
  const prompt = String(text ?? "").trim();
  return prompt && prompt !== sentPrompt ? prompt : null;
}

function answer(body) {
  const frames = Array.isArray(body.frames) ? body.frames.map(Number).filter((n) => Number.isInteger(n) && n > 0) : [];
  return {
    kind: "answer",
    text: typeof body.response === "string" ? body.response : "",
    done: body.done === true,
    frames, // numbered from 1 in the order this connection sent them
    framesDropped: typeof body.frames_dropped === "number" ? body.frames_dropped : null,
    model: typeof body.model === "string" ? body.model : null,
    createdAt: typeof body.created_at === "string" ? body.created_at : null,
    doneReason: typeof body.done_reason === "string" ? body.done_reason : null,
  };
}

/**
 * One message from the bridge (a string, or an ArrayBuffer for a binary one):
 * {kind: "answer", text, done, frames, framesDropped, ...}, {kind: "error",
 * message, closing}, {kind: "notice", text}, or {kind: "unreadable"} for a
 * binary message that is no answer.
 */
export function readMessage(data) {
  const binary = typeof data !== "string";
  const text = binary ? new TextDecoder().decode(data) : data;
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  if (body && typeof body === "object" && !Array.isArray(body)) {
    if (typeof body.error === "string") return { kind: "error", message: body.error, closing: body.done === true };
    if ("response" in body) return answer(body);
  }
  // Anything else in text is a notice in words, e.g. "No prompt received for image batch".
  return binary ? { kind: "unreadable" } : { kind: "notice", text };
}

/** Why the socket closed, in words ("" for a plain close): the refusal that came before it, else the close frame's. */
export function closeReason(event, lastError = null) {
  return lastError || event.reason || (event.code === 1000 || event.code === 1005 ? "" : `code ${event.code}`);
}
