// The page at `/`: a chat with the agent, built on streamctl.js.
// The thread id lives in localStorage, so a reload (or a new tab) continues the conversation:
// the page renders the thread's checkpoint, and if a run is active it renders that run's
// snapshot and resumes its stream after the snapshot's last_seq: no word repeated, none missing.
// Agent text is Markdown, rendered by markdown.js into DOM nodes (never as HTML); reasoning is
// folded away, tool calls and custom events are one line each.
import { StreamctlClient } from "./streamctl.js";
import { appendMarkdown } from "./markdown.js";

// Relative to where the page is served: streamctl may be mounted under a prefix (`/agent/`).
const client = new StreamctlClient({ baseUrl: new URL(".", document.baseURI).pathname });
const $ = (id) => document.getElementById(id);
const scroller = $("transcript");
const log = $("log");
const form = $("composer");
const input = $("message");
const send = $("send");
const stopButton = $("stop");
const connection = $("connection");
const reasonings = new WeakMap(); // a reasoning segment -> its text so far
const COMPACT = 240; // characters of a tool result or custom event shown on its line

let threadId = localStorage.getItem("streamctl.thread");
let activeRunId = null;

/** Keep the newest text in view while new output arrives, unless the user scrolled up. */
function update(change) {
  const following = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 48;
  change();
  if (following) scroller.scrollTop = scroller.scrollHeight;
}

function bubble(role, text = "") {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  div.append(body);
  update(() => {
    if (role === "user") body.textContent = text; // what the user typed, as typed
    else if (text) appendText(div, "m", text);
    log.append(div);
  });
  scroller.scrollTop = scroller.scrollHeight; // a new message always comes into view
  return div;
}

/** The bubble's segment of ``kind`` for message ``id`` (created at the end of the bubble). */
function segment(view, kind, id, create) {
  const body = view.querySelector(".body");
  for (const node of body.children) {
    if (node.classList.contains(kind) && node.dataset.id === id) return node;
  }
  const node = create();
  node.classList.add(kind);
  node.dataset.id = id;
  body.append(node);
  return node;
}

/** Text of message ``id``, rendered as Markdown as it streams. */
function appendText(view, id, text) {
  appendMarkdown(segment(view, "text", id, () => document.createElement("div")), text);
}

/** Reasoning before message ``id``, folded away (a summary the user may open). */
function appendReasoning(view, id, text) {
  const node = segment(view, "reasoning", id, () => {
    const details = document.createElement("details");
    const summary = document.createElement("summary");
    summary.textContent = "Reasoning";
    const content = document.createElement("div");
    content.className = "reasoning-text";
    details.append(summary, content);
    return details;
  });
  const source = (reasonings.get(node) ?? "") + text;
  reasonings.set(node, source);
  node.querySelector(".reasoning-text").textContent = source;
}

/** A JSON value as one short line: strings as they are, anything else as JSON. */
function compact(value, limit = COMPACT) {
  const text = typeof value === "string" ? value : JSON.stringify(value) ?? "";
  return text.length > limit ? `${text.slice(0, limit - 1)}…` : text;
}

function note(view, className, text, title = text) {
  const line = document.createElement("div");
  line.className = className;
  line.textContent = text;
  if (title !== text) line.title = title;
  view.querySelector(".body").append(line);
  return line;
}

/** Render a run's output (a snapshot): messages, reasoning and tool calls in the order they began. */
function renderOutput(view, output) {
  const parts = [
    ...output.messages.map((m) => ({ seq: m.seq, text: m })),
    ...(output.reasoning ?? []).map((r) => ({ seq: r.seq, reasoning: r })),
    ...output.tool_calls.map((c) => ({ seq: c.seq, call: c })),
  ].sort((a, b) => a.seq - b.seq);
  for (const part of parts) {
    if (part.call) showTool(view, part.call.call_id, part.call.name, part.call.args, part.call.output, part.call.output === null);
    else if (part.reasoning) appendReasoning(view, part.reasoning.message_id, part.reasoning.content);
    else appendText(view, part.text.message_id, part.text.content);
  }
  if (output.interrupt) showInterrupt(view, output.interrupt.value);
}

function showStatus(view, status) {
  let badge = view.querySelector(".status");
  if (!badge) {
    badge = document.createElement("span");
    badge.className = "status";
    view.append(badge);
  }
  badge.dataset.status = status;
  badge.textContent = status.replace("_", " ");
}

