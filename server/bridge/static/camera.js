// The camera for the live view: opened with getUserMedia into a <video>,
// frames captured from it as JPEG through a canvas, and sent at a pace.

const JPEG_QUALITY = 0.85;
const MAX_SIDE = 1280; // pixels: a larger picture is scaled down to this

/** Browsers allow the camera only on a secure page (https or localhost). */
export function cameraSupported() {
  return Boolean(window.isSecureContext && navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
}

/**
 * The camera, facing away from the user where there is a choice: its
 * MediaStream, or null when `signal` was aborted meanwhile (the camera is
 * then closed again).
 */
export async function openCamera(signal) {
  const stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  if (signal?.aborted) {
    closeCamera(stream);
    return null;
  }
  return stream;
}

/** Plays `stream` in `video`; resolves once its first picture is in, when frames can be captured. */
export async function playCamera(video, stream) {
  video.srcObject = stream;
  if (!video.videoWidth) await new Promise((resolve) => video.addEventListener("loadeddata", resolve, { once: true }));
  await video.play().catch(() => {});
}

export function closeCamera(stream, video) {
  if (stream) for (const track of stream.getTracks()) track.stop();
  if (video) video.srcObject = null;
}

/** The picture in `video` now, as a JPEG Blob no larger than MAX_SIDE, or null before the first picture. */
export function captureJpeg(video) {
  const width = video.videoWidth;
  const height = video.videoHeight;
  if (!width || !height) return Promise.resolve(null);
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  const canvas = document.createElement("canvas");
  canvas.width = Math.round(width * scale);
  canvas.height = Math.round(height * scale);
  canvas.getContext("2d").drawImage(video, 0, 0, canvas.width, canvas.height);
  return new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
}

/**
 * Runs `tick` at once and again `intervalMs()` after each run has finished,
 * so that a slow send never overlaps the next. Returns a function that stops.
 */
export function pace(tick, intervalMs) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    await tick();
    if (!stopped) timer = setTimeout(run, intervalMs());
  };
  timer = setTimeout(run, 0);
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
