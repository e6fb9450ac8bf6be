// The uploader's protocol logic (planning, resuming, retrying, hashing, events) against a
// real `chute serve`. Node has no XMLHttpRequest, so these use fetchTransport; the
// browser's transport is exercised by the end-to-end tests.
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  backoffDelay,
  fetchTransport,
  inspectCsv,
  isRetryable,
  UploadMemory,
  Uploader,
} from "../../chute/web/uploader.js";
import { ChuteServer, FaultyProxy } from "./server.mjs";

const CHUNK = 4096;
const FAST_RETRY = { maxRetries: 4, baseDelay: 20, maxDelay: 100 };

function csv(rows, seed = 0) {
  let text = "id,name,amount\n";
  for (let i = 0; i < rows; i++) text += `${i},name-${seed}-${i},${(i * 7) % 1000}.${i % 100}\n`;
  return text;
}

function csvFile(rows, { name = "data.csv", seed = 0, lastModified = 1_700_000_000_000 } = {}) {
  return new File([csv(rows, seed)], name, { type: "text/csv", lastModified });
}

async function sha256(file) {
  return createHash("sha256").update(Buffer.from(await file.arrayBuffer())).digest("hex");
}

/** fetchTransport that records which chunk indices it sent, and can pause the test. */
function countingTransport(base = fetchTransport()) {
  const sent = [];
  return {
    sent,
    send(request) {
      sent.push(Number(request.form.get("chunk_index")));
      return base.send(request);
    },
  };
}

class MapStorage {
  constructor() {
    this.items = new Map();
  }
  getItem(key) {
    return this.items.has(key) ? this.items.get(key) : null;
  }
  setItem(key, value) {
    this.items.set(key, String(value));
  }
  removeItem(key) {
    this.items.delete(key);
  }
}

function collect(uploader, ...types) {
  const seen = Object.fromEntries(types.map((t) => [t, []]));
  for (const type of types) uploader.addEventListener(type, (e) => seen[type].push(e.detail));
  return seen;
}

let server;
before(async () => {
  server = new ChuteServer({ CHUTE_CHUNK_SIZE: String(CHUNK), CHUTE_PARALLEL_CHUNKS: "2" });
  await server.start();
});
after(async () => {
  await server?.close();
});

/** The job ran on exactly the bytes of `file`: nothing lost, nothing mixed. */
async function assertJobGot(user, job, file) {
  const done = await server.waitFor(user, job, ["succeeded", "failed"]);
  assert.equal(done.status, "succeeded", done.error);
  assert.equal(server.storedSha256(job), await sha256(file));
  const input = done.result.input || done.result;
  assert.equal(input.size, file.size);
  if (input.sha256 !== undefined) assert.equal(input.sha256, await sha256(file));
}

function uploader(user, file, jobId, options = {}) {
  return new Uploader(file, jobId, {
    baseUrl: server.url,
    headers: user.headers,
    retry: FAST_RETRY,
    ...options,
  });
}

