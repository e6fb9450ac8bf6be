// The options an application's front end sets (the package @chute/uploader): headers from
// a function asked before every request, a job made on start(), progress and state
// callbacks; against a real `chute serve`, through the same fetchTransport as Node uses.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { fetchTransport, Uploader } from "../../chute/web/uploader.js";
import { ChuteServer } from "./server.mjs";

const CHUNK = 4096;
const FAST_RETRY = { maxRetries: 3, baseDelay: 20, maxDelay: 100 };

function csvFile(rows, name = "sales.csv") {
  let text = "id,region,amount\n";
  for (let i = 0; i < rows; i++) text += `${i},region-${i % 7},${(i * 13) % 1000}.${i % 100}\n`;
  return new File([text], name, { type: "text/csv", lastModified: 1_700_000_000_000 });
}

let server;
let user; // one for all: making a user runs `chute user add`, seconds on a busy machine
before(async () => {
  server = new ChuteServer({ CHUTE_CHUNK_SIZE: String(CHUNK), CHUTE_PARALLEL_CHUNKS: "2" });
  await server.start();
  user = await server.user();
});
after(async () => {
  await server?.close();
});

/** Another bearer token for the same user, as a sign-in service would hand out on refresh. */
async function freshToken() {
  const answer = await fetch(`${server.url}/api/auth/token`, {
    method: "POST",
    body: new URLSearchParams({ username: user.name, password: "pw-for-tests" }),
  });
  assert.equal(answer.status, 200);
  return (await answer.json()).access_token;
}

/** Every request's Authorization header, status requests and chunks alike, in order. */
function recording() {
  const seen = [];
  const chunks = fetchTransport();
  return {
    seen,
    fetch: (url, init) => {
      seen.push({ what: `${init.method} ${new URL(url).pathname}`, auth: init.headers.Authorization });
      return globalThis.fetch(url, init);
    },
    transport: {
      send(request) {
        seen.push({ what: `chunk ${request.form.get("chunk_index")}`, auth: request.headers.Authorization });
        return chunks.send(request);
      },
    },
  };
}

async function jobIds() {
  return (await server.api(user, "GET", "/api/job?limit=100")).body.items.map((job) => job.id);
}

describe("headers from a function", () => {
  test("an async function is asked before every request, and each request carries its answer", async () => {
    const job = await server.newJob(user);
    const tokens = [user.headers.Authorization.slice("Bearer ".length), await freshToken()];
    const given = [];
    const headers = async () => {
      await new Promise((resolve) => setTimeout(resolve, 1)); // as a token refresh would
      // The first three requests get the first token, the rest a refreshed one.
      const token = tokens[given.length < 3 ? 0 : 1];
      given.push(`Bearer ${token}`);
      return { Authorization: `Bearer ${token}` };
    };
    const net = recording();
    const up = new Uploader(csvFile(1200), job, {
      baseUrl: server.url,
      headers,
      retry: FAST_RETRY,
      fetch: net.fetch,
      transport: net.transport,
    });
    const outcome = await up.start();

    assert.equal(outcome.outcome, "complete", outcome.error?.message);
    assert.ok(net.seen.filter((r) => r.what.startsWith("chunk")).length >= 4, "several chunks");
    assert.deepEqual(
      net.seen.map((r) => r.auth),
      given,
      "one call per request, and the request sent what that call returned",
    );
    assert.equal((await server.waitFor(user, job, ["succeeded", "failed"])).status, "succeeded");
  });

  test("a plain function works too", async () => {
    const job = await server.newJob(user);
    let calls = 0;
    const up = new Uploader(csvFile(50), job, {
      baseUrl: server.url,
      headers: () => {
        calls += 1;
        return user.headers;
      },
    });
    assert.equal((await up.start()).outcome, "complete");
    assert.ok(calls >= 3, `asked ${calls} times: config, status, chunk`);
  });

  test("a 401 asks the function once more and sends again", async () => {
    const job = await server.newJob(user);
    let calls = 0;
    const up = new Uploader(csvFile(300), job, {
      baseUrl: server.url,
      // The first token it had has expired; asked again, it has a good one.
      headers: () => (++calls === 1 ? { Authorization: "Bearer expired" } : user.headers),
      retry: FAST_RETRY,
    });
    const retries = [];
    up.addEventListener("retrying", (e) => retries.push(e.detail));
    const outcome = await up.start();
    assert.equal(outcome.outcome, "complete", outcome.error?.message);
    assert.deepEqual(retries, [], "sent again at once, not as a retry after a wait");
    assert.equal((await server.waitFor(user, job, ["succeeded", "failed"])).status, "succeeded");
  });

  test("a token that stays refused fails the upload with the server's detail, after one more ask", async () => {
    const job = await server.newJob(user);
    let calls = 0;
    const net = recording();
    const up = new Uploader(csvFile(50), job, {
      baseUrl: server.url,
      headers: () => {
        calls += 1;
        return { Authorization: "Bearer revoked" };
      },
      retry: FAST_RETRY,
      fetch: net.fetch,
      transport: net.transport,
    });
    const outcome = await up.start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.status, 401);
    assert.equal(outcome.error.message, "Not signed in.");
    // The server's settings are open to all; the job's upload is not, and is asked for twice.
    const status = `GET /api/job/${job}/upload-data`;
    assert.deepEqual(
      net.seen.map((r) => r.what),
      ["GET /api/config", status, status],
    );
    assert.equal(calls, 3);
    assert.equal((await server.api(user, "GET", `/api/job/${job}`)).body.status, "awaiting_upload");
  });

  test("headers as an object are sent as they are; their 401 is final", async () => {
    const job = await server.newJob(user);
    const up = new Uploader(csvFile(50), job, {
      baseUrl: server.url,
      headers: { Authorization: "Bearer revoked" },
      retry: FAST_RETRY,
    });
    const outcome = await up.start();
    assert.equal(outcome.outcome, "failed");
    assert.equal(outcome.error.status, 401);
  });

  for (const [what, headers, message] of [
    [
      "throws",
      () => {
        throw new Error("the sign-in service is down");
      },
      "The headers could not be had: the sign-in service is down",
    ],
    ["rejects", () => Promise.reject(new Error("refresh refused")), "The headers could not be had: refresh refused"],
    ["returns no object", () => "Bearer abc", "The headers function must return an object of header names and values."],
  ]) {
    test(`a headers function that ${what} fails the upload at once, nothing sent`, async () => {
      const job = await server.newJob(user);
      const net = recording();
      const up = new Uploader(csvFile(50), job, {
        baseUrl: server.url,
        headers,
        retry: FAST_RETRY,
        fetch: net.fetch,
        transport: net.transport,
      });
      const outcome = await up.start();
      assert.equal(outcome.outcome, "failed");
      assert.equal(outcome.error.code, "headers");
      assert.equal(outcome.error.message, message);
      assert.deepEqual(net.seen, []);
    });
  }
});

