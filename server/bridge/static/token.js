// The access token the node may want (AUTH_TOKENS on the node): kept in this
// browser's localStorage, sent with every API call. The bridge takes it as
// `Authorization: Bearer`, as `?access_token=` where a browser cannot set
// headers (EventSource), and as the WebSocket subprotocol `bearer.<token>`.

const KEY = "vlmnode.accessToken";
let fallback = ""; // when localStorage is refused (some private modes)

export function getToken() {
  try {
    return window.localStorage.getItem(KEY) || "";
  } catch {
    return fallback;
  }
}

function changed() {
  window.dispatchEvent(new CustomEvent("vlmnode:token"));
}

export function setToken(token) {
  const value = String(token || "").trim();
  fallback = value;
  try {
    if (value) window.localStorage.setItem(KEY, value);
    else window.localStorage.removeItem(KEY);
  } catch {
    /* kept in memory only */
  }
  changed();
}

export const clearToken = () => setToken("");

/** The API answered 401: tell whoever asks for a token (the header's control). */
export function tokenRefused() {
  window.dispatchEvent(new CustomEvent("vlmnode:unauthorized", { detail: { hadToken: Boolean(getToken()) } }));
}

/** The message for a 401, in words. */
export function refusalMessage() {
  return getToken()
    ? "This node needs an access token: the one saved in this browser was refused."
    : "This node needs an access token.";
}

/** `url` (absolute or from this origin) with `access_token=` added when a token is saved. */
export function withToken(url) {
  const token = getToken();
  if (!token) return url;
  const full = new URL(url, window.location.href);
  full.searchParams.set("access_token", token);
  return url.startsWith("/") ? `${full.pathname}${full.search}` : full.toString();
}