describe("a whole upload", () => {
  test("sends every chunk once, with events, and the job gets the same bytes", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000);
    const total = Math.ceil(file.size / CHUNK);
    assert.ok(total >= 5, `want several chunks, have ${total}`);
    const transport = countingTransport();
    // The status requests the uploader makes (the chunks go through the transport).
    const statusReads = [];
    const fetch = (url, init) => {
      if (String(url).endsWith("/upload-data")) statusReads.push(init.method);
      return globalThis.fetch(url, init);
    };
    const up = uploader(user, file, job, { transport, fetch });
    const seen = collect(up, "progress", "chunkdone", "complete", "error", "retrying");
    const outcome = await up.start();

    assert.equal(outcome.outcome, "complete");
    assert.deepEqual(seen.error, []);
    assert.deepEqual(seen.retrying, []);
    assert.equal(transport.sent[0], 0, "chunk 0 goes first");
    assert.deepEqual([...transport.sent].sort((a, b) => a - b), [...Array(total).keys()]);
    assert.deepEqual(
      seen.chunkdone.map((d) => d.index).sort((a, b) => a - b),
      [...Array(total).keys()],
    );
    assert.equal(seen.complete.length, 1);
    assert.equal(seen.complete[0].answer.complete, true);
    // The last chunk's `complete: true` was believed: no status read after the chunks.
    assert.deepEqual(statusReads, ["GET"]);
    const last = seen.progress.at(-1);
    assert.equal(last.bytesSent, file.size);
    assert.equal(last.percent, 100);
    assert.equal(last.totalChunks, total);
    assert.equal(last.chunksDone, total);
    const percents = seen.progress.map((p) => p.percent);
    assert.deepEqual(percents, [...percents].sort((a, b) => a - b), "progress never goes back");
    assert.equal(up.state, "complete");

    await assertJobGot(user, job, file);
  });

  test("a one-chunk file", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(3);
    const outcome = await uploader(user, file, job).start();
    assert.equal(outcome.outcome, "complete");
    await assertJobGot(user, job, file);
  });

  test("parallel chunks follow the option", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    let inFlight = 0;
    let most = 0;
    const base = fetchTransport();
    const transport = {
      async send(request) {
        most = Math.max(most, ++inFlight);
        try {
          return await base.send(request);
        } finally {
          inFlight--;
        }
      },
    };
    const outcome = await uploader(user, csvFile(2000), job, { transport, parallel: 3 }).start();
    assert.equal(outcome.outcome, "complete");
    assert.equal(most, 3);
  });

  test("progress keeps coming while a chunk is slow to send", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const base = fetchTransport();
    let quiet = null; // [from, to]: the request is under way and reports nothing
    // One slow request with no progress events of its own (as fetch gives none).
    const transport = {
      async send(request) {
        const from = Date.now();
        await new Promise((r) => setTimeout(r, 2600));
        quiet = [from, Date.now()];
        return base.send(request);
      },
    };
    const up = uploader(user, csvFile(3), job, { transport });
    const times = [];
    up.addEventListener("progress", () => times.push(Date.now()));
    await up.start();
    const during = times.filter((t) => t > quiet[0] && t < quiet[1]);
    assert.ok(during.length >= 2, `${during.length} progress events in 2.6 s of sending`);
  });
});

describe("resuming", () => {
  test("a new uploader for the same file sends only the missing chunks", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000);
    const total = Math.ceil(file.size / CHUNK);
    const first = uploader(user, file, job, { parallel: 1 });
    first.addEventListener("chunkdone", (e) => {
      if (e.detail.index === 2) first.pause();
    });
    first.start();
    await new Promise((resolve) => first.addEventListener("paused", resolve));
    // What the server holds once the paused uploader's last request has settled.
    await new Promise((r) => setTimeout(r, 200));
    const held = (await server.api(user, "GET", `/api/job/${job}/upload-data`)).body;
    const heldIndices = held.chunks.map((c) => c.index);
    assert.ok(heldIndices.length >= 3 && heldIndices.length < total, `held ${heldIndices}`);

    const transport = countingTransport();
    const second = uploader(user, file, job, { transport });
    const seen = collect(second, "progress");
    const outcome = await second.start();
    assert.equal(outcome.outcome, "complete");
    const missing = [...Array(total).keys()].filter((i) => !heldIndices.includes(i));
    assert.deepEqual([...transport.sent].sort((a, b) => a - b), missing);
    assert.equal(seen.progress[0].bytesSent, held.bytes_received, "starts from what is held");
    await assertJobGot(user, job, file);
  });

  test("a different file of the same size is refused, nothing sent", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000, { seed: 1 });
    const other = csvFile(1000, { seed: 2 });
    assert.equal(file.size, other.size);
    const first = uploader(user, file, job, { parallel: 1 });
    first.addEventListener("chunkdone", () => first.pause());
    first.start();
    await new Promise((resolve) => first.addEventListener("paused", resolve));

    const transport = countingTransport();
    const second = uploader(user, other, job, { transport });
    const outcome = await second.start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.code, "other-file");
    assert.match(outcome.error.message, /another file/);
    assert.deepEqual(transport.sent, []);
  });

  test("pause stops sending and resume finishes", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000);
    const transport = countingTransport();
    const up = uploader(user, file, job, { transport, parallel: 1 });
    const seen = collect(up, "paused", "resumed", "complete");
    up.addEventListener("chunkdone", (e) => {
      if (e.detail.index === 1) up.pause();
    });
    const finished = up.start();
    await new Promise((resolve) => up.addEventListener("paused", resolve));
    const sentWhenPaused = transport.sent.length;
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(transport.sent.length, sentWhenPaused, "nothing sent while paused");
    assert.equal(up.state, "paused");
    up.resume();
    assert.equal((await finished).outcome, "complete");
    assert.equal(seen.paused.length, 1);
    assert.equal(seen.resumed.length, 1);
    assert.equal(seen.complete.length, 1);
    await assertJobGot(user, job, file);
  });
});