describe("the job to create", () => {
  test("is made on start(), announced, and gets the file", async () => {
    const file = csvFile(400);
    const up = new Uploader(file, { name: "Sales, March" }, { baseUrl: server.url, headers: user.headers });
    assert.equal(up.jobId, null);
    const created = [];
    up.addEventListener("jobcreated", (e) => created.push(e.detail.job));
    const outcome = await up.start();

    assert.equal(outcome.outcome, "complete", outcome.error?.message);
    assert.equal(created.length, 1);
    assert.equal(created[0].name, "Sales, March");
    assert.equal(created[0].kind, "profile");
    assert.equal(up.jobId, created[0].id);
    assert.equal(outcome.jobId, created[0].id);
    const done = await server.waitFor(user, up.jobId, ["succeeded", "failed"]);
    assert.equal(done.status, "succeeded", done.error);
    assert.equal(done.result.input.size, file.size);
    assert.ok((await jobIds()).includes(up.jobId));
  });

  for (const [what, job, detail] of [
    ["an unknown kind", { name: "x", kind: "nope" }, "kind: unknown job kind 'nope'; this server runs: profile."],
    ["an empty name", { name: "" }, "name: String should have at least 1 character"],
    ["a field the server does not know", { name: "x", colour: "red" }, "colour: Extra inputs are not permitted"],
  ]) {
    test(`${what} is refused with the server's detail, no job made, nothing sent`, async () => {
      const jobsBefore = await jobIds();
      const net = recording();
      const up = new Uploader(csvFile(50), job, {
        baseUrl: server.url,
        headers: user.headers,
        retry: FAST_RETRY,
        fetch: net.fetch,
        transport: net.transport,
      });
      const outcome = await up.start();
      assert.equal(outcome.outcome, "failed");
      assert.equal(outcome.jobId, null);
      assert.equal(outcome.error.status, 422);
      assert.equal(outcome.error.message, detail);
      assert.deepEqual(
        net.seen.map((r) => r.what),
        ["POST /api/job"],
        "asked once: a refusal is not sent again",
      );
      assert.deepEqual(await jobIds(), jobsBefore);
    });
  }

  test("cancelled before it is made: no job, no request", async () => {
    const jobsBefore = await jobIds();
    const net = recording();
    const up = new Uploader(csvFile(50), { name: "never" }, {
      baseUrl: server.url,
      headers: user.headers,
      fetch: net.fetch,
      transport: net.transport,
    });
    const finished = up.start();
    await up.cancel();
    assert.deepEqual(await finished, { outcome: "cancelled", jobId: null });
    assert.deepEqual(net.seen, []);
    assert.deepEqual(await jobIds(), jobsBefore);
  });
});

describe("callbacks", () => {
  test("onProgress sees every progress, up to 100 %; onStateChange every state", async () => {
    const job = await server.newJob(user);
    const progress = [];
    const states = [];
    const up = new Uploader(csvFile(400), job, {
      baseUrl: server.url,
      headers: user.headers,
      onProgress: (p) => progress.push(p),
      onStateChange: (state) => states.push(state),
    });
    const events = [];
    up.addEventListener("progress", (e) => events.push(e.detail));
    assert.equal((await up.start()).outcome, "complete");
    assert.deepEqual(states, ["running", "complete"]);
    assert.deepEqual(progress, events);
    assert.equal(progress.at(-1).percent, 100);
    assert.equal(progress.at(-1).chunksDone, progress.at(-1).totalChunks);
  });
});

describe("bad options", () => {
  const file = csvFile(1);
  for (const [what, job] of [
    ["no job", undefined],
    ["a job id of 0", 0],
    ["a job id of -3", -3],
    ["a job id of 1.5", 1.5],
    ["a job id that is not digits", "12a"],
    ["a job to create without a name", { kind: "profile" }],
  ]) {
    test(`${what} is refused by the constructor`, () => {
      assert.throws(() => new Uploader(file, job), {
        name: "TypeError",
        message: "The job must be a job's id or the job to create ({name, kind, params}).",
      });
    });
  }

  test("headers that are a string are refused by the constructor", () => {
    assert.throws(() => new Uploader(file, 1, { headers: "Bearer abc" }), {
      name: "TypeError",
      message: "The headers option must be an object or a function that returns one.",
    });
  });

  test("a job id in a string is taken", () => {
    assert.equal(new Uploader(file, "42").jobId, "42");
  });
});
