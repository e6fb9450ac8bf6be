// One tus upload with tus-js-client (npm) in Node, timed request by request, for
// bench/tus_bench.py. Every server gets the same client and settings; only the
// endpoint, the headers and whether PATCHes carry Upload-Checksum differ.
//
//     node bench/tus/upload.mjs SPEC.json
//
// SPEC: {"endpoint", "file", "size", "chunkSize", "headers": {}, "metadata": {},
//        "checksums": null | {"<offset>": "<base64 sha256 of the PATCH body>"}}
// With "checksums", every PATCH carries `Upload-Checksum: sha256 <base64>`; the
// benchmark computes them before the clock starts, and a PATCH at an offset not
// listed (the server kept part of a body) has its slice hashed here.
//
// Prints one JSON object: the upload URL, the job id a Chute server named, the CPU
// seconds this process spent on the upload (its start-up left out), and every request
// with the times (ms, one clock) it started, had its last byte handed to the kernel
// ('finish') and had its answer read.

import { createHash } from 'node:crypto';
import { createReadStream, readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';

import { DefaultHttpStack, Upload } from 'tus-js-client';

const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const requests = [];

// Wraps the client's own Node HTTP stack, so the requests are exactly the ones it sends,
// and notes when each was started, fully sent and answered.
class TimedStack {
  constructor() {
    this.inner = new DefaultHttpStack();
  }

  createRequest(method, url) {
    return new TimedRequest(this.inner.createRequest(method, url));
  }

  getName() {
    return 'TimedStack';
  }
}

class TimedRequest {
  constructor(inner) {
    this.inner = inner;
  }

  getMethod() {
    return this.inner.getMethod();
  }

  getURL() {
    return this.inner.getURL();
  }

  setHeader(name, value) {
    this.inner.setHeader(name, value);
  }

  getHeader(name) {
    return this.inner.getHeader(name);
  }

  setProgressHandler(handler) {
    this.inner.setProgressHandler(handler);
  }

  abort() {
    return this.inner.abort();
  }

  getUnderlyingObject() {
    return this.inner.getUnderlyingObject();
  }

  async send(body) {
    const record = {
      method: this.getMethod(),
      url: this.getURL(),
      offset: this.getHeader('Upload-Offset') ?? null,
      bytes: body?.size ?? 0,
      checksum: this.getHeader('Upload-Checksum') ?? null,
      started: performance.now(),
      sent: null,
    };
    requests.push(record);
    const answer = this.inner.send(body);
    // The inner send() makes its http.ClientRequest synchronously, before it returns.
    this.inner.getUnderlyingObject().on('finish', () => {
      record.sent = performance.now();
    });
    const response = await answer;
    record.answered = performance.now();
    record.status = response.getStatus();
    record.answeredOffset = response.getHeader('Upload-Offset') ?? null;
    return response;
  }
}

function sliceSha256(start, end) {
  return new Promise((resolve, reject) => {
    const digest = createHash('sha256');
    createReadStream(spec.file, { start, end: end - 1 })
      .on('data', (data) => digest.update(data))
      .on('end', () => resolve(digest.digest('base64')))
      .on('error', reject);
  });
}

async function addChecksum(req) {
  if (!spec.checksums || req.getMethod() !== 'PATCH') return;
  const offset = Number(req.getHeader('Upload-Offset'));
  let sum = spec.checksums[String(offset)];
  if (sum === undefined) {
    sum = await sliceSha256(offset, Math.min(offset + spec.chunkSize, spec.size));
  }
  req.setHeader('Upload-Checksum', `sha256 ${sum}`);
}

let jobId = null;

function noteJob(req, res) {
  if (req.getMethod() === 'POST') {
    jobId = res.getHeader('Chute-Job-Id') ?? null;
  }
}

function upload() {
  return new Promise((resolve, reject) => {
    const task = new Upload(createReadStream(spec.file, { start: 0, end: spec.size - 1 }), {
      endpoint: spec.endpoint,
      uploadSize: spec.size,
      chunkSize: spec.chunkSize,
      metadata: spec.metadata,
      headers: spec.headers,
      httpStack: new TimedStack(),
      onBeforeRequest: addChecksum,
      onAfterResponse: noteJob,
      // A measurement, not a user: no retry to hide a failure, nothing stored to resume.
      retryDelays: null,
      storeFingerprintForResuming: false,
      onSuccess: () => resolve(task.url),
      onError: reject,
    });
    task.start();
  });
}

const cpuBefore = process.cpuUsage();
const cpuSeconds = () => {
  const used = process.cpuUsage(cpuBefore);
  return (used.user + used.system) / 1e6;
};
try {
  const url = await upload();
  console.log(JSON.stringify({ ok: true, url, jobId, cpuSeconds: cpuSeconds(), requests }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error), jobId, requests }));
  process.exitCode = 1;
}
