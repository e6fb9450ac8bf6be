// Chute's chunked uploader: one framework-free ES module. Chute's own page imports it
// from /static/uploader.js; an application's front end installs it as the package
// @chute/uploader (this folder's package.json; types in uploader.d.ts).
//
//   import { Uploader } from "@chute/uploader";
//   const up = new Uploader(file, jobId, {        // or {name: "Sales"}: a job made on start()
//     baseUrl: "https://chute.example.org",        // "" (the default): the page's own origin
//     headers: async () => ({ Authorization: `Bearer ${await getToken()}` }),
//     onProgress: (p) => show(p.percent),
//   });
//   const outcome = await up.start();   // {outcome: "complete" | "cancelled" | "failed", ...}
//
// It speaks the server's chunk protocol (DESIGN.md §2): the chunk size and the chunks
// in flight come from GET /api/config; each chunk is POSTed to the job's upload-data
// route as multipart/form-data with its SHA-256; before sending, it asks the server
// what it already holds and sends only what is missing.
//
// Memory stays flat whatever the file's size: a chunk's bytes are read only to hash
// them, one chunk at a time, and let go before the next is read; the request body is
// the File's Blob slice, which the browser streams from disk.
//
// The network is behind a transport (`xhrTransport` in browsers, for progress inside
// a chunk; `fetchTransport` wherever there is no XMLHttpRequest), so everything else
// (planning, resuming, retrying, hashing, events) is the same code everywhere.
//
// uploader.d.ts declares every export of this file by hand: change both together
// (tests/js/declarations.test.mjs compares them).

/** Retry policy: exponential backoff with jitter, per chunk and per status request. */
export const DEFAULT_RETRY = Object.freeze({ maxRetries: 10, baseDelay: 500, maxDelay: 30_000 });
// A chunk request that moves no byte and gets no answer for this long is cut off and
// sent again: the network dropped it silently (a laptop slept, Wi-Fi changed; no FIN,
// no RST), and without this it would wait forever. Longer than the server's idle
// timeout (30 s, after which it releases the chunk) and its wait for a held chunk,
// so a re-send is never cut off while the server waits for the dead one.
export const DEFAULT_STALL_TIMEOUT = 60_000;

const PROGRESS_EVERY_MS = 200; // at most this often from transport events
const TICK_MS = 1000; // at least this often while running, even with no bytes moving
const SPEED_WINDOW_MS = 5000; // speed is measured over the last few seconds
const HEAD_BYTES = 64 * 1024;

/** An upload that cannot go on: `status` is the HTTP status (0 for none). */
export class UploadError extends Error {
  constructor(message, { status = 0, index = null, code = "failed" } = {}) {
    super(message);
    this.name = "UploadError";
    this.status = status;
    this.index = index;
    this.code = code;
  }
}

/** The transport could not get an answer (connection refused, reset, timed out). */
export class NetworkError extends Error {
  constructor(message = "The connection to the server failed.") {
    super(message);
    this.name = "NetworkError";
  }
}

function aborted() {
  return new DOMException("The upload was stopped.", "AbortError");
}

/**
 * Statuses worth sending again: none (network), server errors, too busy, storage full,
 * a body cut off for going quiet (408), a chunk still held by a dead request (423).
 * A 409 (say, other bytes for a chunk the server holds) is final.
 */
export function isRetryable(status) {
  return status === 0 || [408, 423, 429, 507].includes(status) || status >= 500;
}

/** Milliseconds to wait before retry number `attempt + 1`: "equal jitter" backoff. */
export function backoffDelay(attempt, retry = DEFAULT_RETRY, random = Math.random) {
  const ceiling = Math.min(retry.maxDelay, retry.baseDelay * 2 ** attempt);
  return Math.round(ceiling / 2 + (random() * ceiling) / 2);
}

/** Number of chunks of a file: all of `chunkSize` bytes but the last. */
export function chunkCount(fileSize, chunkSize) {
  return Math.max(1, Math.ceil(fileSize / chunkSize));
}

/** SHA-256 of a Blob as hex. The Blob's bytes are in memory only during this call. */
export async function sha256Hex(blob) {
  if (!globalThis.crypto?.subtle) {
    // Browsers give WebCrypto only to secure contexts: https, or localhost.
    throw new UploadError(
      "This page cannot check the file's chunks: open Chute over https (or on localhost).",
      { code: "insecure" },
    );
  }
  const digest = await crypto.subtle.digest("SHA-256", await blob.arrayBuffer());
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    if (signal.aborted) return reject(aborted());
    const onAbort = () => {
      clearTimeout(timer);
      reject(aborted());
    };
    const timer = setTimeout(() => {
      signal.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal.addEventListener("abort", onAbort, { once: true });
  });
}

