// The console's entry: a hash router (#/jobs, #/jobs/<id>, #/submit, #/live)
// that mounts one page at a time, the node's readiness and the access token
// control in the header.

import { mountAccessControl } from "./access.js";
import { ready } from "./api.js";
import { clear, h, notice, pageHeader, setTitle } from "./dom.js";
import * as jobs from "./jobs.js";
import * as job from "./job.js";
import * as submit from "./submit.js";
import * as live from "./live.js";

const main = document.getElementById("main");
let current = null; // {controller, cleanups}
let firstRender = true;

function parseHash() {
  const raw = window.location.hash.replace(/^#/, "") || "/jobs";
  const [path, search = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { parts, query: new URLSearchParams(search) };
}

function resolve({ parts }) {
  if (parts.length === 0 || (parts[0] === "jobs" && parts.length === 1)) return { page: jobs, nav: "jobs" };
  if (parts[0] === "jobs" && parts.length === 2) return { page: job, nav: "jobs", id: parts[1] };
  if (parts[0] === "submit" && parts.length === 1) return { page: submit, nav: "submit" };
  if (parts[0] === "live" && parts.length === 1) return { page: live, nav: "live" };
  return { page: null, nav: "" };
}

function notFound(root) {
  setTitle("Not found");
  root.append(
    pageHeader("Page not found"),
    notice("info", "There is no page at this address. ", h("a", { href: "#/jobs" }, "Go to the jobs list"), "."),
  );
}

async function route() {
  if (current) {
    current.controller.abort();
    for (const fn of current.cleanups.splice(0)) {
      try {
        fn();
      } catch (error) {
        console.error(error);
      }
    }
  }
  const location = parseHash();
  const target = resolve(location);
  for (const link of document.querySelectorAll("[data-nav]")) {
    if (link.dataset.nav === target.nav) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const controller = new AbortController();
  const ctx = {
    signal: controller.signal,
    cleanups: [],
    onCleanup(fn) {
      if (controller.signal.aborted) fn();
      else this.cleanups.push(fn);
    },
    id: target.id,
    query: location.query,
  };
  current = { controller, cleanups: ctx.cleanups };
  clear(main);
  main.dataset.page = target.nav || "none";
  const root = h("div.page__body");
  main.append(root);
  try {
    if (target.page) await target.page.render(root, ctx);
    else notFound(root);
  } catch (error) {
    if (controller.signal.aborted) return;
    console.error(error);
    root.append(notice("error", `This page failed to load: ${error.message || error}`));
  }
  if (controller.signal.aborted) return;
  if (!firstRender) {
    // Move the keyboard and screen reader to the new page's heading.
    const heading = main.querySelector("h1");
    (heading || main).focus({ preventScroll: false });
  }
  firstRender = false;
}

// The skip link must not go through the router.
document.querySelector("[data-skip]").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", route);
if (!window.location.hash) history.replaceState(null, "", "#/jobs");
mountAccessControl(document.getElementById("access"));
// A token saved or cleared: show the page again with it.
window.addEventListener("vlmnode:token", () => route());
route();

// The node's readiness, in words, in the header.
const nodeState = document.getElementById("node-state");
async function checkReady() {
  let state = "unknown";
  let text = "";
  try {
    const response = await ready();
    const body = await response.json().catch(() => ({}));
    if (response.ok) {
      state = "ready";
      text = "Node ready";
    } else {
      state = "degraded";
      const bad = Object.entries(body.checks || {})
        .filter(([, value]) => value !== "serving")
        .map(([name, value]) => `${name} ${value.replace(/_/g, " ")}`);
      text = `Node not ready${bad.length ? `: ${bad.join(", ")}` : ""}`;
    }
  } catch {
    state = "down";
    text = "Bridge unreachable";
  }
  nodeState.dataset.state = state;
  nodeState.querySelector(".node-state__text").textContent = text;
  nodeState.title = text;
}
checkReady();
setInterval(() => {
  if (document.visibilityState === "visible") checkReady();
}, 20000);
