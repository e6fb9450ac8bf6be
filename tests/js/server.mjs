// A real `chute serve` for the uploader's tests: its own data dir, port and users.
import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import http from "node:http";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const PYTHON = process.env.CHUTE_PYTHON || path.join(ROOT, ".venv/bin/python");

/**
 * fetch, sent again when the server closed a kept-alive connection just as it was
 * reused ("other side closed": a race between the server's idle timeout and the
 * connection pool, seen under load). Only for the tests' own requests, which may repeat.
 */
async function fetchAgain(url, init) {
  for (let tries = 1; ; tries++) {
    try {
      return await fetch(url, init);
    } catch (error) {
      if (tries >= 3 || error.cause?.code !== "UND_ERR_SOCKET") throw error;
    }
  }
}

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once("error", reject);
    probe.listen(0, "127.0.0.1", () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

export class ChuteServer {
  constructor(settings = {}) {
    this.dir = mkdtempSync(path.join(tmpdir(), "chute-js-"));
    this.settings = settings;
    this.port = 0;
    this.process = null;
    this.users = 0;
  }

  get url() {
    return `http://127.0.0.1:${this.port}`;
  }

  get env() {
    return {
      ...process.env,
      CHUTE_DATA_DIR: path.join(this.dir, "data"),
      CHUTE_PORT: String(this.port),
      CHUTE_MIN_FREE_BYTES: "0",
      ...this.settings,
    };
  }

  /** Start, on the same port as before when there was one. */
  async start() {
    this.port ||= await freePort();
    this.process = spawn(PYTHON, ["-m", "chute", "serve"], {
      cwd: this.dir,
      env: this.env,
      stdio: "ignore",
      detached: true, // its own process group: stop() ends the worker too
    });
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      if (this.process.exitCode !== null) throw new Error("chute serve exited");
      try {
        if ((await fetch(`${this.url}/api/config`)).ok) return;
      } catch {
        // not listening yet
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error("chute serve did not answer in 30 s");
  }

  async stop() {
    const child = this.process;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    process.kill(-child.pid, "SIGKILL");
    await exited;
    this.process = null;
  }

  async close() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A new user with a bearer token: {name, headers}. */
  async user() {
    const name = `user${++this.users}`;
    const password = "pw-for-tests";
    const added = spawnSync(PYTHON, ["-m", "chute", "user", "add", name], {
      cwd: this.dir,
      env: this.env,
      input: `${password}\n`,
    });
    if (added.status !== 0) throw new Error(`user add failed: ${added.stderr}`);
    const answer = await fetchAgain(`${this.url}/api/auth/token`, {
      method: "POST",
      body: new URLSearchParams({ username: name, password }),
    });
    if (!answer.ok) throw new Error(`token: ${answer.status}`);
    const { access_token } = await answer.json();
    return { name, headers: { Authorization: `Bearer ${access_token}` } };
  }

  async api(user, method, route, body) {
    const answer = await fetchAgain(`${this.url}${route}`, {
      method,
      headers: { ...user.headers, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await answer.text();
    return { status: answer.status, body: text ? JSON.parse(text) : null };
  }

  async newJob(user, name = "js test") {
    const { status, body } = await this.api(user, "POST", "/api/job", { name, kind: "profile" });
    if (status !== 201) throw new Error(`new job: ${status}`);
    return body.id;
  }

  /** SHA-256 of the file a job read: its assembled input in the local store. */
  storedSha256(jobId) {
    const file = path.join(this.dir, "data", "files", "objects", "jobs", String(jobId), "input.csv");
    return createHash("sha256").update(readFileSync(file)).digest("hex");
  }

  async waitFor(user, jobId, statuses, timeoutMs = 30_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { body } = await this.api(user, "GET", `/api/job/${jobId}`);
      if (statuses.includes(body.status)) return body;
      if (Date.now() > deadline) throw new Error(`job ${jobId} still ${body.status}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * A proxy in front of a server that can misbehave on chunk uploads: `rule(n, req)`
 * returns "pass", "drop" (connection closed, no answer), "stall" (the body is left
 * unread and no answer comes: a silent network drop as the client sees it), a status
 * to answer with, or {status, retryAfter} to answer with a Retry-After header too.
 * `seen` lists the chunk requests: {at, verdict, answeredAt}.
 */
export class FaultyProxy {
  constructor(target, rule) {
    this.target = target;
    this.rule = rule;
    this.chunkRequests = 0;
    this.seen = [];
    this.server = http.createServer((req, res) => this.#handle(req, res));
  }

  async listen() {
    await new Promise((resolve) => this.server.listen(0, "127.0.0.1", resolve));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
  }

  close() {
    this.server.closeAllConnections();
    return new Promise((resolve) => this.server.close(resolve));
  }

  #handle(req, res) {
    const isChunk = req.method === "POST" && req.url.endsWith("/upload-data");
    const verdict = isChunk ? this.rule(this.chunkRequests++, req) : "pass";
    const seen = { at: Date.now(), verdict, answeredAt: null };
    if (isChunk) this.seen.push(seen);
    if (verdict === "drop") {
      req.socket.destroy();
      return;
    }
    if (verdict === "stall") {
      req.pause(); // nothing more is read, nothing is answered, until close()
      return;
    }
    if (typeof verdict === "number" || typeof verdict === "object") {
      const { status, retryAfter } = typeof verdict === "number" ? { status: verdict } : verdict;
      req.resume();
      req.on("end", () => {
        const headers = { "Content-Type": "application/json", Connection: "close" };
        if (retryAfter !== undefined) headers["Retry-After"] = String(retryAfter);
        res.writeHead(status, headers);
        res.end(JSON.stringify({ detail: `The proxy answered ${status}.` }));
        seen.answeredAt = Date.now();
      });
      return;
    }
    const { hostname, port } = new URL(this.target);
    const upstream = http.request(
      { hostname, port, path: req.url, method: req.method, headers: req.headers },
      (answer) => {
        res.writeHead(answer.statusCode, answer.headers);
        answer.pipe(res);
      },
    );
    upstream.on("error", () => req.socket.destroy());
    req.pipe(upstream);
  }
}