describe("failures", () => {
  test("network drops and 5xx/429/507 answers are retried with backoff", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000);
    const faults = { 1: 503, 2: "drop", 3: 429, 5: 507, 6: 500 };
    const proxy = new FaultyProxy(server.url, (n) => faults[n] ?? "pass");
    await proxy.listen();
    try {
      const up = new Uploader(file, job, {
        baseUrl: proxy.url,
        headers: user.headers,
        retry: FAST_RETRY,
        parallel: 1,
      });
      const seen = collect(up, "retrying", "error");
      const outcome = await up.start();
      assert.equal(outcome.outcome, "complete", outcome.error?.message);
      assert.deepEqual(
        seen.retrying.map((r) => r.status),
        [503, 0, 429, 507, 500],
      );
      assert.match(seen.retrying[0].reason, /proxy answered 503/);
      for (const r of seen.retrying) assert.ok(r.delay >= 0 && r.delay <= FAST_RETRY.maxDelay);
      assert.deepEqual(seen.error, []);
      await assertJobGot(user, job, file);
    } finally {
      await proxy.close();
    }
  });

  test("gives up after maxRetries with the last reason", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const proxy = new FaultyProxy(server.url, () => 503);
    await proxy.listen();
    try {
      const up = new Uploader(csvFile(10), job, {
        baseUrl: proxy.url,
        headers: user.headers,
        retry: { maxRetries: 2, baseDelay: 1, maxDelay: 5 },
      });
      const outcome = await up.start();
      assert.equal(outcome.outcome, "failed");
      assert.equal(outcome.error.code, "gave-up");
      assert.equal(proxy.chunkRequests, 3);
      assert.match(outcome.error.message, /503/);
    } finally {
      await proxy.close();
    }
  });

  test("a 4xx is not retried and its detail reaches the page", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const bytes = new Uint8Array(3 * CHUNK).fill(65);
    bytes[10] = 0;
    const transport = countingTransport();
    const up = uploader(user, new File([bytes], "binary.csv"), job, { transport });
    const seen = collect(up, "error", "retrying");
    const outcome = await up.start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.status, 422);
    assert.match(outcome.error.message, /does not look like a CSV file.*NUL/);
    assert.deepEqual(transport.sent, [0], "only chunk 0, once");
    assert.deepEqual(seen.retrying, []);
    assert.equal(seen.error.length, 1);
    assert.equal(seen.error[0].message, outcome.error.message);
  });

  test("a job that no longer takes data: 409, not retried", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    await server.api(user, "POST", `/api/job/${job}/cancel`);
    const transport = countingTransport();
    const outcome = await uploader(user, csvFile(10), job, { transport }).start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.status, 409);
    assert.match(outcome.error.message, /not accepting data \(status: cancelled\)/);
    assert.equal(transport.sent.length, 1);
  });

  test("another user's job is a 404 before any chunk is sent", async () => {
    const owner = await server.user();
    const stranger = await server.user();
    const job = await server.newJob(owner);
    const transport = countingTransport();
    const outcome = await uploader(stranger, csvFile(10), job, { transport }).start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.status, 404);
    assert.deepEqual(transport.sent, []);
  });
});

