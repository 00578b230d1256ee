// Renders /openapi.json as a browsable list of routes. Text only goes through
// textContent, never innerHTML, so nothing in the description can inject markup.
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  for (const child of children) {
    node.append(typeof child === "string" ? document.createTextNode(child) : child);
  }
  return node;
}

function resolve(spec, schema, depth) {
  if (!schema || depth > 6) return schema || {};
  if (schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return resolve(spec, spec.components.schemas[name], depth + 1);
  }
  return schema;
}

function typeOf(spec, schema, depth) {
  const s = resolve(spec, schema, depth);
  if (s.anyOf) return s.anyOf.map((x) => typeOf(spec, x, depth + 1)).join(" | ");
  if (s.enum) return s.enum.map((x) => JSON.stringify(x)).join(" | ");
  if (s.type === "array") return typeOf(spec, s.items, depth + 1) + "[]";
  if (s.title && s.properties) return s.title;
  return s.type || "any";
}

function fieldsTable(spec, schema) {
  const s = resolve(spec, schema, 0);
  if (!s.properties) return el("pre", {}, typeOf(spec, schema, 0));
  const required = new Set(s.required || []);
  const rows = Object.entries(s.properties).map(([name, prop]) =>
    el("tr", {}, el("td", {}, el("code", {}, name)), el("td", {}, typeOf(spec, prop, 0)),
      el("td", {}, required.has(name) ? "required" : ""),
      el("td", {}, (resolve(spec, prop, 0).description || ""))));
  return el("table", {}, el("tr", {}, el("th", {}, "field"), el("th", {}, "type"),
    el("th", {}, ""), el("th", {}, "")), ...rows);
}

function parameters(op) {
  if (!op.parameters || !op.parameters.length) return null;
  const rows = op.parameters.map((p) => el("tr", {}, el("td", {}, el("code", {}, p.name)),
    el("td", {}, p.in), el("td", {}, p.schema.enum ? p.schema.enum.join(" | ") : p.schema.type),
    el("td", {}, p.required ? "required" : "optional")));
  return el("div", {}, el("h4", {}, "Parameters"), el("table", {}, ...rows));
}

function operation(spec, path, method, op) {
  const body = el("div", {});
  const params = parameters(op);
  if (params) body.append(params);
  const request = op.requestBody && op.requestBody.content["application/json"];
  if (request) body.append(el("h4", {}, "Request body"), fieldsTable(spec, request.schema));
  for (const [status, response] of Object.entries(op.responses)) {
    const content = response.content || {};
    const [media, entry] = Object.entries(content)[0] || ["", {}];
    body.append(el("h4", {}, `Response ${status} ${media}`));
    if (entry && entry.schema) body.append(fieldsTable(spec, entry.schema));
  }
  const summary = el("summary", {}, el("span", { class: "method " + method }, method.toUpperCase()),
    el("span", { class: "path" }, path), " — " + (op.summary || ""),
    el("span", { class: "level" }, op["x-access-level"] || ""));
  return el("details", { class: "op", "data-key": `${method} ${path}`.toLowerCase() },
    summary, body);
}

function render(spec) {
  const main = document.getElementById("routes");
  const toc = document.getElementById("toc");
  main.textContent = "";
  const groups = new Map();
  for (const [path, methods] of Object.entries(spec.paths)) {
    for (const [method, op] of Object.entries(methods)) {
      const tag = (op.tags && op.tags[0]) || "other";
      if (!groups.has(tag)) groups.set(tag, []);
      groups.get(tag).push(operation(spec, path, method, op));
    }
  }
  for (const [tag, ops] of groups) {
    main.append(el("h2", { id: "tag-" + tag }, tag), ...ops);
    toc.append(el("a", { href: "#tag-" + tag }, tag));
  }
}

function filter(text) {
  const needle = text.trim().toLowerCase();
  for (const op of document.querySelectorAll("details.op")) {
    op.hidden = needle !== "" && !op.dataset.key.includes(needle);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("filter").addEventListener("input", (e) => filter(e.target.value));
  fetch("/openapi.json")
    .then((r) => r.json())
    .then(render)
    .catch((err) => { document.getElementById("loading").textContent = "Failed: " + err; });
});
