// A form generated from a JSON Schema (pydantic's draft 2020-12 output): objects become
// fieldsets, strings/numbers text inputs, enums selects, booleans checkboxes, anything else a
// JSON text area. The API does the validating: its BadRequest field violations are shown
// under the fields they name ("resume_data.score" lands under "score").

import type { FieldViolation } from "./api";
import { h, jsonText } from "./dom";
import type { Json, JsonSchema } from "./types";
import { isObject } from "./types";

interface Field {
  path: string;
  read(): Json | undefined;
  error: HTMLElement;
  input: HTMLElement | null;
}

class InvalidJson extends Error {}

export interface SchemaFormOptions {
  schema: JsonSchema | undefined;
  initial: Json | undefined;
  // The request field the value travels in, as violations name it: "resume_data".
  field: string;
  submitLabel: string;
  idPrefix: string;
  // Extra controls placed before the submit button (resource id, per-step switch...).
  extra?: HTMLElement[];
  submit(value: Json): Promise<void>;
}

let counter = 0;

export class SchemaForm {
  readonly element: HTMLFormElement;
  private readonly fields: Field[] = [];
  private readonly root: JsonSchema;
  private readonly message: HTMLElement;
  private readonly raw: HTMLTextAreaElement;
  private readonly generated: HTMLElement;
  private rawMode: boolean;
  private readonly button: HTMLButtonElement;

