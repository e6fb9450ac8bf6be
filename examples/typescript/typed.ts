// A typed front end's use of @chute/uploader, as an application would write it. It runs
// nowhere: `tsc --noEmit` checks it against the package's declarations (uploader.d.ts),
// and each `@ts-expect-error` is a misuse the declarations must refuse.
import {
  type Job,
  type Outcome,
  type Progress,
  type UploaderOptions,
  type UploaderState,
  DEFAULT_RETRY,
  inspectCsv,
  UploadError,
  Uploader,
  UploadMemory,
} from "@chute/uploader";

/** The application's sign-in library would give this; a refreshed token on each call. */
declare function accessToken(): Promise<string>;
declare const picked: File;
declare function show(text: string): void;

const options: UploaderOptions = {
  baseUrl: "https://chute.example.org",
  headers: async () => ({ Authorization: `Bearer ${await accessToken()}` }),
  onProgress: (p: Progress) => show(`${p.percent.toFixed(0)} % (${p.chunkNumber} of ${p.totalChunks})`),
  onStateChange: (state: UploaderState) => show(state),
  chunkSize: 8 * 1024 * 1024,
  parallel: 3,
  retry: { maxRetries: DEFAULT_RETRY.maxRetries * 2 },
  stallTimeout: 90_000,
  memory: new UploadMemory(localStorage, "alice"),
};

export async function uploadInto(jobId: number): Promise<string> {
  const check = await inspectCsv(picked, { maxFileBytes: 20 * 1024 ** 3 });
  if (!check.ok) return check.reason;
  const up = new Uploader(picked, jobId, options);
  up.addEventListener("retrying", (e) => show(`chunk ${e.detail.index ?? "-"} again in ${e.detail.delay} ms`));
  up.addEventListener("error", (e) => show(e.detail.error.code));
  const outcome: Outcome = await up.start();
  switch (outcome.outcome) {
    case "complete":
      return `job ${outcome.jobId} started: ${outcome.answer.complete}`;
    case "failed":
      return outcome.error instanceof UploadError ? `${outcome.error.status}: ${outcome.error.message}` : "?";
    case "cancelled":
      return "cancelled";
  }
}

export async function uploadIntoNewJob(): Promise<Job | null> {
  const up = new Uploader(picked, { name: picked.name, kind: "profile", params: {} }, {
    headers: () => ({ "X-Tenant": "acme" }), // a plain function works too
  });
  let made: Job | null = null;
  up.addEventListener("jobcreated", (e) => {
    made = e.detail.job;
  });
  const id: number | string | null = up.jobId;
  show(String(id));
  await up.start();
  up.pause();
  up.resume();
  await up.cancel();
  return made;
}

// Misuses the declarations refuse.
// @ts-expect-error: headers are strings, not a token alone
new Uploader(picked, 1, { headers: "Bearer abc" });
// @ts-expect-error: a job to create needs a name
new Uploader(picked, { kind: "profile" });
// @ts-expect-error: the headers function returns header values as strings
new Uploader(picked, 1, { headers: async () => ({ "X-Count": 1 }) });
// @ts-expect-error: progress is a number
new Uploader(picked, 1, { onProgress: (p) => p.percent.toUpperCase() });
// @ts-expect-error: there is no such state
new Uploader(picked, 1, { onStateChange: (s) => s === "done" });
// @ts-expect-error: no such option
new Uploader(picked, 1, { baseURL: "https://chute.example.org" });
// @ts-expect-error: the event's detail is typed
new Uploader(picked, 1).addEventListener("progress", (e) => e.detail.nope);
// @ts-expect-error: jobId is read-only
new Uploader(picked, 1).jobId = 2;
