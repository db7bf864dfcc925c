// A small OpenAPI viewer: lists the documents, renders a chosen one's description,
// operations, parameters and responses. Plain DOM, no outside resources.
"use strict";

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = text;
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}

// Markdown is shown as preformatted text: enough for headings and lists, and never HTML.
function prose(text) {
  return el("pre", text);
}

function resolve(doc, schema) {
  if (schema && schema.$ref) {
    const name = schema.$ref.split("/").pop();
    return { name, schema: doc.components.schemas[name] };
  }
  return { name: null, schema };
}

function schemaText(doc, schema) {
  const { name, schema: resolved } = resolve(doc, schema);
  return (name ? `${name}: ` : "") + JSON.stringify(resolved, null, 2);
}

function renderOperation(doc, path, method, op, shared) {
  const box = el("section", null, { class: "op" });
  const heading = el("h3");
  heading.append(el("span", method, { class: "method" }), el("code", path));
  box.append(heading, el("p", op.summary || ""));
  const params = [...(shared || []), ...(op.parameters || [])];
  if (params.length) {
    const table = el("table");
    table.append(el("caption", "Parameters"));
    for (const p of params) {
      const row = el("tr");
      row.append(el("th", p.name, { scope: "row" }), el("td", p.in), el("td", p.description || ""));
      table.append(row);
    }
    box.append(table);
  }
  if (op.requestBody) {
    const content = op.requestBody.content["application/json"];
    box.append(el("h4", "Request body"), el("pre", schemaText(doc, content.schema)));
  }
  box.append(el("h4", "Responses"));
  const list = el("dl");
  for (const [status, answer] of Object.entries(op.responses)) {
    list.append(el("dt", status), el("dd", answer.description || ""));
    const content = answer.content && Object.values(answer.content)[0];
    if (content && content.schema && Number(status) < 300) {
      const details = el("details");
      details.append(el("summary", "Schema"), el("pre", schemaText(doc, content.schema)));
      const holder = el("dd");
      holder.append(details);
      list.append(holder);
    }
  }
  box.append(list);
  return box;
}

async function show(file) {
  const main = document.getElementById("document");
  const response = await fetch(`/api/docs/v1/${file}`);
  if (!response.ok) {
    main.replaceChildren(el("p", `Could not load ${file} (HTTP ${response.status}).`));
    return;
  }
  const doc = await response.json();
  const parts = [el("h2", doc.info.title), prose(doc.info.description)];
  const server = doc.servers && doc.servers[0] ? doc.servers[0].url : "/";
  parts.push(el("p", `Base path: ${server} · raw document: /api/docs/v1/${file}`));
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      if (item[method]) parts.push(renderOperation(doc, path, method, item[method], item.parameters));
    }
  }
  main.replaceChildren(...parts);
  document.title = `${doc.info.title} · URR API`;
}

async function start() {
  const response = await fetch("/api/docs/v1/index.json");
  const { documents } = await response.json();
  const list = document.getElementById("documents");
  for (const { file, title } of documents) {
    const item = el("li");
    const link = el("a", title, { href: `#${file}` });
    item.append(link);
    list.append(item);
  }
  const pick = () => show(location.hash.slice(1) || documents[0].file);
  window.addEventListener("hashchange", pick);
  pick();
}

document.addEventListener("DOMContentLoaded", start);