  constructor(private readonly options: SchemaFormOptions) {
    this.root = options.schema ?? {};
    const schema = this.resolve(this.root);
    this.generated = h("div", { class: "fields" });
    const structured = schema["type"] === "object" && isObject(schema["properties"]);
    if (structured) {
      this.objectFields(schema, isObject(options.initial) ? options.initial : {}, "", this.generated);
    }
    this.raw = h("textarea", {
      class: "json-input",
      rows: 8,
      spellcheck: "false",
      "aria-label": "value as JSON",
      id: `${options.idPrefix}-json`,
    });
    this.raw.value = jsonText(options.initial ?? (structured ? {} : null));
    this.rawMode = !structured;
    this.message = h("div", { class: "form-error", role: "alert" });
    this.button = h("button", { type: "submit", class: "primary" }, options.submitLabel);
    const toggle = h("button", { type: "button", class: "link" }, structured ? "Edit as JSON" : "");
    toggle.addEventListener("click", () => this.setRaw(!this.rawMode, toggle));
    this.element = h(
      "form",
      { class: "schema-form", novalidate: true, id: options.idPrefix },
      this.generated,
      this.raw,
      ...(options.extra ?? []),
      this.message,
      h("div", { class: "form-actions" }, this.button, structured ? toggle : null),
    );
    this.setRaw(this.rawMode, toggle);
    this.element.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.onSubmit();
    });
  }

  private setRaw(raw: boolean, toggle: HTMLButtonElement): void {
    if (raw && !this.rawMode) {
      try {
        this.raw.value = jsonText(this.collect());
      } catch {
        /* keep what the text area had */
      }
    }
    this.rawMode = raw;
    this.generated.hidden = raw;
    this.raw.hidden = !raw;
    toggle.textContent = raw ? "Edit as form" : "Edit as JSON";
  }

  private async onSubmit(): Promise<void> {
    this.clearErrors();
    let value: Json;
    try {
      value = this.collect();
    } catch (err) {
      if (err instanceof InvalidJson) return;
      throw err;
    }
    this.button.disabled = true;
    try {
      await this.options.submit(value);
    } finally {
      this.button.disabled = false;
    }
  }

  collect(): Json {
    if (this.rawMode) {
      try {
        return JSON.parse(this.raw.value || "null") as Json;
      } catch {
        this.fail("not valid JSON");
        throw new InvalidJson();
      }
    }
    const value: { [key: string]: Json } = {};
    for (const field of this.fields) {
      const v = field.read();
      if (v !== undefined) setPath(value, field.path.split("."), v);
    }
    return value;
  }

  fail(message: string): void {
    this.message.textContent = message;
  }

  clearErrors(): void {
    this.message.textContent = "";
    for (const field of this.fields) {
      field.error.textContent = "";
      field.input?.removeAttribute("aria-invalid");
    }
  }

  /** Show an API error: each violation under its field, the rest as the form's message. */
  showViolations(message: string, violations: FieldViolation[]): void {
    this.clearErrors();
    const loose: string[] = [];
    for (const violation of violations) {
      const path = stripPrefix(violation.field, this.options.field);
      const field = this.rawMode ? undefined : this.findField(path);
      if (field) {
        field.error.textContent = field.error.textContent
          ? `${field.error.textContent}; ${violation.description}`
          : violation.description;
        field.input?.setAttribute("aria-invalid", "true");
      } else {
        loose.push(path ? `${path}: ${violation.description}` : violation.description);
      }
    }
    this.message.textContent = loose.length ? `${message} — ${loose.join("; ")}` : violations.length ? "" : message;
    (this.element.querySelector("[aria-invalid=true]") as HTMLElement | null)?.focus();
  }

  private findField(path: string): Field | undefined {
    // The longest field path that is the violation's path or a prefix of it.
    let best: Field | undefined;
    for (const field of this.fields) {
      if (path === field.path || path.startsWith(`${field.path}.`) || path.startsWith(`${field.path}[`)) {
        if (!best || field.path.length > best.path.length) best = field;
      }
    }
    return best;
  }

  // -- building ------------------------------------------------------------------------------

  private resolve(schema: JsonSchema): JsonSchema {
    let current = schema;
    for (let depth = 0; depth < 20; depth++) {
      const ref = current["$ref"];
      if (typeof ref === "string" && ref.startsWith("#/")) {
        let target: Json = this.root;
        for (const part of ref.slice(2).split("/")) target = isObject(target) ? (target[part] ?? null) : null;
        if (!isObject(target)) return current;
        const { $ref: _ignored, ...rest } = current;
        current = { ...target, ...rest };
        continue;
      }
      const union = current["anyOf"] ?? current["oneOf"];
      if (Array.isArray(union)) {
        const options = union.filter(isObject).filter((o) => o["type"] !== "null");
        if (options.length === 1 && options[0]) {
          const { anyOf: _a, oneOf: _o, ...rest } = current;
          current = { ...options[0], ...rest, nullable: true };
          continue;
        }
      }
      const all = current["allOf"];
      if (Array.isArray(all) && all.length === 1 && isObject(all[0])) {
        const { allOf: _a, ...rest } = current;
        current = { ...all[0], ...rest };
        continue;
      }
      return current;
    }
    return current;
  }

  private objectFields(schema: JsonSchema, initial: { [key: string]: Json }, prefix: string, into: HTMLElement): void {
    const properties = isObject(schema["properties"]) ? schema["properties"] : {};
    const required = new Set(Array.isArray(schema["required"]) ? schema["required"].map(String) : []);
    // JSON objects (and a Struct on the wire) don't keep the model's field order: required
    // fields first, in the schema's `required` order (a list, so kept), then the rest by name.
    const order = [...required];
    const rank = (name: string): number => (order.includes(name) ? order.indexOf(name) : order.length);
    const names = Object.keys(properties).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
    for (const name of names) {
      const raw = properties[name];
      if (!isObject(raw)) continue;
      const property = this.resolve(raw);
      const path = prefix ? `${prefix}.${name}` : name;
      const start = name in initial ? initial[name] : property["default"];
      if (property["type"] === "object" && isObject(property["properties"])) {
        const set = h("fieldset", { class: "nested" }, h("legend", null, String(property["title"] ?? name)));
        this.objectFields(property, isObject(start) ? start : {}, path, set);
        into.appendChild(set);
        continue;
      }
      into.appendChild(this.field(name, path, property, start, required.has(name)));
    }
  }

  private field(name: string, path: string, schema: JsonSchema, start: Json | undefined, required: boolean): HTMLElement {
    const id = `${this.options.idPrefix}-f${++counter}`;
    const error = h("div", { class: "field-error", id: `${id}-error`, "aria-live": "polite" });
    const type = schema["type"];
    const title = String(schema["title"] ?? name);
    const hint = typeof schema["description"] === "string" ? schema["description"] : "";
    const common = { id, name: path, "aria-describedby": `${id}-error`, "data-field": path };
    let input: HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement;
    let read: () => Json | undefined;
    const optional = !required;
    if (Array.isArray(schema["enum"])) {
      const select = h("select", common, optional ? h("option", { value: "" }, "—") : null);
      schema["enum"].forEach((option, index) => {
        const opt = h("option", { value: String(index) }, JSON.stringify(option));
        if (JSON.stringify(option) === JSON.stringify(start)) opt.selected = true;
        select.appendChild(opt);
      });
      const values = schema["enum"];
      read = () => (select.value === "" ? undefined : values[Number(select.value)]);
      input = select;
    } else if (type === "boolean") {
      const box = h("input", { ...common, type: "checkbox" });
      box.checked = start === true;
      read = () => box.checked;
      input = box;
    } else if (type === "string" || type === "number" || type === "integer") {
      const numeric = type !== "string";
      const text = h("input", {
        ...common,
        type: "text",
        inputmode: numeric ? (type === "integer" ? "numeric" : "decimal") : null,
        autocomplete: "off",
        spellcheck: numeric ? "false" : null,
      });
      if (start !== undefined && start !== null) text.value = String(start);
      read = () => {
        const value = text.value;
        if (value === "") return optional ? undefined : numeric ? undefined : "";
        if (!numeric) return value;
        const n = Number(value.trim());
        // Not a number: send it as typed, so the API's own message names the problem.
        return value.trim() !== "" && Number.isFinite(n) ? n : value;
      };
      input = text;
    } else {
      const area = h("textarea", { ...common, rows: 3, spellcheck: "false", class: "json-input" });
      area.value = start === undefined ? "" : jsonText(start);
      read = () => {
        if (area.value.trim() === "") return undefined;
        try {
          return JSON.parse(area.value) as Json;
        } catch {
          error.textContent = "not valid JSON";
          area.setAttribute("aria-invalid", "true");
          throw new InvalidJson();
        }
      };
      input = area;
    }
    this.fields.push({ path, read, error, input });
    const label = h("label", { for: id }, title, required ? h("span", { class: "required", title: "required" }, " *") : null);
    const kind = Array.isArray(schema["enum"]) ? "choice" : typeof type === "string" ? type : "JSON";
    return h(
      "div",
      { class: `field field-${type === "boolean" ? "check" : "text"}` },
      label,
      input,
      h("span", { class: "field-hint" }, hint ? `${kind} — ${hint}` : kind),
      error,
    );
  }
}

function stripPrefix(field: string, prefix: string): string {
  const camel = prefix.replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
  for (const p of [prefix, camel]) {
    if (field === p) return "";
    if (field.startsWith(`${p}.`)) return field.slice(p.length + 1);
    if (field.startsWith(`${p}[`)) return field.slice(p.length);
  }
  return field;
}

function setPath(target: { [key: string]: Json }, parts: string[], value: Json): void {
  let node = target;
  parts.forEach((part, index) => {
    if (index === parts.length - 1) {
      node[part] = value;
      return;
    }
    const next = node[part];
    if (!isObject(next)) node[part] = {};
    node = node[part] as { [key: string]: Json };
  });
}
