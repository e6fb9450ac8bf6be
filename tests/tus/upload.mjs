// tus-js-client (the tus project's client, pinned in package.json) sending one file to a tus
// server, for tests/tus. Every request and answer is printed as a JSON line on stdout as it
// happens, so the Python test can read what the client did and act mid-upload (kill the
// server while a PATCH is held open).
//
//   node tests/tus/upload.mjs '<options as JSON>'
//
// Options: `file` (a path, sent as fs.createReadStream as Node programs do), and as
// tus-js-client takes them: `endpoint`, `headers`, `metadata`, `chunkSize` (absent: the
// client's default, the whole rest of the file in one PATCH), `parallelUploads`,
// `retryDelays` (absent: none, the first failure ends the upload), `uploadUrl` (resume).
// Ours, to test the server's promises:
// - `checksum: true`: every PATCH carries `Upload-Checksum: sha256 <base64>` of its body;
// - `corruptAt`: the PATCH at this offset carries a wrong checksum instead (once);
// - `holdAt`: the first PATCH whose body crosses this offset of the file stops sending
//   there (a "held" line says so) and waits, open, until its connection dies.
// Exit code 0 when the upload succeeded, 1 when it failed (an "error" line says why).
import { createHash } from "node:crypto";
import { createReadStream, readFileSync, statSync } from "node:fs";
import { Transform } from "node:stream";

import * as tus from "tus-js-client";

const options = JSON.parse(process.argv[2]);
const size = statSync(options.file).size;
const chunkSize = options.chunkSize ?? Number.POSITIVE_INFINITY;

function print(line) {
  process.stdout.write(`${JSON.stringify(line)}\n`);
}

// stdout is a pipe: exit only once the last line is written.
function exit(code, line) {
  process.stdout.write(`${JSON.stringify(line)}\n`, () => process.exit(code));
}

function sha256Base64(bytes) {
  return createHash("sha256").update(bytes).digest("base64");
}

// The file's bytes, for checksums only (the upload itself reads the file as a stream).
const bytes = options.checksum ? readFileSync(options.file) : null;
let corrupted = false;

function addChecksum(req) {
  const offset = Number(req.getHeader("Upload-Offset"));
  const body = bytes.subarray(offset, Math.min(offset + chunkSize, size));
  let digest = sha256Base64(body);
  if (offset === options.corruptAt && !corrupted) {
    corrupted = true;
    digest = sha256Base64(Buffer.concat([body, Buffer.from("x")]));
  }
  req.setHeader("Upload-Checksum", `sha256 ${digest}`);
}

let held = false;

/** The body of a PATCH, cut off at `holdAt` when it is the first one to cross it. */
function holding(req, body) {
  const offset = Number(req.getHeader("Upload-Offset"));
  const holdAt = options.holdAt;
  if (held || holdAt == null || req.getMethod() !== "PATCH" || body?.size == null) return body;
  if (!(offset < holdAt && holdAt < offset + body.size)) return body;
  held = true;
  let sent = offset;
  const gate = new Transform({
    transform(chunk, _encoding, done) {
      if (sent + chunk.length < holdAt) {
        sent += chunk.length;
        done(null, chunk);
        return;
      }
      this.push(chunk.subarray(0, holdAt - sent));
      sent = holdAt;
      print({ event: "held", at: holdAt });
      // `done` is never called: the body stops here and the request stays open.
    },
  });
  gate.size = body.size; // so the request still declares its Content-Length
  return body.pipe(gate);
}

/** tus-js-client's own Node HTTP stack, with `holding` between the file and the socket. */
class HoldingHttpStack {
  constructor() {
    this.stack = new tus.DefaultHttpStack();
  }

  createRequest(method, url) {
    const req = this.stack.createRequest(method, url);
    const send = req.send.bind(req);
    req.send = (body) => send(holding(req, body));
    return req;
  }

  getName() {
    return "HoldingHttpStack";
  }
}

const upload = new tus.Upload(createReadStream(options.file), {
  endpoint: options.endpoint,
  uploadUrl: options.uploadUrl ?? null,
  headers: options.headers ?? {},
  metadata: options.metadata ?? {},
  chunkSize,
  parallelUploads: options.parallelUploads ?? 1,
  retryDelays: options.retryDelays ?? null,
  httpStack: new HoldingHttpStack(),
  onBeforeRequest(req) {
    if (options.checksum && req.getMethod() === "PATCH") addChecksum(req);
    print({
      event: "request",
      method: req.getMethod(),
      url: req.getURL(),
      offset: req.getHeader("Upload-Offset") ?? null,
      concat: req.getHeader("Upload-Concat") ?? null,
      checksum: req.getHeader("Upload-Checksum") ?? null,
    });
  },
  onAfterResponse(req, res) {
    print({
      event: "response",
      method: req.getMethod(),
      url: req.getURL(),
      status: res.getStatus(),
      offset: res.getHeader("Upload-Offset") ?? null,
      length: res.getHeader("Upload-Length") ?? null,
      location: res.getHeader("Location") ?? null,
      expires: res.getHeader("Upload-Expires") ?? null,
      jobId: res.getHeader("Chute-Job-Id") ?? null,
      body: res.getStatus() >= 400 ? res.getBody() : null,
    });
  },
  onSuccess() {
    exit(0, { event: "success", url: upload.url });
  },
  onError(error) {
    const status = error.originalResponse?.getStatus() ?? null;
    exit(1, { event: "error", status, message: String(error), url: upload.url });
  },
});
upload.start();
