// #/live: realtime inference over the bridge's WebSocket, the page's part:
// the protocol is ws_protocol.js, the counts counters.js, the camera
// camera.js; this wires them to what is shown. Images (from disk, or camera
// frames) and the prompt are sent, and each answer streams into the log with
// the frames it answered.

import { checkAccess } from "./api.js";
import { cameraSupported, captureJpeg, closeCamera, openCamera, pace, playCamera } from "./camera.js";
import { LiveTally, frameList } from "./counters.js";
import { clear, h, pageHeader, setTitle } from "./dom.js";
import { field } from "./form.js";
import { MAX_NUM_PREDICT, closeReason, openRealtime, promptToSend, readMessage } from "./ws_protocol.js";

const MAX_THUMBNAILS = 300; // frames whose previews are kept for the answers

export async function render(root, ctx) {
  setTitle("Live view");
  let ws = null;
  let opening = null; // Promise while connecting
  const tally = new LiveTally();
  let sentPrompt = null; // the prompt the node has for this connection
  let answerView = null; // {answer, el, textEl}: the answer being shown as it streams
  let lastFramesEntry = null;
  let lastError = null;
  const thumbnails = new Map(); // frame number -> object URL
  let camera = null; // MediaStream
  let stopPacing = null; // while frames are streamed
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
    attrs: { type: "number", min: "0", max: String(MAX_NUM_PREDICT), step: "1", inputmode: "numeric", placeholder: "default" },
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

  const withCamera = cameraSupported();
  const video = h("video.camera__video", { muted: true, playsinline: true, autoplay: true, hidden: true, "aria-label": "Camera preview" });
  video.muted = true;
  const cameraButton = h("button.button", { type: "button", disabled: !withCamera, onclick: () => (camera ? stopCamera() : startCamera()) }, "Start camera");
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
    withCamera
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
    field({
      id: "live-files",
      label: "Images from disk",
      hint: "Pick one or more images; each is one frame. Frames are numbered from 1 in the order sent.",
      control: fileInput,
      after: h("div.picked", {}, pickedList, clearPicked),
    }),
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
    stats.textContent = tally.summary();
    const willSendPrompt = promptToSend(document.getElementById("live-prompt")?.value, sentPrompt) !== null;
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
    const message = readMessage(event.data);
    if (message.kind === "error") {
      if (message.closing) {
        // The socket closes after it; without done, one frame was refused and the stream goes on.
        lastError = message.message;
        tally.cutOff();
      }
      entry("error", h("p.live-entry__who", {}, "Error"), h("p.live-entry__text", {}, message.message));
      announcer.textContent = `Error: ${message.message}`;
    } else if (message.kind === "answer") {
      showAnswer(tally.answerChunk(message));
    } else if (message.kind === "notice") {
      entry("notice", h("p.live-entry__who", {}, "Notice"), h("p.live-entry__text", {}, message.text));
      announcer.textContent = `Notice: ${message.text}`;
    }
  }

  function showAnswer(answer) {
    if (answerView?.answer !== answer) {
      const textEl = h("p.live-entry__text.streaming", {});
      const el = entry("answer", h("p.live-entry__who", {}, `Answer ${answer.number}`), textEl);
      el.setAttribute("aria-busy", "true");
      answerView = { answer, el, textEl };
    }
    const { el, textEl } = answerView;
    const follow = nearBottom();
    textEl.textContent = answer.text;
    if (follow) scrollDown();
    if (!answer.done) return;
    textEl.classList.remove("streaming");
    el.removeAttribute("aria-busy");
    el.append(
      h(
        "p.live-entry__meta",
        {},
        `Answered ${answer.frames.length === 1 ? "frame" : "frames"} ${frameList(answer.frames)}`,
        ` · ${tally.dropped} dropped so far`,
      ),
      thumbs(answer.frames),
    );
    el.dataset.frames = answer.frames.join(",");
    el.dataset.done = "true";
    if (follow) scrollDown();
    announcer.textContent = `Answer: ${answer.text}`;
    answerView = null;
    updateStats();
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
        tally.cutOff();
        const why = closeReason(event, lastError);
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
    const text = promptToSend(document.getElementById("live-prompt").value, sentPrompt);
    if (text === null) return;
    socket.send(text);
    sentPrompt = text;
    entry("prompt", h("p.live-entry__who", {}, "You"), h("p.live-entry__text", {}, text));
  }

  function sendFrame(socket, blob, buffer) {
    const number = tally.frameSent();
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
      camera = await openCamera(ctx.signal);
      if (!camera) return;
      const playing = playCamera(video, camera);
      video.hidden = false;
      await playing;
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
    closeCamera(camera, video);
    camera = null;
    video.hidden = true;
    snapButton.hidden = true;
    streamToggle.hidden = true;
    intervalWrap.hidden = true;
    cameraButton.textContent = "Start camera";
  }

  async function sendCameraFrame() {
    let socket;
    try {
      socket = await connect();
    } catch {
      return;
    }
    const blob = await captureJpeg(video);
    if (!blob) {
      entry("notice", h("p.live-entry__who", {}, "Camera"), h("p.live-entry__text", {}, "The camera has no picture yet; no frame was sent."));
      return;
    }
    if (socket.readyState !== WebSocket.OPEN) return;
    await sendPromptIfChanged(socket);
    sendFrame(socket, blob, await blob.arrayBuffer());
  }

  function toggleStreaming() {
    if (stopPacing) stopStreaming();
    else {
      streamToggle.setAttribute("aria-pressed", "true");
      streamToggle.textContent = "Stop streaming";
      stopPacing = pace(sendCameraFrame, () => Number(intervalSelect.value));
    }
  }

  function stopStreaming() {
    if (stopPacing) stopPacing();
    stopPacing = null;
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