function parseJson(text) {
  try {
    return text ? JSON.parse(text) : null;
  } catch {
    return null; // a proxy's HTML error page, say: the status alone then speaks
  }
}

function describe(status, body, fallback) {
  if (body && typeof body.detail === "string") return body.detail;
  if (status === 0) return fallback || "The connection to the server failed.";
  return `The server answered ${status}.`;
}

// ---------------------------------------------------------------------------
// Transports: send({url, form, headers, signal, onProgress(loaded, total), onAlive()})
//   → Promise<{status, body, retryAfter, quota}>; rejects with NetworkError when no answer
//   came, with an AbortError when `signal` stopped it. `onProgress` as the body's bytes
//   go out, `onAlive` on any other sign of the server (the answer's head, its body):
//   the uploader's stall watch cuts off a request that hears neither for a while.

/** XMLHttpRequest: the only browser API that reports upload progress inside a request. */
export function xhrTransport() {
  return {
    send({ url, form, headers = {}, signal, onProgress, onAlive }) {
      return new Promise((resolve, reject) => {
        const xhr = new XMLHttpRequest();
        const onAbort = () => xhr.abort();
        const settle = (fn, value) => {
          signal?.removeEventListener("abort", onAbort);
          fn(value);
        };
        xhr.open("POST", url);
        for (const [name, value] of Object.entries(headers)) xhr.setRequestHeader(name, value);
        if (onProgress) {
          xhr.upload.onprogress = (e) => onProgress(e.loaded, e.lengthComputable ? e.total : 0);
        }
        if (onAlive) {
          xhr.onreadystatechange = () => onAlive();
          xhr.onprogress = () => onAlive();
        }
        xhr.onload = () =>
          settle(resolve, {
            status: xhr.status,
            body: parseJson(xhr.responseText),
            retryAfter: xhr.getResponseHeader("Retry-After"),
            quota: xhr.getResponseHeader("Chute-Quota") !== null,
          });
        xhr.onerror = () => settle(reject, new NetworkError());
        xhr.ontimeout = () => settle(reject, new NetworkError("The request timed out."));
        xhr.onabort = () => settle(reject, aborted());
        if (signal?.aborted) return reject(aborted());
        signal?.addEventListener("abort", onAbort, { once: true });
        xhr.send(form);
      });
    },
  };
}

/**
 * fetch, for Node and workers. With `stream` (the default in Node), the form goes out
 * as a stream of known length, and the bytes the connection takes from it are its
 * progress. Without it (browsers send a stream body only over HTTP/2), fetch reports
 * nothing inside a chunk: the stall watch then bounds each whole request, so give
 * `stallTimeout` room for a chunk at the slowest expected speed.
 */
export function fetchTransport(
  fetchImpl = globalThis.fetch.bind(globalThis),
  { stream = Boolean(globalThis.process?.versions?.node) } = {},
) {
  return {
    async send({ url, form, headers = {}, signal, onProgress }) {
      let response;
      let text;
      try {
        const body = stream ? streamedForm(form, onProgress) : { body: form, headers: {} };
        response = await fetchImpl(url, {
          method: "POST",
          body: body.body,
          headers: { ...headers, ...body.headers },
          signal,
          credentials: "same-origin",
          ...(stream ? { duplex: "half" } : {}),
        });
        text = await response.text();
      } catch (error) {
        if (signal?.aborted) throw aborted();
        throw new NetworkError(`The connection to the server failed (${error.message}).`);
      }
      onProgress?.(1, 1);
      return {
        status: response.status,
        body: parseJson(text),
        retryAfter: response.headers.get("Retry-After"),
        quota: response.headers.has("Chute-Quota"),
      };
    },
  };
}

