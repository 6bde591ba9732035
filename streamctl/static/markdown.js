// markdown.js: a small Markdown renderer for agent text, safe by construction.
//
//   import { appendMarkdown, renderMarkdown } from "./markdown.js";
//   appendMarkdown(element, chunk);   // for each chunk as it streams
//   renderMarkdown(element, source);  // or a whole text at once
//
// It builds DOM nodes and sets text through text nodes only: agent text is never parsed as HTML,
// so `<img onerror=…>` shows as the characters it is. Links open in a new tab without access to
// this page (rel="noopener noreferrer") and only for http(s) and mailto URLs; any other link
// (javascript:, data:, …) is shown as its text. Images are shown as links (no request is made
// for what an agent names). Covered: headings, paragraphs (a newline is a line break), bullet
// and numbered lists, fenced code blocks, block quotes, rules, inline code,
// emphasis, strong, strikethrough, links, <autolinks> and bare web addresses.
//
// Streaming is incremental: appendMarkdown re-parses only from the second-to-last block on (the
// blocks before it are final), and a block whose source is unchanged keeps its nodes, so while
// text streams only the growing block is rebuilt.

const SAFE_PROTOCOLS = new Set(["http", "https", "mailto"]);
const rendered = new WeakMap(); // element -> the block key it was built from
const streams = new WeakMap(); // container -> {source, from, index}: where the next parse starts

/** Render ``source`` into ``container`` (reusing the nodes of unchanged blocks). */
export function renderMarkdown(container, source) {
  streams.delete(container);
  place(container, parseBlocks(source), 0);
}

/** Append streamed ``text`` to what ``container`` shows. */
export function appendMarkdown(container, text) {
  const state = streams.get(container) ?? { source: "", from: 0, index: 0 };
  state.source += text;
  const blocks = parseBlocks(state.source.slice(state.from));
  place(container, blocks, state.index);
  // Only the last line can still grow, and with it the last block, which may yet join the block
  // before it ("- one" then "-" becomes "- two"): the next parse starts at that one.
  if (blocks.length > 2) {
    state.from += blocks[blocks.length - 2].start;
    state.index += blocks.length - 2;
  }
  streams.set(container, state);
}

/** ``blocks`` as ``container``'s children from ``index`` on. */
function place(container, blocks, index) {
  blocks.forEach((block, i) => {
    const existing = container.children[index + i];
    if (existing && rendered.get(existing) === block.key) return;
    const node = renderBlock(block);
    rendered.set(node, block.key);
    if (existing) existing.replaceWith(node);
    else container.append(node);
  });
  while (container.children.length > index + blocks.length) container.lastElementChild.remove();
}

/** The URL if it is safe to follow (http, https, mailto), else null. @param {string} raw */
export function safeHref(raw) {
  let url;
  try {
    url = new URL(raw, document.baseURI);
  } catch {
    return null;
  }
  return SAFE_PROTOCOLS.has(url.protocol.slice(0, -1)) ? url.href : null;
}

// -- blocks -----------------------------------------------------------------------------------

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})(?:\s+(.*?))?\s*#*\s*$/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])\s+(.*)$/;
const QUOTE = /^ {0,3}>\s?(.*)$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;

/**
 * Split ``source`` into blocks: {kind, key, start, ...}, ``start`` being the offset of the block's
 * first line. An unclosed fence runs to the end (streaming).
 */
export function parseBlocks(source) {
  const parts = source.split(/(\r\n|\r|\n)/); // lines and the line ends between them
  const lines = [];
  const starts = [];
  for (let k = 0, at = 0; k < parts.length; k += 2) {
    lines.push(parts[k]);
    starts.push(at);
    at += parts[k].length + (parts[k + 1]?.length ?? 0);
  }
  const blocks = [];
  const push = (block, first) => blocks.push({ ...block, start: starts[first] });
  let i = 0;
  // What ends a paragraph: a new block; a numbered list only when it starts at 1 ("2024. was…").
  const startsBlock = (line) => {
    const item = ITEM.exec(line);
    if (item) return !/\d/.test(item[2]) || Number.parseInt(item[2], 10) === 1;
    return FENCE.test(line) || HEADING.test(line) || QUOTE.test(line) || RULE.test(line);
  };
  while (i < lines.length) {
    const line = lines[i];
    const first = i;
    let m;
    if (!line.trim()) {
      i += 1;
    } else if ((m = FENCE.exec(line))) {
      const fence = m[1];
      const body = [];
      i += 1;
      while (i < lines.length && !new RegExp(`^ {0,3}${fence[0]}{${fence.length},}\\s*$`).test(lines[i])) {
        body.push(lines[i]);
        i += 1;
      }
      const closed = i < lines.length;
      i += 1;
      push({ kind: "code", lang: m[2], text: body.join("\n"), key: `code${closed}:${m[2]}:${body.join("\n")}` }, first);
    } else if ((m = HEADING.exec(line))) {
      push({ kind: "heading", level: m[1].length, text: m[2] ?? "", key: `h:${line}` }, first);
      i += 1;
    } else if (RULE.test(line)) {
      push({ kind: "rule", key: "hr" }, first);
      i += 1;
    } else if ((m = ITEM.exec(line))) {
      const ordered = /\d/.test(m[2]);
      const items = [];
      while (i < lines.length) {
        const item = ITEM.exec(lines[i]);
        if (item && /\d/.test(item[2]) === ordered) {
          items.push(item[3]);
        } else if (lines[i].trim() && /^\s/.test(lines[i]) && items.length) {
          items[items.length - 1] += "\n" + lines[i].trim(); // a continuation line
        } else if (!lines[i].trim() && ITEM.exec(lines[i + 1] ?? "") && /\d/.test(ITEM.exec(lines[i + 1])[2]) === ordered) {
          // a blank line between two items of the same list: the list goes on
        } else {
          break;
        }
        i += 1;
      }
      const number = Number.parseInt(m[2], 10);
      push({ kind: "list", ordered, number, items, key: `list:${lines.slice(first, i).join("\n")}` }, first);
    } else if (QUOTE.test(line)) {
      const body = [];
      while (i < lines.length && (m = QUOTE.exec(lines[i]))) {
        body.push(m[1]);
        i += 1;
      }
      push({ kind: "quote", text: body.join("\n"), key: `quote:${body.join("\n")}` }, first);
    } else {
      const body = [line];
      i += 1;
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) {
        body.push(lines[i]);
        i += 1;
      }
      push({ kind: "paragraph", text: body.join("\n"), key: `p:${body.join("\n")}` }, first);
    }
  }
  return blocks;
}

