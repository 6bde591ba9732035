// The page at `/`: a chat with the agent, built on streamctl.js.
// The thread id lives in localStorage, so a reload (or a new tab) continues the conversation:
// the page renders the thread's checkpoint, and if a run is active it renders that run's
// snapshot and resumes its stream after the snapshot's last_seq: no word repeated, none missing.
import { StreamctlClient } from "./streamctl.js";

// Relative to where the page is served: streamctl may be mounted under a prefix (`/agent/`).
const client = new StreamctlClient({ baseUrl: new URL(".", document.baseURI).pathname });
const $ = (id) => document.getElementById(id);
const log = $("log");
const form = $("composer");
const input = $("message");
const send = $("send");
const stopButton = $("stop");
const connection = $("connection");

let threadId = localStorage.getItem("streamctl.thread");
let activeRunId = null;

function bubble(role, text = "") {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  const body = document.createElement("div");
  body.className = "body";
  div.append(body);
  if (text) appendText(div, text);
  log.append(div);
  div.scrollIntoView({ block: "end" });
  return div;
}

/** Text goes into the bubble's last text segment; after a tool line, a new segment starts. */
function appendText(view, text) {
  const body = view.querySelector(".body");
  let last = body.lastElementChild;
  if (!last || !last.classList.contains("text")) {
    last = document.createElement("span");
    last.className = "text";
    body.append(last);
  }
  last.textContent += text;
}

/** Render a run's output (a snapshot): messages and tool calls in the order they began. */
function renderOutput(view, output) {
  const parts = [
    ...output.messages.map((m) => ({ seq: m.seq, text: m.content })),
    ...output.tool_calls.map((c) => ({ seq: c.seq, call: c })),
  ].sort((a, b) => a.seq - b.seq);
  for (const part of parts) {
    if (part.call) showTool(view, part.call.call_id, part.call.name, part.call.args, part.call.output, part.call.output === null);
    else appendText(view, part.text);
  }
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
  let line = view.querySelector(`.tool[data-call="${CSS.escape(callId)}"]`);
  if (!line) {
    line = document.createElement("div");
    line.className = "tool";
    line.dataset.call = callId;
    view.querySelector(".body").append(line);
  }
  line.dataset.state = running ? "running" : "done";
  if (args && typeof args === "object") line.dataset.where = Object.values(args).join(", ");
  const where = line.dataset.where ?? "";
  line.textContent = running ? `Calling ${name}(${where})…` : `${name}(${where}) → ${output}`;
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
      if (event.type === "run") {
        setActive(event.data.run_id);
        view.dataset.run = event.data.run_id;
        showStatus(view, event.data.status);
      } else if (event.type === "message_chunk") {
        appendText(view, event.data.content);
      } else if (event.type === "tool_start") {
        showTool(view, event.data.call_id, event.data.name, event.data.args, null, true);
      } else if (event.type === "tool_end") {
        showTool(view, event.data.call_id, event.data.name, null, event.data.output, false);
      } else if (event.type === "error") {
        const line = document.createElement("div");
        line.className = "tool";
        line.textContent = `Error: ${event.data.message}`;
        view.querySelector(".body").append(line);
      } else if (event.type === "done") {
        showStatus(view, event.data.status);
      }
      view.scrollIntoView({ block: "end" });
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
    if (active && message.run_id === active.run_id && message.role === "assistant") continue;
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
