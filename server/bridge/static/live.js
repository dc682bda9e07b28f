// #/live: realtime inference over the bridge's WebSocket (/api/v1/ws). Images
// go as binary messages (from disk, or camera frames captured to JPEG), the
// prompt as a text message; the answer streams back as JSON chunks, the last
// naming the frames it answered (numbered from 1 in send order) and how many
// were dropped while the model was busy. Plain text messages are notices.

import { checkAccess, openRealtime } from "./api.js";
import { clear, h, pageHeader, setTitle } from "./dom.js";
import { field } from "./form.js";

const MAX_THUMBNAILS = 300; // frames whose previews are kept for the answers
const JPEG_QUALITY = 0.85;
const CAMERA_MAX_SIDE = 1280;

function frameList(numbers) {
  if (!numbers.length) return "none";
  const sorted = [...numbers].sort((a, b) => a - b);
  const ranges = [];
  let from = sorted[0];
  let to = sorted[0];
  for (const n of sorted.slice(1)) {
    if (n === to + 1) to = n;
    else {
      ranges.push(from === to ? `#${from}` : `#${from}–#${to}`);
      from = to = n;
    }
  }
  ranges.push(from === to ? `#${from}` : `#${from}–#${to}`);
  return ranges.join(", ");
}

export async function render(root, ctx) {
  setTitle("Live view");
  let ws = null;
  let opening = null; // Promise while connecting
  let framesSent = 0;
  let framesAnswered = 0;
  let framesDropped = 0;
  let answers = 0;
  let sentPrompt = null; // the prompt the node has for this connection
  let currentAnswer = null; // {el, text, textEl}
  let lastFramesEntry = null;
  let lastError = null;
  const thumbnails = new Map(); // frame number -> object URL
  let camera = null; // MediaStream
  let streamTimer = null;
  let selected = []; // File[]
  const previews = []; // object URLs of the picked files

  // Connection.
  const connState = h("p.conn-state", { role: "status", dataset: { state: "closed" } }, "Not connected");
  const connectButton = h("button.button", { type: "button", onclick: () => (ws ? disconnect() : connect().catch(() => {})) }, "Connect");
  const numPredict = field({
    id: "num-predict",
    label: "Answer length limit",
    optional: true,
    hint: "num_predict: the most tokens per answer. Used when connecting; empty means the model's default.",
    attrs: { type: "number", min: "0", max: "8192", step: "1", inputmode: "numeric", placeholder: "default" },
  });

  // What to send.
  const prompt = field({
    id: "live-prompt",
    label: "Prompt",
    hint: "Sent before the images whenever it changes. Without a prompt, images get a notice instead of an answer.",
    kind: "textarea",
    attrs: { rows: 3, placeholder: "What colour is the box on the shelf?" },
  });
  const fileInput = h("input", { type: "file", id: "live-files", name: "live-files", accept: "image/*", multiple: true, "aria-describedby": "live-files-hint", onchange: () => pick() });
  const pickedList = h("ul.thumbs.thumbs--picked", { "aria-label": "Picked images" });
  const clearPicked = h("button.button.button--quiet.button--small", { type: "button", hidden: true, onclick: () => { fileInput.value = ""; pick(); } }, "Clear");
  const sendButton = h("button.button.button--primary", { type: "submit" }, "Send");
  const sendHint = h("p.hint", { id: "send-hint" });
  sendButton.setAttribute("aria-describedby", "send-hint");

  const cameraSupported = Boolean(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
  const video = h("video.camera__video", { muted: true, playsinline: true, autoplay: true, hidden: true, "aria-label": "Camera preview" });
  video.muted = true;
  const cameraButton = h("button.button", { type: "button", disabled: !cameraSupported, onclick: () => (camera ? stopCamera() : startCamera()) }, "Start camera");
  const snapButton = h("button.button", { type: "button", hidden: true, onclick: () => sendCameraFrame() }, "Send a frame");
  const streamToggle = h("button.button", { type: "button", hidden: true, "aria-pressed": "false", onclick: () => toggleStreaming() }, "Stream frames");
  const intervalSelect = h(
    "select",
    { id: "live-interval", "aria-label": "Time between streamed frames" },
    [["500", "every 0.5 s"], ["1000", "every 1 s"], ["2000", "every 2 s"], ["5000", "every 5 s"]].map(([value, text]) =>
      h("option", { value, selected: value === "1000" }, text),
    ),
  );
  const intervalWrap = h("span.camera__interval", { hidden: true }, intervalSelect);
  const cameraNote = h(
    "p.hint",
    {},
    cameraSupported
      ? "Frames are captured from the camera as JPEG."
      : "The camera is not available here: browsers allow it only on a secure page (https or localhost) that has been given permission.",
  );

  // Answers.
  const log = h("ol.live-log", { "aria-label": "Messages and answers" });
  const emptyLog = h("p.muted.live-empty", {}, "Answers appear here. Connect, pick images or start the camera, type a prompt and send.");
  const announcer = h("p.visually-hidden", { "aria-live": "polite" });
  const stats = h("p.live-stats", {});

  const form = h(
    "form.card.form",
    { "aria-labelledby": "live-send-title", novalidate: true, onsubmit: (event) => { event.preventDefault(); send(); } },
    h("h2", { id: "live-send-title" }, "Send"),
    prompt,
    h(
      "div.field",
      {},
      h("label", { for: "live-files" }, "Images from disk"),
      h("p.hint", { id: "live-files-hint" }, "Pick one or more images; each is one frame. Frames are numbered from 1 in the order sent."),
      fileInput,
      h("div.picked", {}, pickedList, clearPicked),
    ),
    h("div.form-actions.send-row", {}, sendButton, sendHint),
    h(
      "fieldset.group.camera",
      {},
      h("legend", {}, "Camera"),
      cameraNote,
      video,
      h("div.form-actions", {}, cameraButton, snapButton, streamToggle, intervalWrap),
    ),
  );

  const connection = h(
    "section.card.connection",
    { "aria-labelledby": "live-conn-title" },
    h("h2", { id: "live-conn-title" }, "Connection"),
    h("div.conn", {}, connState, connectButton),
    h("details.more", {}, h("summary", {}, "Options"), numPredict),
  );

  root.append(
    pageHeader("Live view"),
    h("p.lead", {}, "Ask the vision model about images as you send them, over the node's realtime WebSocket."),
    h(
      "div.live-grid",
      {},
      h("div.live-grid__controls", {}, connection, form),
      h(
        "section.card.live-answers",
        { "aria-labelledby": "live-answers-title" },
        h("div.live-answers__head", {}, h("h2", { id: "live-answers-title" }, "Answers"), stats),
        emptyLog,
        log,
        announcer,
      ),
    ),
  );

  function updateStats() {
    stats.textContent = `${framesSent} sent · ${framesAnswered} answered · ${framesDropped} dropped`;
    const promptText = document.getElementById("live-prompt")?.value.trim() ?? "";
    const willSendPrompt = promptText && promptText !== sentPrompt;
    sendButton.disabled = !selected.length && !willSendPrompt;
    sendHint.textContent = sendButton.disabled
      ? "Type a new prompt or pick images to send."
      : `Will send ${[willSendPrompt ? "the prompt" : null, selected.length ? `${selected.length} ${selected.length === 1 ? "image" : "images"}` : null].filter(Boolean).join(" and ")}${ws ? "" : ", connecting first"}.`;
  }
  prompt.querySelector("textarea").addEventListener("input", updateStats);

  function setConn(state, text) {
    connState.dataset.state = state;
    connState.textContent = text;
    connectButton.textContent = state === "open" || state === "connecting" ? "Disconnect" : "Connect";
    updateStats();
  }

  function entry(kind, ...children) {
    emptyLog.hidden = true;
    const item = h(`li.live-entry.live-entry--${kind}`, { dataset: { kind } }, ...children);
    const follow = nearBottom();
    log.append(item);
    if (follow) scrollDown();
    if (kind !== "frames") lastFramesEntry = null;
    return item;
  }

  // The log follows new messages unless the reader has scrolled up.
  function nearBottom() {
    return log.scrollHeight - log.scrollTop - log.clientHeight < 80;
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function thumbs(numbers) {
    return h(
      "ul.thumbs",
      {},
      numbers.map((n) => {
        const url = thumbnails.get(n);
        return h(
          "li.thumb",
          { dataset: { frame: String(n) } },
          url ? h("img", { src: url, alt: `Frame ${n}` }) : h("span.thumb__missing", { "aria-hidden": "true" }),
          h("span.thumb__label", {}, `#${n}`),
        );
      }),
    );
  }

  function keepThumbnail(number, blob) {
    thumbnails.set(number, URL.createObjectURL(blob));
    for (const [n, url] of thumbnails) {
      if (thumbnails.size <= MAX_THUMBNAILS) break;
      URL.revokeObjectURL(url);
      thumbnails.delete(n);
    }
  }

  function onMessage(event) {
    if (typeof event.data !== "string") return;
    let message = null;
    try {
      message = JSON.parse(event.data);
    } catch {
      message = null;
    }
    if (message && typeof message === "object" && typeof message.error === "string") {
      if (message.done) {
        // The socket closes after it; without done, one frame was refused and the stream goes on.
        lastError = message.error;
        currentAnswer = null;
      }
      entry("error", h("p.live-entry__who", {}, "Error"), h("p.live-entry__text", {}, message.error));
      announcer.textContent = `Error: ${message.error}`;
      return;
    }
    if (message && typeof message === "object" && "response" in message) {
      if (!currentAnswer) {
        answers += 1;
        const textEl = h("p.live-entry__text.streaming", {});
        const el = entry("answer", h("p.live-entry__who", {}, `Answer ${answers}`), textEl);
        el.setAttribute("aria-busy", "true");
        currentAnswer = { el, textEl, text: "" };
      }
      const follow = nearBottom();
      currentAnswer.text += message.response || "";
      currentAnswer.textEl.textContent = currentAnswer.text;
      if (follow) scrollDown();
      if (message.done) {
        const numbers = (message.frames || []).map(Number).filter((n) => Number.isInteger(n));
        framesAnswered += numbers.length;
        if (typeof message.frames_dropped === "number") framesDropped = message.frames_dropped;
        const { el, textEl, text } = currentAnswer;
        textEl.classList.remove("streaming");
        el.removeAttribute("aria-busy");
        el.append(
          h(
            "p.live-entry__meta",
            {},
            `Answered ${numbers.length === 1 ? "frame" : "frames"} ${frameList(numbers)}`,
            ` · ${framesDropped} dropped so far`,
          ),
          thumbs(numbers),
        );
        el.dataset.frames = numbers.join(",");
        el.dataset.done = "true";
        if (follow) scrollDown();
        announcer.textContent = `Answer: ${text}`;
        currentAnswer = null;
        updateStats();
      }
      return;
    }
    // Anything else is a notice in words, e.g. "No prompt received for image batch".
    entry("notice", h("p.live-entry__who", {}, "Notice"), h("p.live-entry__text", {}, event.data));
    announcer.textContent = `Notice: ${event.data}`;
  }

  function connect() {
    if (ws && ws.readyState === WebSocket.OPEN) return Promise.resolve(ws);
    if (opening) return opening;
    const limit = document.getElementById("num-predict").value.trim();
    lastError = null;
    sentPrompt = null;
    setConn("connecting", "Connecting…");
    const socket = openRealtime(limit ? Number(limit) : 0);
    ws = socket;
    opening = new Promise((resolve, reject) => {
      socket.addEventListener("open", () => {
        opening = null;
        setConn("open", "Connected");
        entry("system", h("p.live-entry__text", {}, `Connected${limit ? ` (answers limited to ${limit} tokens)` : ""}.`));
        resolve(socket);
      });
      socket.addEventListener("close", (event) => {
        const wasOpening = opening !== null;
        opening = null;
        if (ws === socket) ws = null;
        currentAnswer = null;
        const why = lastError || event.reason || (event.code === 1000 || event.code === 1005 ? "" : `code ${event.code}`);
        setConn("closed", why ? `Closed: ${why}` : "Not connected");
        entry("system", h("p.live-entry__text", {}, `Connection closed${why ? ` (${why})` : ""}.`));
        if (wasOpening) reject(new Error(why || "could not connect"));
        // A refused handshake says nothing to the page (code 1006): ask the
        // API whether it is the token, which also asks for one.
        if (wasOpening && event.code === 1006 && !lastError) {
          checkAccess().then((access) => {
            if (access !== "unauthorized" || ctx.signal.aborted || ws) return;
            setConn("closed", "Not connected: this node needs an access token");
            entry("error", h("p.live-entry__who", {}, "Error"), h("p.live-entry__text", {}, "This node needs an access token. Enter it with “Access token” at the top of the page, then connect again."));
          });
        }
      });
    });
    socket.addEventListener("message", onMessage);
    return opening;
  }

  function disconnect() {
    stopStreaming();
    if (ws) ws.close(1000);
  }

  function pick() {
    for (const url of previews.splice(0)) URL.revokeObjectURL(url);
    selected = [...fileInput.files].filter((file) => file.type.startsWith("image/") || !file.type);
    clear(pickedList);
    for (const file of selected) {
      const url = URL.createObjectURL(file);
      previews.push(url);
      pickedList.append(h("li.thumb", {}, h("img", { src: url, alt: file.name }), h("span.thumb__label", { title: file.name }, file.name)));
    }
    clearPicked.hidden = !selected.length;
    updateStats();
  }

  async function sendPromptIfChanged(socket) {
    const text = document.getElementById("live-prompt").value.trim();
    if (!text || text === sentPrompt) return;
    socket.send(text);
    sentPrompt = text;
    entry("prompt", h("p.live-entry__who", {}, "You"), h("p.live-entry__text", {}, text));
  }

  function sendFrame(socket, blob, buffer) {
    framesSent += 1;
    const number = framesSent;
    keepThumbnail(number, blob);
    socket.send(buffer);
    if (!lastFramesEntry) {
      lastFramesEntry = entry("frames", h("p.live-entry__who", {}, "Sent"), h("p.live-entry__text", {}), thumbs([]));
      lastFramesEntry.numbers = [];
    }
    lastFramesEntry.numbers = [...(lastFramesEntry.numbers || []), number];
    const numbers = lastFramesEntry.numbers;
    lastFramesEntry.querySelector(".live-entry__text").textContent = `${numbers.length === 1 ? "Frame" : "Frames"} ${frameList(numbers)}`;
    lastFramesEntry.querySelector(".thumbs").replaceWith(thumbs(numbers));
    lastFramesEntry.dataset.frames = numbers.join(",");
    scrollDown();
    updateStats();
  }

  async function send() {
    let socket;
    try {
      socket = await connect();
    } catch {
      return;
    }
    if (ctx.signal.aborted || socket.readyState !== WebSocket.OPEN) return;
    await sendPromptIfChanged(socket);
    for (const file of selected) {
      const buffer = await file.arrayBuffer();
      if (socket.readyState !== WebSocket.OPEN) return;
      sendFrame(socket, file, buffer);
    }
    updateStats();
  }

  // The camera.
  async function startCamera() {
    cameraButton.disabled = true;
    try {
      camera = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      if (ctx.signal.aborted) {
        stopCamera();
        return;
      }
      video.srcObject = camera;
      video.hidden = false;
      // Frames can be captured once the first picture is in.
      if (!video.videoWidth) await new Promise((resolve) => video.addEventListener("loadeddata", resolve, { once: true }));
      await video.play().catch(() => {});
      if (ctx.signal.aborted || !camera) return;
      snapButton.hidden = false;
      streamToggle.hidden = false;
      intervalWrap.hidden = false;
      cameraButton.textContent = "Stop camera";
      cameraNote.textContent = "Frames are captured from the camera as JPEG.";
    } catch (error) {
      camera = null;
      cameraNote.textContent = `The camera could not be opened: ${error.message || error.name}.`;
    } finally {
      cameraButton.disabled = false;
    }
  }

  function stopCamera() {
    stopStreaming();
    if (camera) for (const track of camera.getTracks()) track.stop();
    camera = null;
    video.srcObject = null;
    video.hidden = true;
    snapButton.hidden = true;
    streamToggle.hidden = true;
    intervalWrap.hidden = true;
    cameraButton.textContent = "Start camera";
  }

  function captureFrame() {
    const width = video.videoWidth;
    const height = video.videoHeight;
    if (!width || !height) return Promise.resolve(null);
    const scale = Math.min(1, CAMERA_MAX_SIDE / Math.max(width, height));
    const canvas = document.createElement("canvas");
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
    return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  }

  async function sendCameraFrame() {
    let socket;
    try {
      socket = await connect();
    } catch {
      return;
    }
    const blob = await captureFrame();
    if (!blob) {
      entry("notice", h("p.live-entry__who", {}, "Camera"), h("p.live-entry__text", {}, "The camera has no picture yet; no frame was sent."));
      return;
    }
    if (socket.readyState !== WebSocket.OPEN) return;
    await sendPromptIfChanged(socket);
    sendFrame(socket, blob, await blob.arrayBuffer());
  }

  function toggleStreaming() {
    if (streamTimer) stopStreaming();
    else {
      streamToggle.setAttribute("aria-pressed", "true");
      streamToggle.textContent = "Stop streaming";
      const tick = async () => {
        await sendCameraFrame();
        if (streamTimer) streamTimer = setTimeout(tick, Number(intervalSelect.value));
      };
      streamTimer = setTimeout(tick, 0);
    }
  }

  function stopStreaming() {
    if (streamTimer) clearTimeout(streamTimer);
    streamTimer = null;
    streamToggle.setAttribute("aria-pressed", "false");
    streamToggle.textContent = "Stream frames";
  }

  ctx.onCleanup(() => {
    stopCamera();
    if (ws) ws.close(1000);
    ws = null;
    for (const url of previews) URL.revokeObjectURL(url);
    for (const url of thumbnails.values()) URL.revokeObjectURL(url);
  });
  updateStats();
}
