// The Chute page: sign in, jobs, uploads, live job status and results.
// Plain DOM, no framework; the upload protocol lives in uploader.js.
import { adminLink, openAdmin } from "./admin.js";
import { openTokens } from "./tokens.js";
import { formatBytes, showQuota } from "./quota.js";
import { inspectCsv, Uploader, UploadMemory } from "./uploader.js";

const FINAL = new Set(["succeeded", "failed", "cancelled", "upload_expired"]);
const TAKES_DATA = new Set(["awaiting_upload", "uploading"]);
const POLL_MS = 2000;
const PAGE_SIZE = 25;

const $ = (id) => document.getElementById(id);

/** Everything the page keeps while open; nothing of it is on `window`. */
const state = {
  me: null,
  config: null,
  memory: null,
  uploads: new Map(), // jobId -> Uploader, across page views
  views: new WeakMap(), // Uploader -> AbortController of the listeners of its shown view
  offset: 0,
  watch: null, // the job view's live status: {jobId, stop()}
  jobId: null,
};

// --- talking to the server ------------------------------------------------------

class ApiError extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

async function api(method, path, body) {
  let response;
  try {
    response = await fetch(path, {
      method,
      credentials: "same-origin",
      headers: body ? { "Content-Type": "application/json" } : {},
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch {
    throw new ApiError(0, "The server cannot be reached. Check the connection and try again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data && typeof data.detail === "string" ? data.detail : `The server answered ${response.status}.`;
    if (response.status === 401 && state.me && path !== "/api/auth/login") signedOut();
    throw new ApiError(response.status, detail);
  }
  return data;
}

// --- formatting -----------------------------------------------------------------

function bytes(n) {
  return n == null ? "–" : formatBytes(n);
}

function when(iso) {
  return new Date(iso).toLocaleString([], { dateStyle: "short", timeStyle: "short" });
}

function duration(seconds) {
  if (seconds == null || !Number.isFinite(seconds)) return "–";
  const s = Math.max(0, Math.round(seconds));
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

const STATUS_WORDS = {
  awaiting_upload: "waiting for data",
  uploading: "uploading",
  queued: "queued",
  running: "running",
  succeeded: "succeeded",
  failed: "failed",
  cancelled: "cancelled",
  upload_expired: "upload expired",
};

function statusText(status) {
  return STATUS_WORDS[status] || status;
}

// C0 (tab and newline too: a value is one cell), DEL, C1, and the bidirectional
// overrides, which reorder what follows them.
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u202a-\u202e\u2066-\u2069]/g;
const NAMED = { "\t": "\\t", "\n": "\\n", "\r": "\\r" };

/**
 * Text from the server (or a file) as shown: its control characters as visible escapes
 * (`\x1b`), as the CLI shows them. All text reaches the page through textContent, never
 * as HTML; this keeps invisible characters from hiding or reordering what is shown.
 */
function clean(text) {
  return String(text).replace(CONTROL, (c) => {
    const code = c.charCodeAt(0);
    return NAMED[c] || (code < 0x100 ? `\\x${code.toString(16).padStart(2, "0")}` : `\\u${code.toString(16)}`);
  });
}

function cell(tag, value) {
  const el = document.createElement(tag);
  const text = clean(value);
  el.textContent = text;
  // A hash or other long unbroken value may break anywhere; words keep whole.
  if (/^\S{25,}$/.test(text)) el.className = "long";
  return el;
}

function show(value) {
  if (value === null || value === undefined) return "–";
  if (typeof value === "object") return JSON.stringify(value);
  if (typeof value === "number" && !Number.isInteger(value)) return String(Math.round(value * 1e6) / 1e6);
  return String(value);
}

// --- views ----------------------------------------------------------------------

function notice(message) {
  const el = $("notice");
  el.textContent = clean(message || "");
  el.hidden = !message;
}

function showView(name) {
  for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== `view-${name}`;
  $("loading").hidden = true;
  const heading = document.querySelector(`#view-${name} h1`);
  heading?.focus();
}

async function route() {
  notice("");
  state.watch?.stop();
  state.watch = null;
  state.jobId = null;
  if (!state.me) {
    showView("signin");
    return;
  }
  const match = location.hash.match(/^#\/job\/(\d+)$/);
  if (location.hash === "#/tokens") {
    showView("tokens");
    await openTokens({ api, clean, when });
  } else if (match) await openJob(Number(match[1]));
  else if (location.hash === "#/admin" && state.me.is_admin) await openAdmin({ api, clean, showView, me: state.me });
  else await openJobs();
}

// --- sign in and out ------------------------------------------------------------

function signedIn(me) {
  state.me = me;
  state.memory = new UploadMemory(localStorage, `user-${me.id}`);
  $("who-name").textContent = clean(`Signed in as ${me.username}`);
  $("who").hidden = false;
  adminLink(me);
}

function signedOut() {
  for (const uploader of state.uploads.values()) uploader.pause();
  state.uploads.clear();
  state.memory?.clear(); // a shared computer keeps no trace of what was uploaded
  state.me = null;
  state.memory = null;
  $("who").hidden = true;
  adminLink(null);
  location.hash = "";
  route();
}

async function signIn(event) {
  event.preventDefault();
  const form = event.target;
  $("signin-error").textContent = "";
  try {
    const me = await api("POST", "/api/auth/login", {
      username: form.username.value,
      password: form.password.value,
    });
    form.password.value = "";
    signedIn(me);
    await route();
  } catch (error) {
    $("signin-error").textContent = clean(error.message);
  }
}

async function signOut() {
  try {
    await api("POST", "/api/auth/logout");
  } catch (error) {
    if (error.status !== 401) {
      notice(`Signing out failed: ${error.message}`);
      return;
    }
  }
  signedOut();
}

// --- the job list ---------------------------------------------------------------

async function openJobs() {
  showView("jobs");
  renderUnfinished();
  await loadJobs();
}

async function loadJobs() {
  showQuota($("quota"));
  let page;
  try {
    page = await api("GET", `/api/job?limit=${PAGE_SIZE}&offset=${state.offset}`);
  } catch (error) {
    notice(`The jobs could not be loaded: ${error.message}`);
    return;
  }
  const body = $("jobs-table").tBodies[0];
  body.replaceChildren();
  for (const job of page.items) {
    const row = document.createElement("tr");
    const name = document.createElement("td");
    const link = document.createElement("a");
    link.href = `#/job/${job.id}`;
    link.textContent = clean(`${job.name} (#${job.id})`);
    name.append(link);
    const status = cell("td", statusText(job.status));
    status.dataset.status = job.status;
    const upload = !job.upload
      ? "–"
      : job.upload.total_chunks === null
        ? `${bytes(job.upload.bytes_received)} of ${bytes(job.upload.file_size)} (tus)`
        : `${job.upload.chunks_received} of ${job.upload.total_chunks} chunks, ${bytes(job.upload.bytes_received)}`;
    row.append(name, status, cell("td", upload), cell("td", when(job.created_at)));
    body.append(row);
  }
  $("jobs-empty").hidden = page.total > 0;
  $("jobs-table").hidden = page.total === 0;
  const last = Math.min(page.total, page.offset + page.items.length);
  $("jobs-range").textContent = page.total ? `${page.offset + 1}–${last} of ${page.total}` : "";
  $("jobs-prev").disabled = page.offset === 0;
  $("jobs-next").disabled = last >= page.total;
  $("jobs-pager").hidden = page.total <= PAGE_SIZE && page.offset === 0;
}

function renderUnfinished() {
  const entries = state.memory.list();
  const list = $("unfinished-list");
  list.replaceChildren();
  for (const entry of entries) {
    const item = document.createElement("li");
    const link = document.createElement("a");
    link.href = `#/job/${entry.jobId}`;
    link.textContent = clean(`${entry.name} (${bytes(entry.size)}), job #${entry.jobId}`);
    item.append(link);
    list.append(item);
  }
  $("unfinished").hidden = entries.length === 0;
}

async function checkFile(file, out) {
  out.textContent = clean(`Checking ${file.name}…`);
  out.classList.remove("bad");
  const verdict = await inspectCsv(file, { maxFileBytes: state.config.max_file_bytes });
  out.textContent = clean(
    verdict.ok ? `${file.name}: ${bytes(file.size)}, columns: ${verdict.header.slice(0, 200)}` : verdict.reason,
  );
  out.classList.toggle("bad", !verdict.ok);
  return verdict.ok;
}

async function newJobFileChosen() {
  const file = $("new-job-file").files[0];
  $("new-job-error").textContent = "";
  if (!file) {
    $("new-job-file-check").textContent = "";
    return;
  }
  const name = $("new-job-name");
  if (!name.value || name.dataset.fromFile === "1") {
    name.value = file.name.replace(/\.(csv|tsv)$/i, "");
    name.dataset.fromFile = "1";
  }
  if (!(await checkFile(file, $("new-job-file-check")))) return;
  const known = state.memory.find(file);
  if (known !== null) {
    $("new-job-file-check").textContent += `. Job #${known} already holds part of this file: submitting continues that upload.`;
  }
}

async function createJob(event) {
  event.preventDefault();
  const file = $("new-job-file").files[0];
  const error = $("new-job-error");
  error.textContent = "";
  if (file && !(await checkFile(file, $("new-job-file-check")))) {
    error.textContent = "Choose a CSV file.";
    $("new-job-file").focus();
    return;
  }
  const known = file ? state.memory.find(file) : null;
  if (known !== null) {
    try {
      const job = await api("GET", `/api/job/${known}`);
      if (TAKES_DATA.has(job.status)) {
        location.hash = `#/job/${known}`;
        startUpload(known, file);
        return;
      }
    } catch {
      // The remembered job is gone: start a new one below.
    }
    state.memory.forget(known);
  }
  let job;
  try {
    job = await api("POST", "/api/job", { name: $("new-job-name").value.trim(), kind: "profile", params: {} });
  } catch (failure) {
    error.textContent = clean(`The job could not be created: ${failure.message}`);
    return;
  }
  event.target.reset();
  $("new-job-file-check").textContent = "";
  $("new-job-name").dataset.fromFile = "";
  if (file) startUpload(job.id, file);
  location.hash = `#/job/${job.id}`;
}

// --- one job --------------------------------------------------------------------

async function openJob(jobId) {
  state.jobId = jobId;
  showView("job");
  $("job-title").textContent = `Job #${jobId}`;
  $("job-status").textContent = "…";
  $("job-error").textContent = "";
  $("result-panel").hidden = true;
  $("upload-panel").hidden = true;
  $("upload-check").textContent = "";
  $("upload-error").textContent = "";
  $("upload-file").value = "";
  $("upload-choose").hidden = false;
  let job;
  try {
    job = await api("GET", `/api/job/${jobId}`);
  } catch (error) {
    if (error.status === 404) state.memory.forget(jobId); // deleted: nothing to continue
    $("job-error").textContent = clean(
      error.status === 404 ? "This job does not exist, or it is not yours." : error.message,
    );
    $("job-status").textContent = "–";
    return;
  }
  if (state.jobId !== jobId) return;
  renderJob(job);
  state.watch = watchJob(jobId, renderJob);
  const uploader = state.uploads.get(jobId);
  if (uploader) attachUploader(uploader);
  else $("upload-progress").hidden = true;
}

function renderJob(job) {
  if (state.jobId !== job.id) return;
  $("job-title").textContent = clean(`${job.name} (job #${job.id})`);
  const status = $("job-status");
  status.textContent = clean(statusText(job.status));
  status.dataset.status = job.status;
  $("job-run-progress").textContent =
    job.status === "running" && typeof job.progress === "number" ? `${Math.floor(job.progress)} %` : "";
  $("job-error").textContent = job.error ? clean(`The job failed: ${job.error}`) : "";
  const uploader = state.uploads.get(job.id);
  const uploading = uploader && ["running", "paused"].includes(uploader.state);
  // Complete (perhaps from another tab or computer), cancelled or expired: no upload to continue.
  if (!TAKES_DATA.has(job.status) && !uploading) state.memory.forget(job.id);
  $("upload-panel").hidden = !TAKES_DATA.has(job.status) && !uploading;
  const held = job.upload;
  const remembered = state.memory.forJob(job.id);
  let heldText = "";
  if (held && held.state === "partial" && held.protocol === "tus") {
    const name = held.file_name || "a file";
    heldText =
      `The server holds ${bytes(held.bytes_received)} of ${bytes(held.file_size)} of ${name}, ` +
      "sent with a tus client: resume it from that client.";
  } else if (held && held.state === "partial" && !uploading) {
    const name = held.file_name || remembered?.name || "a file";
    heldText =
      `The server holds ${held.chunks_received} of ${held.total_chunks} chunks of ${name} ` +
      `(${bytes(held.bytes_received)}${held.file_size ? ` of ${bytes(held.file_size)}` : ""}). ` +
      "Choose the same file to continue where it left off.";
    if (held.expires_at) heldText += ` Unless continued, it is removed at ${when(held.expires_at)}.`;
  }
  $("upload-held").textContent = clean(heldText);
  if (job.status === "succeeded") renderResult(job);
  else $("result-panel").hidden = true;
}

/** The job's status as it changes: Server-Sent Events, or polling when they fail. */
function watchJob(jobId, onJob) {
  let stopped = false;
  let timer = null;
  let source = null;
  const poll = async () => {
    if (stopped) return;
    try {
      const job = await api("GET", `/api/job/${jobId}`);
      if (stopped) return;
      onJob(job);
      if (FINAL.has(job.status)) return;
    } catch (error) {
      if (error.status === 404 || error.status === 401) return;
    }
    timer = setTimeout(poll, POLL_MS);
  };
  if (typeof EventSource === "function") {
    source = new EventSource(`/api/job/${jobId}/events`);
    source.addEventListener("job", (event) => {
      try {
        onJob(JSON.parse(event.data));
      } catch {
        // A malformed event: the next one, or the poll below, brings the status.
      }
    });
    source.addEventListener("gone", () => {
      // Deleted (from another tab, say): nothing more will come.
      source.close();
      stopped = true;
      if (state.jobId === jobId) $("job-error").textContent = "This job has been deleted.";
    });
    source.onerror = () => {
      // The route may be missing (older server), the stream may have ended after a
      // final status, or the connection dropped: either way polling takes over.
      source.close();
      source = null;
      if (!stopped && timer === null) poll();
    };
  } else {
    poll();
  }
  return {
    stop() {
      stopped = true;
      source?.close();
      clearTimeout(timer);
    },
  };
}

// --- uploading ------------------------------------------------------------------

async function uploadFileChosen(file) {
  $("upload-error").textContent = "";
  if (!file) return;
  if (!(await checkFile(file, $("upload-check")))) return;
  const existing = state.uploads.get(state.jobId);
  if (existing && ["running", "paused"].includes(existing.state)) {
    $("upload-error").textContent = "An upload to this job is already under way.";
    return;
  }
  startUpload(state.jobId, file);
}

// Each failed uploader's message (see startUpload).
const failures = new WeakMap();

function startUpload(jobId, file) {
  const uploader = new Uploader(file, jobId, {
    memory: state.memory,
    chunkSize: state.config.chunk_size,
    parallel: state.config.parallel_chunks,
  });
  state.uploads.set(jobId, uploader);
  // Kept for a view opened after the failure: one fast refusal (a quota's 507) can come
  // before the job's view, which opens after the job is read, listens.
  uploader.addEventListener("error", ({ detail }) => failures.set(uploader, detail.message));
  uploader.addEventListener("complete", () => {
    if (state.watch && state.jobId === jobId) state.watch.stop();
    if (state.jobId === jobId) state.watch = watchJob(jobId, renderJob);
  });
  if (state.jobId === jobId) attachUploader(uploader);
  uploader.start();
  return uploader;
}

/** Show an uploader on the job view; it keeps running when the view changes. */
function attachUploader(uploader) {
  const jobId = uploader.jobId;
  const here = () => state.jobId === jobId;
  const els = {
    panel: $("upload-progress"),
    bar: $("upload-bar"),
    percent: $("up-percent"),
    speed: $("up-speed"),
    left: $("up-left"),
    chunk: $("up-chunk"),
    state: $("upload-state"),
    error: $("upload-error"),
    pause: $("up-pause"),
    resume: $("up-resume"),
    cancel: $("up-cancel"),
  };
  els.panel.hidden = false;
  $("upload-panel").hidden = false;
  $("upload-held").textContent = "";
  let announced = -1;
  let troubled = false; // a retry message is showing: the next chunk done replaces it
  const buttons = () => {
    const s = uploader.state;
    els.pause.hidden = s !== "running";
    els.resume.hidden = s !== "paused";
    els.cancel.hidden = !["running", "paused"].includes(s);
    // One upload per job at a time: the picker comes back once this one has ended.
    $("upload-choose").hidden = ["running", "paused"].includes(s);
  };
  const say = (text) => {
    if (here()) els.state.textContent = clean(text);
  };
  const progress = ({ detail: p }) => {
    if (!here()) return;
    els.bar.value = p.percent;
    els.percent.textContent = `${p.percent.toFixed(1)} %`;
    els.speed.textContent = `${(p.speed / 1e6).toFixed(1)} MB/s`;
    els.left.textContent = `time left: ${duration(p.secondsLeft)}`;
    els.chunk.textContent = `chunk ${p.chunkNumber} of ${p.totalChunks}`;
    // Screen readers hear every tenth of the way, not every second.
    const tenth = Math.floor(p.percent / 10);
    if (p.phase === "verifying") say(`Checking what the server already holds of ${uploader.file.name}…`);
    else if (uploader.state === "running" && tenth !== announced) {
      announced = tenth;
      say(`Uploading ${uploader.file.name}: ${Math.floor(p.percent)} % sent.`);
    }
  };
  const handlers = {
    progress,
    retrying: ({ detail: r }) => {
      troubled = true;
      say(`Connection trouble (${r.reason}). Trying again in ${duration(r.delay / 1000)} (attempt ${r.attempt}).`);
    },
    chunkdone: async () => {
      if (troubled) {
        troubled = false;
        announced = -1; // the next progress says how far the upload is again
      }
      // The first chunk recorded moves the job to "uploading": show it now, not at the next poll.
      if (!here() || $("job-status").dataset.status !== "awaiting_upload") return;
      try {
        renderJob(await api("GET", `/api/job/${jobId}`));
      } catch {
        // The status watch shows it soon enough.
      }
    },
    paused: () => say("Paused. Resume to go on; the server keeps what it has."),
    resumed: () => say(`Resuming ${uploader.file.name}…`),
    cancelled: () => {
      say("Upload cancelled; the server discarded what it had received.");
      state.uploads.delete(jobId);
    },
    complete: () => say(`Upload of ${uploader.file.name} complete; the job is starting.`),
    error: ({ detail }) => {
      if (here()) els.error.textContent = clean(`The upload failed: ${detail.message}`);
    },
    statechange: buttons,
  };
  // One set of listeners per view of this job: the previous set goes with the view.
  state.views.get(uploader)?.abort();
  const view = new AbortController();
  for (const [type, handler] of Object.entries(handlers)) {
    uploader.addEventListener(type, handler, { signal: view.signal });
  }
  state.views.set(uploader, view);
  els.pause.onclick = () => uploader.pause();
  els.resume.onclick = () => uploader.resume();
  els.cancel.onclick = () => uploader.cancel();
  if (uploader.state === "failed" && failures.has(uploader)) {
    els.error.textContent = clean(`The upload failed: ${failures.get(uploader)}`);
  }
  buttons();
  if (uploader.state === "paused") say("Paused.");
}

// --- the result -----------------------------------------------------------------

function table(caption, headers, rows) {
  const wrap = document.createElement("div");
  wrap.className = "scroll";
  wrap.tabIndex = 0;
  wrap.setAttribute("role", "region");
  wrap.setAttribute("aria-label", caption);
  const t = document.createElement("table");
  t.append(cell("caption", caption));
  if (headers) {
    const head = t.createTHead().insertRow();
    for (const h of headers) {
      const th = cell("th", h);
      th.scope = "col";
      head.append(th);
    }
  }
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    row.forEach((value, i) => {
      // Without column headers, the first cell of a row names it.
      const td = cell(!headers && i === 0 ? "th" : "td", show(value));
      if (!headers && i === 0) td.scope = "row";
      tr.append(td);
    });
  }
  wrap.append(t);
  return wrap;
}

function renderResult(job) {
  const result = job.result || {};
  const out = $("result");
  out.replaceChildren();
  const isProfile = Array.isArray(result.columns) && typeof result.rows === "number";
  if (isProfile) {
    const facts = [["Rows", result.rows.toLocaleString()]];
    if (result.input) {
      const sha = result.input.sha256 ? `, SHA-256 ${result.input.sha256}` : "";
      facts.push(["Input", `${bytes(result.input.size)}${sha}`]);
    }
    if (result.dialect) {
      const d = result.dialect;
      facts.push([
        "Dialect",
        `delimiter ${JSON.stringify(d.delimiter)}, quote ${d.quote ? JSON.stringify(d.quote) : "none"}, ` +
          `${d.header ? "with" : "no"} header, ${d.encoding}`,
      ]);
    }
    if (result.rejects) facts.push(["Rejected rows", String(result.rejects.count)]);
    out.append(table("Summary", null, facts));
    // The server's distinct count is an estimate, clamped to the non-null count.
    const approximate = result.columns.some((c) => c.distinct_approximate);
    out.append(
      table(
        "Columns",
        ["Name", "Type", "Nulls", approximate ? "Distinct (approx.)" : "Distinct", "Min", "Max", "Mean"],
        result.columns.map((c) => [c.name, c.type, c.nulls, c.distinct, c.min, c.max, c.mean]),
      ),
    );
    if (result.preview && Array.isArray(result.preview.rows)) {
      out.append(table(`First ${result.preview.rows.length} rows`, result.preview.columns, result.preview.rows));
    }
    if (result.rejects && result.rejects.rows?.length) {
      out.append(
        table(
          `Rejected rows (first ${result.rejects.rows.length} of ${result.rejects.count})`,
          ["Line", "Reason"],
          result.rejects.rows.map((r) => [r.line, r.reason]),
        ),
      );
    }
  } else {
    // A result this page does not know the shape of: show its fields as they are.
    out.append(table("Fields", ["Field", "Value"], Object.entries(result)));
  }
  if (result.parquet) {
    const p = document.createElement("p");
    const link = document.createElement("a");
    link.href = `/api/job/${job.id}/result/data.parquet`;
    link.download = `job-${job.id}.parquet`;
    link.textContent = `Download the data as Parquet (${bytes(result.parquet.size)})`;
    p.append(link);
    out.append(p);
  }
  $("result-panel").hidden = false;
}

// --- drag and drop --------------------------------------------------------------

function dropZones() {
  for (const zone of document.querySelectorAll(".drop")) {
    const input = $(zone.dataset.drop);
    zone.addEventListener("dragover", (event) => {
      event.preventDefault();
      zone.classList.add("over");
    });
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      event.preventDefault();
      zone.classList.remove("over");
      const files = event.dataTransfer?.files;
      if (!files || files.length === 0) return;
      if (files.length > 1) {
        notice("Drop one file at a time.");
        return;
      }
      input.files = files;
      input.dispatchEvent(new Event("change", { bubbles: true }));
    });
  }
  // A file dropped beside a zone must not make the browser leave the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
}

// --- start ----------------------------------------------------------------------

async function main() {
  $("signin-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", signOut);
  $("new-job-form").addEventListener("submit", createJob);
  $("new-job-file").addEventListener("change", newJobFileChosen);
  $("new-job-name").addEventListener("input", (e) => {
    e.target.dataset.fromFile = "";
  });
  $("upload-file").addEventListener("change", (e) => uploadFileChosen(e.target.files[0]));
  $("jobs-refresh").addEventListener("click", loadJobs);
  $("jobs-prev").addEventListener("click", () => {
    state.offset = Math.max(0, state.offset - PAGE_SIZE);
    loadJobs();
  });
  $("jobs-next").addEventListener("click", () => {
    state.offset += PAGE_SIZE;
    loadJobs();
  });
  dropZones();
  window.addEventListener("hashchange", route);
  window.addEventListener("beforeunload", (event) => {
    const busy = [...state.uploads.values()].some((u) => u.state === "running");
    if (busy) {
      // The upload can be continued later, but ask first.
      event.preventDefault();
      event.returnValue = "";
    }
  });
  try {
    state.config = await api("GET", "/api/config");
  } catch (error) {
    $("loading").textContent = `The server cannot be reached: ${error.message}`;
    return;
  }
  try {
    signedIn(await api("GET", "/api/auth/me"));
  } catch (error) {
    if (error.status !== 401) notice(error.message);
  }
  await route();
}

main();