/** A FormData as multipart/form-data: a stream of known length, counting what is read. */
function streamedForm(form, onProgress) {
  const boundary = `chute-${Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("")}`;
  const encoder = new TextEncoder();
  const quote = (value) => value.replace(/"/g, "%22").replace(/[\r\n]/g, "");
  const parts = [];
  for (const [name, value] of form.entries()) {
    if (typeof value === "string") {
      parts.push(encoder.encode(`--${boundary}\r\nContent-Disposition: form-data; name="${quote(name)}"\r\n\r\n${value}\r\n`));
    } else {
      const type = value.type || "application/octet-stream";
      parts.push(
        encoder.encode(
          `--${boundary}\r\nContent-Disposition: form-data; name="${quote(name)}"; filename="${quote(value.name || "blob")}"\r\n` +
            `Content-Type: ${type}\r\n\r\n`,
        ),
        value,
        encoder.encode("\r\n"),
      );
    }
  }
  parts.push(encoder.encode(`--${boundary}--\r\n`));
  const total = parts.reduce((sum, part) => sum + (part.size ?? part.byteLength), 0);
  let sent = 0;
  let index = 0;
  let reader = null;
  const body = new ReadableStream(
    {
      async pull(controller) {
        for (;;) {
          if (reader) {
            const { done, value } = await reader.read();
            if (!done) return take(controller, value);
            reader = null;
          }
          if (index >= parts.length) return controller.close();
          const part = parts[index++];
          if (part instanceof Uint8Array) return take(controller, part);
          reader = part.stream().getReader();
        }
      },
      cancel() {
        reader?.cancel();
      },
    },
    { highWaterMark: 0 }, // read only what the connection asks for: that is progress
  );
  function take(controller, bytes) {
    controller.enqueue(bytes);
    sent += bytes.byteLength;
    onProgress?.(sent, total);
  }
  return {
    body,
    headers: { "Content-Type": `multipart/form-data; boundary=${boundary}`, "Content-Length": String(total) },
  };
}

function defaultTransport(fetchImpl) {
  return typeof XMLHttpRequest === "function" ? xhrTransport() : fetchTransport(fetchImpl);
}

// ---------------------------------------------------------------------------

/**
 * Remembers, per signed-in user, which job each unfinished upload belongs to, so that
 * choosing the same file after a reload continues it. A file is known by its name,
 * size and last-modified time. `storage` is a Storage (localStorage) or anything with
 * getItem/setItem/removeItem.
 */
export class UploadMemory {
  constructor(storage, userKey) {
    this.storage = storage;
    this.key = `chute.uploads.${userKey}`;
  }

  list() {
    const entries = parseJson(this.#read());
    return Array.isArray(entries) ? entries : [];
  }

  find(file) {
    const entry = this.list().find((e) => sameFile(e, file));
    return entry ? entry.jobId : null;
  }

  forJob(jobId) {
    return this.list().find((e) => e.jobId === jobId) || null;
  }

  remember(file, jobId) {
    const others = this.list().filter((e) => e.jobId !== jobId && !sameFile(e, file));
    const entry = { jobId, name: file.name, size: file.size, lastModified: file.lastModified };
    this.#write([...others, entry]);
  }

  forget(jobId) {
    const left = this.list().filter((e) => e.jobId !== jobId);
    if (left.length) this.#write(left);
    else this.clear();
  }

  /** On sign-out: a shared computer keeps no trace of what was uploaded. */
  clear() {
    try {
      this.storage.removeItem(this.key);
    } catch {
      // Storage unavailable (private mode, disabled): there is nothing kept to clear.
    }
  }

  #read() {
    try {
      return this.storage.getItem(this.key);
    } catch {
      return null; // storage unavailable: resuming then needs the job picked by hand
    }
  }

  #write(entries) {
    try {
      this.storage.setItem(this.key, JSON.stringify(entries));
    } catch {
      // Full or unavailable: the upload itself does not depend on this memory.
    }
  }
}

function sameFile(entry, file) {
  return (
    entry.name === file.name && entry.size === file.size && entry.lastModified === file.lastModified
  );
}

// ---------------------------------------------------------------------------

/**
 * A quick look at a file before anything is sent: its name, its size against the
 * server's limit, and its first bytes (a header line, no NUL bytes, not a known
 * binary format). Resolves to {ok: true, header} or {ok: false, reason}.
 */
