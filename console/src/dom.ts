// DOM building without HTML strings: every value reaches the page as a text node or an
// attribute, never through innerHTML, so a payload can't become markup.

export type Child = Node | string | number | null | undefined | false | Child[];
type Listener = (event: Event) => void;
export type Attrs = { [name: string]: string | number | boolean | null | undefined | Listener };

function apply(el: Element, attrs: Attrs | null | undefined, children: Child[]): void {
  if (attrs) {
    for (const [name, value] of Object.entries(attrs)) {
      if (value === null || value === undefined || value === false) continue;
      if (typeof value === "function") {
        el.addEventListener(name.slice(2), value);
      } else if (name === "style" || name.toLowerCase().startsWith("on")) {
        throw new Error(`refusing to set ${name} as an attribute`);
      } else {
        el.setAttribute(name, value === true ? "" : String(value));
      }
    }
  }
  append(el, children);
}

export function append(el: Element, children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

export function h<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): HTMLElementTagNameMap[K] {
  const el = document.createElement(tag);
  apply(el, attrs, children);
  return el;
}

const SVG = "http://www.w3.org/2000/svg";

export function s<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs?: Attrs | null,
  ...children: Child[]
): SVGElementTagNameMap[K] {
  const el = document.createElementNS(SVG, tag) as SVGElementTagNameMap[K];
  apply(el, attrs, children);
  return el;
}

export function replace(el: Element, ...children: Child[]): void {
  el.replaceChildren();
  append(el, children);
}

// -- formatting ------------------------------------------------------------------------------

export function parseTime(value: string | undefined): number | null {
  if (!value) return null;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms;
}

export function duration(ms: number): string {
  if (ms < 0) ms = 0;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const sec = ms / 1000;
  if (sec < 60) return `${sec < 10 ? sec.toFixed(1) : Math.round(sec)} s`;
  const min = Math.floor(sec / 60);
  if (min < 60) return `${min} min ${Math.round(sec % 60)} s`;
  const hours = Math.floor(min / 60);
  if (hours < 48) return `${hours} h ${min % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

export function relative(ms: number, now: number = Date.now()): string {
  const diff = now - ms;
  const abs = Math.abs(diff);
  const ago = diff >= 0;
  let text: string;
  if (abs < 5_000) return "just now";
  if (abs < 60_000) text = `${Math.round(abs / 1000)} s`;
  else if (abs < 3_600_000) text = `${Math.round(abs / 60_000)} min`;
  else if (abs < 86_400_000) text = `${Math.round(abs / 3_600_000)} h`;
  else text = `${Math.round(abs / 86_400_000)} d`;
  return ago ? `${text} ago` : `in ${text}`;
}

/** A <time> showing a relative time, the exact one on hover; kept fresh by refreshTimes(). */
export function timeEl(value: string | undefined): HTMLElement {
  const ms = parseTime(value);
  if (ms === null) return h("span", { class: "muted" }, "—");
  const el = h("time", { datetime: new Date(ms).toISOString(), title: new Date(ms).toLocaleString() });
  el.textContent = relative(ms);
  return el;
}

export function refreshTimes(root: ParentNode = document): void {
  for (const el of root.querySelectorAll("time[datetime]")) {
    const ms = Date.parse(el.getAttribute("datetime") ?? "");
    if (!Number.isNaN(ms)) el.textContent = relative(ms);
  }
}

export function shortStatus(status: string | undefined): string {
  if (!status) return "unknown";
  return status.replace(/^(RUN|STEP)_STATUS_/, "").toLowerCase();
}

export function badge(status: string | undefined): HTMLElement {
  const name = shortStatus(status);
  return h("span", { class: `badge st-${name}` }, name);
}

// -- clipboard -------------------------------------------------------------------------------

async function copyText(text: string): Promise<boolean> {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.appendChild(area);
    area.select();
    const ok = document.execCommand("copy");
    area.remove();
    return ok;
  }
}

function copyIcon(): SVGSVGElement {
  return s(
    "svg",
    { class: "icon", viewBox: "0 0 16 16", width: 14, height: 14, "aria-hidden": "true" },
    s("rect", { x: 5.5, y: 5.5, width: 8, height: 9, rx: 1.5 }),
    s("path", { d: "M3.5 10.5h-1a1 1 0 0 1-1-1v-7a1 1 0 0 1 1-1h6a1 1 0 0 1 1 1v1" }),
  );
}

export function copyButton(text: string, label = "id"): HTMLButtonElement {
  const button = h("button", { type: "button", class: "copy", title: `Copy ${label}`, "aria-label": `Copy ${label}` }, copyIcon());
  button.addEventListener("click", async (event) => {
    event.preventDefault();
    event.stopPropagation();
    const ok = await copyText(text);
    replace(button, ok ? "✓" : "!");
    button.classList.add("copied");
    window.setTimeout(() => {
      replace(button, copyIcon());
      button.classList.remove("copied");
    }, 1200);
  });
  return button;
}

/** An id in monospace with its copy button. */
export function idWithCopy(id: string, href?: string): HTMLElement {
  const text = href ? h("a", { href, class: "mono" }, id) : h("span", { class: "mono" }, id);
  return h("span", { class: "id" }, text, copyButton(id));
}

export function jsonText(value: unknown): string {
  return value === undefined ? "" : JSON.stringify(value, null, 2);
}

export function download(name: string, text: string): void {
  const url = URL.createObjectURL(new Blob([text], { type: "application/json" }));
  const link = h("a", { href: url, download: name, class: "offscreen" });
  document.body.appendChild(link);
  link.click();
  link.remove();
  window.setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
