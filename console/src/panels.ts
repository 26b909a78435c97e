// Collapsible JSON panels. Their open/closed state survives re-rendering (the run page
// re-renders on every event), so a panel a person opened stays open.

import { copyButton, h, jsonText } from "./dom";

export class PanelMemory {
  private readonly open = new Set<string>();

  panel(key: string, title: string, value: unknown, options: { empty?: string; startOpen?: boolean } = {}): HTMLDetailsElement {
    const text = jsonText(value);
    const present = value !== undefined && value !== null && text !== "{}";
    if (options.startOpen && present && !this.open.has(`!${key}`)) this.open.add(key);
    const details = h(
      "details",
      { class: "json-panel", "data-panel": key },
      h(
        "summary",
        null,
        h("span", { class: "panel-title" }, title),
        present ? null : h("span", { class: "muted" }, ` ${options.empty ?? "none"}`),
        present ? copyButton(text, title) : null,
      ),
      h("pre", { class: "json" }, present ? text : options.empty ?? "none"),
    );
    details.open = this.open.has(key);
    details.addEventListener("toggle", () => {
      if (details.open) {
        this.open.add(key);
        this.open.delete(`!${key}`);
      } else {
        this.open.delete(key);
        this.open.add(`!${key}`);
      }
    });
    return details;
  }
}