function showTool(view, callId, name, args, output, running) {
  const line = segment(view, "tool", callId, () => document.createElement("div"));
  line.dataset.call = callId;
  line.dataset.state = running ? "running" : "done";
  if (args && typeof args === "object") line.dataset.where = Object.values(args).map((v) => compact(v, 80)).join(", ");
  const where = line.dataset.where ?? "";
  const full = running ? "" : compact(output, Infinity);
  line.textContent = running ? `Calling ${name}(${where})…` : `${name}(${where}) → ${compact(output)}`;
  if (full.length > COMPACT) line.title = full;
}

function showCustom(view, name, data) {
  const line = note(view, "custom", "");
  line.dataset.name = name;
  const label = document.createElement("span");
  label.className = "name";
  label.textContent = name;
  line.append(label, ` ${compact(data)}`);
}

function showInterrupt(view, value) {
  note(view, "interrupt", `Waiting for your answer: ${compact(value)}`);
}

function setActive(runId) {
  activeRunId = runId;
  stopButton.disabled = runId === null;
  send.disabled = runId !== null;
}

/** Render events into an assistant bubble until `done`. */
async function follow(view, events) {
  try {
    for await (const event of events) {
      if (navigator.onLine) connection.textContent = ""; // keep the offline notice while offline
      const data = event.data;
      update(() => {
        if (event.type === "run") {
          setActive(data.run_id);
          view.dataset.run = data.run_id;
          showStatus(view, data.status);
        } else if (event.type === "message_chunk") {
          appendText(view, data.message_id, data.content);
        } else if (event.type === "reasoning_chunk") {
          appendReasoning(view, data.message_id, data.content);
        } else if (event.type === "tool_start") {
          showTool(view, data.call_id, data.name, data.args, null, true);
        } else if (event.type === "tool_end") {
          showTool(view, data.call_id, data.name, null, data.output, false);
        } else if (event.type === "custom") {
          showCustom(view, data.name, data.data);
        } else if (event.type === "interrupt") {
          showInterrupt(view, data.value);
        } else if (event.type === "error") {
          note(view, "error", `Error: ${data.message}`);
        } else if (event.type === "done") {
          showStatus(view, data.status);
        }
      });
    }
  } catch (error) {
    connection.textContent = `Stream failed: ${error.message}`;
  } finally {
    setActive(null);
  }
}

async function restore() {
  $("thread-id").textContent = threadId ?? "new";
  if (!threadId) return;
  let thread;
  try {
    thread = await client.getThread(threadId);
  } catch (error) {
    if (error.status === 404) return; // a thread that was never created: start afresh
    connection.textContent = `Could not load the conversation: ${error.message}`;
    return;
  }
  const active = thread.active_run;
  for (const message of thread.messages) {
    // A run's last message carries its whole output (text, tool calls and results in order):
    // the run's other messages (each model message, each tool result) are drawn from it.
    if (message.role !== "user" && !message.output) continue;
    if (active && message.run_id === active.run_id && message.role !== "user") continue;
    const view = bubble(message.role === "user" ? "user" : "assistant", message.output ? "" : message.content);
    if (message.output) renderOutput(view, message.output);
    if (message.status) showStatus(view, message.status);
  }
  if (active) {
    // The snapshot describes exactly the events up to last_seq; the stream continues after it.
    const view = bubble("assistant");
    view.dataset.run = active.run_id;
    renderOutput(view, active.output);
    showStatus(view, active.status);
    setActive(active.run_id);
    await follow(view, client.stream(active.run_id, { after: active.last_seq }));
  }
  scroller.scrollTop = scroller.scrollHeight;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const content = input.value.trim();
  if (!content || activeRunId) return;
  if (!threadId) {
    threadId = crypto.randomUUID();
    localStorage.setItem("streamctl.thread", threadId);
    $("thread-id").textContent = threadId;
  }
  input.value = "";
  bubble("user", content);
  const view = bubble("assistant");
  send.disabled = true;
  const body = { thread_id: threadId, input: { messages: [{ role: "user", content }] } };
  try {
    await follow(view, client.startStream(body));
  } catch (error) {
    connection.textContent = error.message;
    setActive(null);
  }
  input.focus();
});

async function stopActive() {
  if (!activeRunId) return;
  stopButton.disabled = true;
  try {
    await client.stop(activeRunId); // resolves once the run has stopped on the server
  } catch (error) {
    connection.textContent = `Stop failed: ${error.message}`;
    stopButton.disabled = false;
  }
}

stopButton.addEventListener("click", stopActive);
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") stopActive();
});
$("new-thread").addEventListener("click", () => {
  if (activeRunId) return;
  localStorage.removeItem("streamctl.thread");
  threadId = null;
  log.replaceChildren();
  $("thread-id").textContent = "new";
  input.focus();
});
window.addEventListener("offline", () => (connection.textContent = "Offline: waiting to resume…"));
window.addEventListener("online", () => (connection.textContent = "Back online: resuming…"));

restore();
