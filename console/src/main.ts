// The console's entry point: the shell (navigation, session), the client-side router and
// sign-in. The server answers index.html for /runs, /runs/<id>, /workflows and
// /workflows/<id>, so every one of them is a link that can be shared.

import { ApiError, fetchSession, getToken, onUnauthenticated, setToken } from "./api";
import type { AppContext, Page } from "./app";
import { h, refreshTimes, replace } from "./dom";
import { runPage } from "./pages/run";
import { runsPage } from "./pages/runs";
import { workflowPage } from "./pages/workflow";
import { workflowsPage } from "./pages/workflows";
import type { Session } from "./types";

const main = h("main", { id: "main", tabindex: -1 });
const sessionSlot = h("div", { class: "session" });
let current: Page | null = null;
let session: Session | null = null;

function navLink(href: string, text: string): HTMLAnchorElement {
  return h("a", { href, class: "nav-link" }, text);
}

const nav = h("nav", { "aria-label": "main" }, navLink("/runs", "Runs"), navLink("/workflows", "Workflows"));

function shell(): void {
  const header = h(
    "header",
    { class: "top" },
    h("a", { href: "#main", class: "skip" }, "Skip to content"),
    h("a", { href: "/runs", class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }, "◆"), " Stepline"),
    nav,
    sessionSlot,
  );
  document.body.replaceChildren(header, main);
}

const ctx: AppContext = {
  get session(): Session {
    return session ?? { authRequired: false, scopes: [], traceUrlTemplate: null };
  },
  navigate(url: string, replaceState = false): void {
    if (replaceState) history.replaceState(null, "", url);
    else history.pushState(null, "", url);
    route();
  },
  title(text: string): void {
    document.title = text ? `${text} · Stepline` : "Stepline";
  },
};

function renderSession(): void {
  if (!session) {
    replace(sessionSlot);
    return;
  }
  const scopes = session.scopes;
  const label = scopes.includes("write") ? (scopes.includes("read") ? "read · write" : "write only") : "read-only";
  const signOut = h("button", { type: "button", class: "link" }, "Sign out");
  signOut.addEventListener("click", () => {
    setToken(null);
    void start();
  });
  replace(
    sessionSlot,
    h("span", { class: `scope ${scopes.includes("write") ? "scope-write" : "scope-read"}`, title: "what this token may do" }, label),
    session.authRequired && getToken() ? signOut : null,
  );
}

function signIn(problem: string): void {
  current?.dispose();
  current = null;
  session = null;
  renderSession();
  ctx.title("Sign in");
  const input = h("input", {
    type: "password",
    id: "token",
    name: "token",
    autocomplete: "off",
    required: true,
    "aria-describedby": "token-help",
  });
  const form = h(
    "form",
    { class: "card signin" },
    h("h1", null, "Sign in"),
    h(
      "p",
      { id: "token-help" },
      "This server needs a bearer token. It is kept in this tab only (sessionStorage) and sent in the Authorization header.",
    ),
    problem ? h("p", { class: "form-error", role: "alert" }, problem) : null,
    h("label", { for: "token" }, "Token"),
    input,
    h("div", { class: "form-actions" }, h("button", { type: "submit", class: "primary" }, "Sign in")),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    setToken(input.value.trim());
    void start();
  });
  replace(main, form);
  input.focus();
}

function route(): void {
  current?.dispose();
  current = null;
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const link of nav.querySelectorAll("a")) {
    const active = path.startsWith(link.getAttribute("href") ?? "\u0000");
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  let page: Page;
  if (parts.length === 0) {
    ctx.navigate(`/runs${location.search}`, true);
    return;
  } else if (parts[0] === "runs" && parts.length === 1) {
    page = runsPage(ctx);
  } else if (parts[0] === "runs" && parts.length === 2 && parts[1]) {
    page = runPage(ctx, parts[1]);
  } else if (parts[0] === "workflows" && parts.length === 1) {
    page = workflowsPage(ctx);
  } else if (parts[0] === "workflows" && parts.length === 2 && parts[1]) {
    page = workflowPage(ctx, parts[1]);
  } else {
    ctx.title("Not found");
    page = {
      element: h("section", { class: "card" }, h("h1", null, "Not found"), h("p", null, h("a", { href: "/runs" }, "Back to the runs"))),
      dispose() {},
    };
  }
  current = page;
  replace(main, page.element);
}

async function start(): Promise<void> {
  try {
    session = await fetchSession();
  } catch (err) {
    if (err instanceof ApiError && err.unauthenticated) {
      signIn(getToken() ? err.message : "");
      return;
    }
    replace(main, h("section", { class: "card" }, h("h1", null, "The server can't be reached"), h("p", null, String(err))));
    return;
  }
  renderSession();
  route();
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = (event.target as Element | null)?.closest?.("a[href]");
  if (!(link instanceof HTMLAnchorElement) || link.target || link.hasAttribute("download")) return;
  const href = link.getAttribute("href") ?? "";
  if (!href.startsWith("/") || href.startsWith("//") || href.startsWith("/v1/") || href.startsWith("/console/")) return;
  event.preventDefault();
  ctx.navigate(href);
});
window.addEventListener("popstate", () => route());
onUnauthenticated((err) => signIn(err.message));
window.setInterval(() => refreshTimes(), 15_000);

shell();
void start();