describe("held, cut off and stalled chunks", () => {
  test("423 and 408 are sent again, after the server's Retry-After", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(300);
    const proxy = new FaultyProxy(server.url, (n) => ({ 0: { status: 423, retryAfter: 1 }, 1: 408 })[n] ?? "pass");
    await proxy.listen();
    try {
      const up = new Uploader(file, job, {
        baseUrl: proxy.url,
        headers: user.headers,
        retry: { maxRetries: 4, baseDelay: 20, maxDelay: 2000 },
        parallel: 1,
      });
      const seen = collect(up, "retrying", "error");
      const outcome = await up.start();
      assert.equal(outcome.outcome, "complete", outcome.error?.message);
      assert.deepEqual(
        seen.retrying.map((r) => [r.index, r.status]),
        [
          [0, 423],
          [0, 408],
        ],
      );
      assert.equal(seen.retrying[0].delay, 1000);
      assert.ok(proxy.seen[1].at - proxy.seen[0].answeredAt >= 1000, "Retry-After was waited for");
      await assertJobGot(user, job, file);
    } finally {
      await proxy.close();
    }
  });

  test("a 409 stays final", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const proxy = new FaultyProxy(server.url, () => 409);
    await proxy.listen();
    try {
      const up = new Uploader(csvFile(10), job, { baseUrl: proxy.url, headers: user.headers, retry: FAST_RETRY });
      const outcome = await up.start();
      assert.equal(outcome.outcome, "failed");
      assert.equal(outcome.error.status, 409);
      assert.equal(proxy.chunkRequests, 1);
    } finally {
      await proxy.close();
    }
  });

  test("a chunk that stalls is cut off after stallTimeout and sent again", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(300);
    const proxy = new FaultyProxy(server.url, (n) => (n === 0 ? "stall" : "pass"));
    await proxy.listen();
    try {
      const up = new Uploader(file, job, {
        baseUrl: proxy.url,
        headers: user.headers,
        retry: FAST_RETRY,
        stallTimeout: 500,
      });
      const seen = collect(up, "retrying", "error");
      const outcome = await up.start();
      assert.equal(outcome.outcome, "complete", outcome.error?.message);
      assert.equal(seen.retrying.length, 1);
      assert.equal(seen.retrying[0].index, 0);
      assert.equal(seen.retrying[0].status, 0);
      assert.match(seen.retrying[0].reason, /Nothing moved for 0.5 s/);
      const gap = proxy.seen[1].at - proxy.seen[0].at;
      assert.ok(gap >= 500 && gap < 5000, `sent again after ${gap} ms`);
      await assertJobGot(user, job, file);
    } finally {
      await proxy.close();
    }
  });

  test("a chunk that keeps moving is never cut off, however long it takes", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const base = fetchTransport();
    const transport = {
      async send(request) {
        // 1.5 s of progress every 100 ms, three times the stall timeout, then the request.
        for (let i = 1; i <= 15; i++) {
          await new Promise((r) => setTimeout(r, 100));
          if (request.signal.aborted) throw new DOMException("stopped", "AbortError");
          request.onProgress(i, 100);
        }
        return base.send(request);
      },
    };
    const up = uploader(user, csvFile(3), job, { transport, stallTimeout: 500 });
    const seen = collect(up, "retrying");
    const outcome = await up.start();
    assert.equal(outcome.outcome, "complete", outcome.error?.message);
    assert.deepEqual(seen.retrying, []);
  });

  test("fetchTransport reports the body's bytes as they go out", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(3000);
    const reports = [];
    const base = fetchTransport();
    const transport = {
      send(request) {
        const onProgress = (loaded, total) => {
          reports.push([loaded, total]);
          request.onProgress(loaded, total);
        };
        return base.send({ ...request, onProgress });
      },
    };
    const outcome = await uploader(user, file, job, { transport, parallel: 1 }).start();
    assert.equal(outcome.outcome, "complete", outcome.error?.message);
    const partial = reports.filter(([loaded, total]) => total > CHUNK && loaded < total);
    assert.ok(partial.length > 0, "progress inside a chunk");
    await assertJobGot(user, job, file);
  });
});