export async function inspectCsv(file, { maxFileBytes = Infinity } = {}) {
  if (!/\.(csv|tsv)$/i.test(file.name)) {
    return { ok: false, reason: `${file.name} is not a CSV file (its name must end in .csv).` };
  }
  if (file.size === 0) return { ok: false, reason: `${file.name} is empty.` };
  if (file.size > maxFileBytes) {
    return {
      ok: false,
      reason: `${file.name} is ${file.size} bytes, more than the server's limit of ${maxFileBytes}.`,
    };
  }
  const head = new Uint8Array(await file.slice(0, HEAD_BYTES).arrayBuffer());
  const magic = [
    [[0x1f, 0x8b], "gzip-compressed"],
    [[0x50, 0x4b, 0x03, 0x04], "a ZIP archive (an .xlsx workbook is one)"],
    [[0x25, 0x50, 0x44, 0x46], "a PDF document"],
    [[0x50, 0x41, 0x52, 0x31], "a Parquet file"],
  ];
  for (const [bytes, what] of magic) {
    if (bytes.every((b, i) => head[i] === b)) {
      return { ok: false, reason: `${file.name} is ${what}, not a CSV file.` };
    }
  }
  const wide =
    (head[0] === 0xff && head[1] === 0xfe) || (head[0] === 0xfe && head[1] === 0xff);
  if (!wide && head.includes(0)) {
    return { ok: false, reason: `${file.name} contains NUL bytes: it is binary, not a CSV file.` };
  }
  const text = new TextDecoder(wide ? (head[0] === 0xff ? "utf-16le" : "utf-16be") : "utf-8")
    .decode(head)
    .replace(/^\uFEFF/, "");
  const end = text.search(/\r|\n/);
  if (end < 0 && file.size > HEAD_BYTES) {
    return {
      ok: false,
      reason: `${file.name} has no line break in its first ${HEAD_BYTES / 1024} KiB, so no header line.`,
    };
  }
  const header = end < 0 ? text : text.slice(0, end);
  if (!header.trim()) return { ok: false, reason: `${file.name} starts with an empty line.` };
  return { ok: true, header };
}

// ---------------------------------------------------------------------------

/**
 * Uploads one file to one job: an existing job (its id), or one it makes on start()
 * (`{name, kind, params}`, as POST /api/job takes them; kind defaults to "profile").
 * Events (CustomEvent, data in `detail`):
 * - `progress`  {phase: "verifying" | "sending", bytesSent, bytesTotal, percent, speed
 *                (bytes/s), secondsLeft (null while unknown), chunksDone, totalChunks,
 *                chunkNumber (1-based, the chunk being sent)}; at least once a second
 * - `chunkdone` {index, size, answer}
 * - `retrying`  {index (null for a status request), attempt, delay (ms), status, reason}
 * - `error`     {error: UploadError, message, status}
 * - `complete`  {answer}
 * - `jobcreated` {job} (the server's answer to POST /api/job)
 * - `paused`, `resumed`, `cancelled`, `statechange` {state}
 *
 * Options: baseUrl ("": the page's own origin; else the server's URL, no trailing
 * slash), headers ({}; or a function, sync or async, called before every request and
 * returning them, so an application's bearer token is fresh: a 401 answer then asks it
 * once more and sends again), onProgress and onStateChange (listeners of `progress`
 * and `statechange` given the event's detail and its state), fetch, transport,
 * chunkSize and parallel (default: the server's /api/config), retry (DEFAULT_RETRY),
 * memory (an UploadMemory), verifyHeld (true: hash the chunks the server already holds
 * and refuse to mix files), random (Math.random, for jitter), stallTimeout (ms,
 * DEFAULT_STALL_TIMEOUT: a chunk request with no progress and no answer for this long
 * is cut off and sent again).
 */
export class Uploader extends EventTarget {
  #file;
  #jobId;
  #opts;
  #fetch;
  #transport;
  #retry;
  #stallTimeout;
  #state = "idle";
  #run = null; // the current attempt at sending: {controller, inflight}
  #hashQueue = Promise.resolve();
  #verified = new Set(); // chunks known to hold this file's bytes on the server
  #shape = null; // {chunkSize, total, config}
  #confirmed = 0; // bytes of chunks the server holds
  #chunksDone = 0;
  #moved = 0; // bytes moved over the network this session, retries included
  #samples = [];
  #lastEmit = 0;
  #ticker = null;
  #phase = "sending";
  #newJob = null; // {name, kind, params} of the job to make on start()
  #finished;
  #settle;