function renderBlock(block) {
  switch (block.kind) {
    case "code": {
      const pre = document.createElement("pre");
      const code = document.createElement("code");
      if (block.lang) code.className = `language-${block.lang}`;
      code.textContent = block.text;
      pre.append(code);
      return pre;
    }
    case "heading":
      return withInline(document.createElement(`h${block.level}`), block.text);
    case "rule":
      return document.createElement("hr");
    case "list": {
      const list = document.createElement(block.ordered ? "ol" : "ul");
      if (block.ordered && block.number !== 1) list.start = block.number;
      for (const item of block.items) list.append(withInline(document.createElement("li"), item));
      return list;
    }
    case "quote": {
      const quote = document.createElement("blockquote");
      renderMarkdown(quote, block.text);
      return quote;
    }
    default:
      return withInline(document.createElement("p"), block.text);
  }
}

// -- inline -----------------------------------------------------------------------------------

const ESCAPABLE = /[!-/:-@[-`{-~]/;
const CODE_SPAN = /^(`+)([^`][\s\S]*?)\1(?!`)/;
const LINK = /^!?\[((?:\\.|[^\]\\])*)\]\(\s*<?([^\s<>()]*(?:\([^\s<>()]*\)[^\s<>()]*)*)>?(?:\s+"[^"]*")?\s*\)/;
const AUTOLINK = /^<([a-z][a-z0-9+.-]{1,31}:[^\s<>]+)>/i;
const BARE_URL = /^https?:\/\/[^\s<]*[^\s<.,:;"')\]!?*_~]/i;
// `_` is not emphasis inside a word (snake_case, __dunder__ in code-like text).
const STRONG = /^(\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__(?!\w))/;
const EMPHASIS = /^([*_])(?=[^\s*_])([\s\S]*?[^\s\\])\1(?![*_\w])/;
const STRIKE = /^~~(?=\S)([\s\S]*?\S)~~/;

function withInline(element, text) {
  appendInline(element, text, true);
  return element;
}

/** Append ``text``'s inline Markdown to ``parent`` (links only where ``links`` allows them). */
function appendInline(parent, text, links) {
  let plain = "";
  const flush = () => {
    if (plain) parent.append(plain); // a string becomes a text node: never parsed as HTML
    plain = "";
  };
  const add = (node) => {
    flush();
    parent.append(node);
  };
  let i = 0;
  while (i < text.length) {
    const c = text[i];
    const rest = text.slice(i);
    const wordBefore = i > 0 && /\w/.test(text[i - 1]);
    let m;
    if (c === "\\" && ESCAPABLE.test(text[i + 1] ?? "")) {
      plain += text[i + 1];
      i += 2;
    } else if (c === "\n") {
      add(document.createElement("br"));
      i += 1;
    } else if (c === "`" && (m = CODE_SPAN.exec(rest))) {
      const code = document.createElement("code");
      code.textContent = m[2];
      add(code);
      i += m[0].length;
    } else if (links && (c === "[" || (c === "!" && text[i + 1] === "[")) && (m = LINK.exec(rest))) {
      add(link(m[1], m[2].replace(/\\(.)/g, "$1")));
      i += m[0].length;
    } else if (links && c === "<" && (m = AUTOLINK.exec(rest))) {
      add(link(null, m[1]));
      i += m[0].length;
    } else if (links && !wordBefore && (c === "h" || c === "H") && (m = BARE_URL.exec(rest))) {
      let url = m[0];
      const open = url.split("(").length - url.split(")").length;
      if (open > 0 && rest[url.length] === ")") url += ")"; // wiki-style: …/Foo_(bar)
      add(link(null, url));
      i += url.length;
    } else if ((c === "*" || (c === "_" && !wordBefore)) && (m = STRONG.exec(rest))) {
      add(styled("strong", m[2] ?? m[3], links));
      i += m[0].length;
    } else if ((c === "*" || (c === "_" && !wordBefore)) && (m = EMPHASIS.exec(rest))) {
      add(styled("em", m[2], links));
      i += m[0].length;
    } else if (c === "~" && (m = STRIKE.exec(rest))) {
      add(styled("del", m[1], links));
      i += m[0].length;
    } else {
      plain += c;
      i += 1;
    }
  }
  flush();
}

function styled(tag, text, links) {
  const element = document.createElement(tag);
  appendInline(element, text, links);
  return element;
}

/** A link to ``href`` if it is safe; otherwise its label as plain text. */
function link(label, href) {
  const url = safeHref(href);
  const element = document.createElement(url ? "a" : "span");
  if (label === null) element.textContent = href;
  else appendInline(element, label, false); // no link inside a link
  if (url) {
    element.href = url;
    element.target = "_blank";
    element.rel = "noopener noreferrer";
  } else {
    element.className = "unsafe-link";
    element.title = "link not followed (only http, https and mailto links are)";
  }
  return element;
}