describe("cancel and memory", () => {
  test("cancel discards the server's upload and forgets the file", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(1000);
    const memory = new UploadMemory(new MapStorage(), user.name);
    const up = uploader(user, file, job, { memory, parallel: 1 });
    up.addEventListener("chunkdone", () => {
      if (up.state === "running") {
        assert.equal(memory.find(file), job, "remembered while running");
        up.cancel();
      }
    });
    const outcome = await up.start();
    assert.equal(outcome.outcome, "cancelled");
    assert.equal(memory.find(file), null);
    const held = (await server.api(user, "GET", `/api/job/${job}/upload-data`)).body;
    assert.equal(held.state, "empty");
    assert.deepEqual(held.chunks, []);
    assert.equal((await server.api(user, "GET", `/api/job/${job}`)).body.status, "awaiting_upload");
  });

  test("completion forgets the file", async () => {
    const user = await server.user();
    const job = await server.newJob(user);
    const file = csvFile(100);
    const storage = new MapStorage();
    const memory = new UploadMemory(storage, user.name);
    memory.remember(csvFile(5, { name: "other.csv" }), 999);
    await uploader(user, file, job, { memory }).start();
    assert.equal(memory.find(file), null);
    assert.equal(memory.forJob(999).name, "other.csv");
  });

  test("memory is per user, keyed by name, size and last-modified, and cleared on sign-out", () => {
    const storage = new MapStorage();
    const alice = new UploadMemory(storage, "alice");
    const bob = new UploadMemory(storage, "bob");
    const file = csvFile(10);
    alice.remember(file, 7);
    assert.equal(alice.find(file), 7);
    assert.equal(bob.find(file), null);
    assert.equal(alice.find(csvFile(10, { lastModified: 5 })), null);
    assert.equal(alice.find(csvFile(11)), null);
    alice.remember(file, 8); // the same file for another job replaces the entry
    assert.deepEqual(alice.list().map((e) => e.jobId), [8]);
    bob.remember(file, 9);
    alice.clear();
    assert.equal(alice.find(file), null);
    assert.equal(bob.find(file), 9);
    assert.equal(storage.getItem("chute.uploads.alice"), null);
  });
});

describe("checks before sending", () => {
  test("inspectCsv accepts a CSV and names its header", async () => {
    assert.deepEqual(await inspectCsv(csvFile(3)), { ok: true, header: "id,name,amount" });
  });

  const refusals = [
    ["a name not ending in .csv", new File(["a,b\n1,2\n"], "data.txt"), /not a CSV file/],
    ["an empty file", new File([], "empty.csv"), /empty/],
    ["NUL bytes", new File(["a,b\n1,\u0000\n"], "nul.csv"), /NUL bytes/],
    ["a ZIP (xlsx)", new File([new Uint8Array([0x50, 0x4b, 3, 4, 1, 2])], "book.csv"), /ZIP/],
    ["gzip", new File([new Uint8Array([0x1f, 0x8b, 8, 0])], "data.csv"), /gzip/],
    ["a blank first line", new File(["\n1,2\n"], "blank.csv"), /empty line/],
    [
      "no line break in the first 64 KiB",
      new File(["x".repeat(70 * 1024)], "long.csv"),
      /no line break/,
    ],
  ];
  for (const [what, file, reason] of refusals) {
    test(`inspectCsv refuses ${what}`, async () => {
      const verdict = await inspectCsv(file);
      assert.equal(verdict.ok, false);
      assert.match(verdict.reason, reason);
    });
  }

  test("inspectCsv refuses a file over the server's limit", async () => {
    const verdict = await inspectCsv(csvFile(10), { maxFileBytes: 20 });
    assert.equal(verdict.ok, false);
    assert.match(verdict.reason, /limit of 20/);
  });
});

describe("retry policy", () => {
  test("which statuses are retried", () => {
    for (const status of [0, 408, 423, 429, 500, 502, 503, 507]) assert.ok(isRetryable(status), status);
    for (const status of [400, 401, 403, 404, 409, 413, 422]) assert.ok(!isRetryable(status), status);
  });

  test("backoff doubles, is capped, and is jittered within [ceiling/2, ceiling]", () => {
    const retry = { maxRetries: 10, baseDelay: 100, maxDelay: 1000 };
    assert.equal(backoffDelay(0, retry, () => 0), 50);
    assert.equal(backoffDelay(0, retry, () => 1), 100);
    assert.equal(backoffDelay(2, retry, () => 1), 400);
    assert.equal(backoffDelay(3, retry, () => 0.5), 600);
    assert.equal(backoffDelay(9, retry, () => 1), 1000);
    assert.equal(backoffDelay(9, retry, () => 0), 500);
  });
});