  constructor(file, job, options = {}) {
    super();
    this.#file = file;
    if (isJobId(job)) {
      this.#jobId = job;
    } else if (job && typeof job === "object" && typeof job.name === "string") {
      this.#jobId = null;
      this.#newJob = { kind: "profile", params: {}, ...job };
    } else {
      throw new TypeError("The job must be a job's id or the job to create ({name, kind, params}).");
    }
    const { headers = {} } = options;
    if (typeof headers !== "function" && (typeof headers !== "object" || headers === null)) {
      throw new TypeError("The headers option must be an object or a function that returns one.");
    }
    this.#opts = { baseUrl: "", headers: {}, verifyHeld: true, random: Math.random, ...options };
    this.#fetch = options.fetch || globalThis.fetch.bind(globalThis);
    this.#transport = options.transport || defaultTransport(this.#fetch);
    this.#retry = { ...DEFAULT_RETRY, ...(options.retry || {}) };
    this.#stallTimeout = options.stallTimeout || DEFAULT_STALL_TIMEOUT;
    this.#finished = new Promise((resolve) => {
      this.#settle = resolve;
    });
    if (options.onProgress) this.addEventListener("progress", (e) => options.onProgress(e.detail));
    if (options.onStateChange) {
      this.addEventListener("statechange", (e) => options.onStateChange(e.detail.state));
    }
  }

  get file() {
    return this.#file;
  }

  /** The job's id; null until the job to create is made. */
  get jobId() {
    return this.#jobId;
  }

  /** idle | running | paused | complete | cancelled | failed */
  get state() {
    return this.#state;
  }

  /**
   * Start; resolves once the upload ends: {outcome: "complete", jobId, answer} |
   * {outcome: "cancelled", jobId} | {outcome: "failed", jobId, error}.
   */
  start() {
    if (this.#state === "idle") {
      this.#setState("running");
      if (this.#jobId !== null) this.#opts.memory?.remember(this.#file, this.#jobId);
      this.#go();
    }
    return this.#finished;
  }

  /** Stop sending; chunks cut off mid-request are sent again on resume. */
  pause() {
    if (this.#state !== "running") return;
    this.#stopRun();
    this.#setState("paused");
    this.#emitProgress(true);
    this.#emit("paused", {});
  }

  resume() {
    if (this.#state !== "paused") return;
    this.#setState("running");
    this.#emit("resumed", {});
    this.#go();
  }

  /** Stop and discard what the server holds of this upload (DELETE upload-data). */
  async cancel() {
    if (!["idle", "running", "paused"].includes(this.#state)) return;
    this.#stopRun();
    this.#setState("cancelled");
    if (this.#jobId === null) {
      // No job was made yet (or its making was cut off): nothing on the server to discard.
      this.#emit("cancelled", {});
      this.#settle({ outcome: "cancelled", jobId: null });
      return;
    }
    this.#opts.memory?.forget(this.#jobId);
    try {
      const { status, body } = await this.#api("DELETE", "upload-data", new AbortController().signal);
      if (status !== 204 && status !== 404) {
        this.#emit("error", {
          error: new UploadError(describe(status, body), { status }),
          message: describe(status, body),
          status,
        });
      }
    } catch (error) {
      const message = `The upload was stopped, but the server could not be told to discard it: ${error.message}`;
      this.#emit("error", { error: new UploadError(message), message, status: 0 });
    }
    this.#emit("cancelled", {});
    this.#settle({ outcome: "cancelled", jobId: this.#jobId });
  }

  // --- one attempt at sending, from asking the server to the last chunk -----------

  #go() {
    const run = { controller: new AbortController(), inflight: new Map() };
    this.#run = run;
    this.#ticker ??= setInterval(() => this.#emitProgress(true), TICK_MS);
    this.#send(run).catch((error) => {
      if (run.controller.signal.aborted) return; // paused or cancelled: already handled
      this.#fail(error);
    });
  }

  #stopRun() {
    this.#run?.controller.abort();
    this.#run = null;
    clearInterval(this.#ticker);
    this.#ticker = null;
  }

  async #send(run) {
    const signal = run.controller.signal;
    const file = this.#file;
    if (file.size === 0) throw new UploadError(`${file.name} is empty.`, { code: "empty" });
    if (this.#jobId === null) await this.#createJob(signal);
    const config = this.#shape?.config || (await this.#withRetries(() => this.#api("GET", "/api/config", signal), signal));
    const held = await this.#withRetries(() => this.#api("GET", "upload-data", signal), signal);
    const shape = this.#planShape(config, held);
    this.#shape = shape;
    const heldChunks = new Map(held.chunks.map((c) => [c.index, c]));
    this.#confirmed = held.chunks.reduce((sum, c) => sum + c.size, 0);
    this.#chunksDone = held.chunks.length;
    this.#samples = [];
    this.#emitProgress(true);
    if (held.state !== "complete") await this.#verifyHeld(heldChunks, shape, run);

    let completing = null;
    if (held.state === "complete") {
      completing = completedAnswer(this.#jobId);
    } else {
      const missing = [];
      for (let i = 0; i < shape.total; i++) if (!heldChunks.has(i)) missing.push(i);
      // Chunk 0 alone first: the server checks it is CSV, so a wrong file fails at once.
      if (missing[0] === 0) completing = await this.#sendChunk(missing.shift(), shape, run);
      const parallel = Math.max(1, this.#opts.parallel || config.parallel_chunks || 1);
      const worker = async () => {
        while (missing.length) {
          const answer = await this.#sendChunk(missing.shift(), shape, run);
          if (isCompleting(answer)) completing = answer;
        }
      };
      await Promise.all(Array.from({ length: Math.min(parallel, missing.length) }, worker));
      if (!isCompleting(completing)) {
        // Every chunk is in, but a retried request may have hidden the completing answer.
        const after = await this.#withRetries(() => this.#api("GET", "upload-data", signal), signal);
        if (after.state !== "complete") {
          throw new UploadError("Every chunk was sent, but the server does not hold the whole file.");
        }
        completing = completedAnswer(this.#jobId);
      }
    }
    if (signal.aborted) return;
    this.#stopRun();
    this.#setState("complete");
    this.#confirmed = file.size;
    this.#chunksDone = shape.total;
    this.#emitProgress(true);
    this.#opts.memory?.forget(this.#jobId);
    this.#emit("complete", { answer: completing });
    this.#settle({ outcome: "complete", jobId: this.#jobId, answer: completing });
  }

  /**
   * POST /api/job, once: sent again only on answers that say no job was made (429, 503),
   * so a lost answer cannot leave two jobs behind.
   */
  async #createJob(signal) {
    const job = await this.#withRetries(
      () => this.#api("POST", "/api/job", signal, this.#newJob),
      signal,
      (status) => status === 429 || status === 503,
    );
    // Kept even when paused or cancelled meanwhile: the job exists, and a resume uses it.
    this.#jobId = job.id;
    this.#emit("jobcreated", { job });
    if (signal.aborted) throw aborted();
    this.#opts.memory?.remember(this.#file, this.#jobId);
  }

  #planShape(config, held) {
    const file = this.#file;
    const chunkSize = held.chunk_size || this.#opts.chunkSize || config.chunk_size;
    const total = chunkCount(file.size, chunkSize);
    if (held.state !== "empty") {
      const sizeDiffers = held.file_size != null && held.file_size !== file.size;
      if (sizeDiffers || held.total_chunks !== total) {
        throw new UploadError(
          `This job already holds part of another file${held.file_size != null ? ` (${held.file_size} bytes)` : ""}. ` +
            "Choose that file to continue, or cancel the upload to start over.",
          { status: 409, code: "other-file" },
        );
      }
    }
    if (file.size > config.max_file_bytes) {
      throw new UploadError(`The file is larger than the server's limit of ${config.max_file_bytes} bytes.`, {
        status: 413,
        code: "too-large",
      });
    }
    if (total > config.max_total_chunks) {
      throw new UploadError(`The file needs ${total} chunks, more than the server's limit of ${config.max_total_chunks}.`, {
        status: 413,
        code: "too-large",
      });
    }
    return { chunkSize, total, config };
  }

  /** The chunks the server holds must be this file's, or the upload would mix two files. */
  async #verifyHeld(heldChunks, shape, run) {
    const toCheck = [...heldChunks.values()].filter((c) => !this.#verified.has(c.index));
    if (!toCheck.length) return;
    this.#phase = "verifying";
    try {
      for (const chunk of toCheck) {
        const blob = this.#slice(chunk.index, shape);
        if (chunk.size !== blob.size) throw this.#otherFile(chunk.index);
        if (this.#opts.verifyHeld) {
          const sha = await this.#digest(blob, run.controller.signal);
          if (sha !== chunk.sha256) throw this.#otherFile(chunk.index);
        }
        this.#verified.add(chunk.index);
        this.#emitProgress(false);
      }
    } finally {
      this.#phase = "sending";
    }
  }

  #otherFile(index) {
    return new UploadError(
      `Chunk ${index + 1} held by the server differs from this file: the job holds part of another file. ` +
        "Choose that file to continue, or cancel the upload to start over.",
      { status: 409, index, code: "other-file" },
    );
  }

  #slice(index, shape) {
    const start = index * shape.chunkSize;
    return this.#file.slice(start, Math.min(this.#file.size, start + shape.chunkSize));
  }

  /** One chunk, retried as `isRetryable` says (a stalled request too); the server's answer. */
  async #sendChunk(index, shape, run) {
    const signal = run.controller.signal;
    const blob = this.#slice(index, shape);
    const sha = await this.#digest(blob, signal);
    const url = this.#url("upload-data");
    const result = await this.#retrying(signal, index, async () => {
      const form = new FormData();
      // Fields before the file part: the server then streams the chunk straight into place.
      form.append("chunk_index", String(index));
      form.append("total_chunks", String(shape.total));
      form.append("chunk_size", String(shape.chunkSize));
      form.append("file_size", String(this.#file.size));
      form.append("chunk_sha256", sha);
      form.append("file", blob, this.#file.name);
      const headers = await this.#headers(); // asked for each try: a token may have expired
      if (signal.aborted) throw aborted();
      run.inflight.set(index, 0);
      try {
        return await this.#watched(signal, (attempt, alive) =>
          this.#transport.send({
            url,
            form,
            headers,
            signal: attempt,
            onProgress: (loaded, total) => {
              alive();
              this.#onProgress(run, index, blob.size, loaded, total);
            },
            onAlive: alive,
          }),
        );
      } finally {
        run.inflight.delete(index);
      }
    });
    this.#verified.add(index);
    this.#confirmed += blob.size;
    this.#chunksDone += 1;
    this.#emit("chunkdone", { index, size: blob.size, answer: result.body });
    this.#emitProgress(true);
    return result.body;
  }

  /**
   * `send(signal, alive)` under the stall watch: cut off (a NetworkError, so it is sent
   * again) when `alive()` is not called for `stallTimeout` ms; stopped with `signal`.
   */
  async #watched(signal, send) {
    const attempt = new AbortController();
    const stop = () => attempt.abort();
    signal.addEventListener("abort", stop, { once: true });
    let stalled = false;
    let timer = null;
    const alive = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        stalled = true;
        attempt.abort();
      }, this.#stallTimeout);
    };
    alive();
    try {
      return await send(attempt.signal, alive);
    } catch (error) {
      if (signal.aborted) throw aborted();
      if (stalled) {
        throw new NetworkError(
          `Nothing moved for ${this.#stallTimeout / 1000} s: the connection was presumed lost.`,
        );
      }
      throw error;
    } finally {
      clearTimeout(timer);
      signal.removeEventListener("abort", stop);
    }
  }

  /** A status request, retried as `retryable` says; the answer's body. */
  async #withRetries(call, signal, retryable = isRetryable) {
    return (await this.#retrying(signal, null, call, retryable)).body;
  }

  /**
   * The one retry loop: `call()` until a 2xx (returned) or a final answer (thrown as an
   * UploadError), waiting between tries as `#delay` says; `index` is the chunk's, or null.
   * A 401 is sent again once, without waiting, when the headers come from a function:
   * the token may have expired since it was asked for.
   */
  async #retrying(signal, index, call, retryable = isRetryable) {
    let askedAgain = false;
    for (let attempt = 0; ; attempt++) {
      if (signal.aborted) throw aborted();
      let result = null;
      let failure = null;
      try {
        result = await call();
      } catch (error) {
        if (signal.aborted) throw aborted();
        if (error instanceof UploadError) throw error; // the headers function failed
        failure = error;
      }
      const status = result ? result.status : 0;
      if (status >= 200 && status < 300) return result;
      if (status === 401 && typeof this.#opts.headers === "function" && !askedAgain) {
        askedAgain = true;
        continue;
      }
      const reason = describe(status, result?.body, failure?.message);
      // A 507 of the user's quota, unlike one of a full disk, is not cured by waiting.
      if (result?.quota) throw new UploadError(reason, { status, index, code: "quota" });
      if (!retryable(status)) throw new UploadError(reason, { status, index });
      if (attempt >= this.#retry.maxRetries) {
        const message =
          index === null
            ? `The server could not be reached: ${reason}`
            : `Chunk ${index + 1} failed ${attempt + 1} times; last: ${reason}`;
        throw new UploadError(message, { status, index, code: "gave-up" });
      }
      const delay = this.#delay(attempt, result?.retryAfter);
      this.#emit("retrying", { index, attempt: attempt + 1, delay, status, reason });
      await sleep(delay, signal);
    }
  }

  #delay(attempt, retryAfter) {
    const seconds = Number(retryAfter);
    if (retryAfter && Number.isFinite(seconds) && seconds >= 0) {
      return Math.min(this.#retry.maxDelay, seconds * 1000);
    }
    return backoffDelay(attempt, this.#retry, this.#opts.random);
  }

  /** Hash one chunk at a time, so at most one chunk's bytes are in memory. */
  #digest(blob, signal) {
    const next = this.#hashQueue.then(() => {
      if (signal.aborted) throw aborted();
      return sha256Hex(blob);
    });
    this.#hashQueue = next.catch(() => {}); // the queue goes on; the caller sees the error
    return next;
  }

  #url(path) {
    const base = this.#opts.baseUrl;
    return path.startsWith("/") ? `${base}${path}` : `${base}/api/job/${this.#jobId}/${path}`;
  }

  /** The extra headers for one request: the option's object, or what its function gives. */
  async #headers() {
    const option = this.#opts.headers;
    if (typeof option !== "function") return option;
    let headers;
    try {
      headers = await option();
    } catch (error) {
      throw new UploadError(`The headers could not be had: ${error?.message || error}`, { code: "headers" });
    }
    if (typeof headers !== "object" || headers === null) {
      throw new UploadError("The headers function must return an object of header names and values.", {
        code: "headers",
      });
    }
    return headers;
  }

  async #api(method, path, signal, body = undefined) {
    let response;
    let text;
    const headers = await this.#headers();
    if (signal.aborted) throw aborted(); // stopped while the headers were being had
    try {
      response = await this.#fetch(this.#url(path), {
        method,
        headers: body === undefined ? headers : { ...headers, "Content-Type": "application/json" },
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
        credentials: "same-origin",
      });
      text = await response.text();
    } catch (error) {
      if (signal.aborted) throw aborted();
      throw new NetworkError(`The connection to the server failed (${error.message}).`);
    }
    return {
      status: response.status,
      body: parseJson(text),
      retryAfter: response.headers.get("Retry-After"),
      quota: response.headers.has("Chute-Quota"),
    };
  }

  // --- progress -------------------------------------------------------------------

  #onProgress(run, index, chunkBytes, loaded, total) {
    if (this.#run !== run) return;
    // `loaded` counts the multipart framing too; scale it to the chunk's own bytes.
    const now = total > 0 ? Math.min(chunkBytes, Math.round((chunkBytes * loaded) / total)) : 0;
    const before = run.inflight.get(index) || 0;
    if (now > before) this.#moved += now - before;
    run.inflight.set(index, now);
    this.#emitProgress(false);
  }

  #emitProgress(force) {
    const now = Date.now();
    if (!force && now - this.#lastEmit < PROGRESS_EVERY_MS) return;
    this.#lastEmit = now;
    const shape = this.#shape;
    const size = this.#file.size;
    let inflight = 0;
    if (this.#run) for (const bytes of this.#run.inflight.values()) inflight += bytes;
    const sent = Math.min(size, this.#confirmed + inflight);
    this.#samples.push([now, this.#moved]);
    while (this.#samples.length > 2 && now - this.#samples[0][0] > SPEED_WINDOW_MS) this.#samples.shift();
    const [t0, b0] = this.#samples[0];
    const running = this.#state === "running" && this.#phase === "sending";
    const speed = running && now - t0 >= 500 ? ((this.#moved - b0) * 1000) / (now - t0) : 0;
    const total = shape ? shape.total : chunkCount(size, this.#opts.chunkSize || size || 1);
    this.#emit("progress", {
      phase: this.#phase,
      bytesSent: sent,
      bytesTotal: size,
      percent: size ? (100 * sent) / size : 100,
      speed,
      secondsLeft: speed > 0 ? (size - sent) / speed : null,
      chunksDone: this.#chunksDone,
      totalChunks: total,
      chunkNumber: Math.min(total, this.#chunksDone + 1),
    });
  }

  // --- ending -----------------------------------------------------------------------

  #fail(error) {
    if (!["running", "paused"].includes(this.#state)) return;
    this.#stopRun();
    const failure =
      error instanceof UploadError ? error : new UploadError(error?.message || String(error));
    this.#setState("failed");
    this.#emit("error", { error: failure, message: failure.message, status: failure.status });
    this.#settle({ outcome: "failed", jobId: this.#jobId, error: failure });
  }

  #setState(state) {
    this.#state = state;
    this.#emit("statechange", { state });
  }

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }
}

/** A job's id as the server gives it (a positive integer), or the same in a string. */
function isJobId(job) {
  return (Number.isSafeInteger(job) && job > 0) || (typeof job === "string" && /^[1-9][0-9]*$/.test(job));
}

// The answer a complete upload would have had, for when the server's was not seen.
function completedAnswer(jobId) {
  return { message: "Data uploaded successfully and job started", job_id: jobId, complete: true };
}

// The server says so in a field; its message is for people, and may change.
function isCompleting(answer) {
  return answer?.complete === true;
}
