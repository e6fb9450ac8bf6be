// Types of uploader.js, written by hand: every export there is declared here and nothing
// else (tests/js/declarations.test.mjs compares the two lists, class members too).

/** Retry policy: exponential backoff with jitter, per chunk and per status request. */
export interface RetryPolicy {
  /** Tries after the first before giving up. */
  maxRetries: number;
  /** Milliseconds: the ceiling of the first wait, doubled at each retry. */
  baseDelay: number;
  /** Milliseconds: no wait is longer. */
  maxDelay: number;
}

export declare const DEFAULT_RETRY: Readonly<RetryPolicy>;
/** Milliseconds a chunk request may go without progress or answer before it is sent again. */
export declare const DEFAULT_STALL_TIMEOUT: number;

/** Why an upload stopped: `failed` unless one of the others says more. */
export type UploadErrorCode =
  | "failed"
  | "gave-up"
  | "other-file"
  | "too-large"
  | "empty"
  | "insecure"
  | "headers"
  | "quota";

/** An upload that cannot go on: `status` is the HTTP status (0 for none). */
export declare class UploadError extends Error {
  constructor(message: string, options?: { status?: number; index?: number | null; code?: UploadErrorCode });
  readonly name: "UploadError";
  status: number;
  /** The chunk's index (0-based), or null when the error is not about one chunk. */
  index: number | null;
  code: UploadErrorCode;
}

/** The transport could not get an answer (connection refused, reset, timed out). */
export declare class NetworkError extends Error {
  constructor(message?: string);
  readonly name: "NetworkError";
}

export declare function isRetryable(status: number): boolean;
export declare function backoffDelay(attempt: number, retry?: RetryPolicy, random?: () => number): number;
export declare function chunkCount(fileSize: number, chunkSize: number): number;
export declare function sha256Hex(blob: Blob): Promise<string>;

/** Extra request headers: names to values. */
export type RequestHeaders = Record<string, string>;

/** What a transport is asked to send: one chunk, as multipart/form-data. */
export interface TransportRequest {
  url: string;
  form: FormData;
  headers?: RequestHeaders;
  signal?: AbortSignal;
  /** Bytes of the body sent so far, of `total` (0 when unknown). */
  onProgress?: (loaded: number, total: number) => void;
  /** Any other sign of life from the server. */
  onAlive?: () => void;
}

export interface TransportAnswer {
  status: number;
  /** The answer's JSON, or null when it had none that parsed. */
  body: any;
  retryAfter: string | null;
  /** The answer is a 507 of the user's storage quota (`Chute-Quota`): final, not retried. */
  quota?: boolean;
}

/** Sends chunks; rejects with NetworkError when no answer came, AbortError when stopped. */
export interface Transport {
  send(request: TransportRequest): Promise<TransportAnswer>;
}

export declare function xhrTransport(): Transport;
export declare function fetchTransport(
  fetchImpl?: typeof fetch,
  options?: { stream?: boolean },
): Transport;

/** Where UploadMemory keeps its list: localStorage, or anything with these three. */
export interface KeyValueStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** A file as UploadMemory knows it. */
export interface FileIdentity {
  name: string;
  size: number;
  lastModified: number;
}

export interface RememberedUpload extends FileIdentity {
  jobId: JobId;
}

/** Which job each unfinished upload of a user belongs to, across page loads. */
export declare class UploadMemory {
  constructor(storage: KeyValueStorage, userKey: string);
  readonly storage: KeyValueStorage;
  readonly key: string;
  list(): RememberedUpload[];
  find(file: FileIdentity): JobId | null;
  forJob(jobId: JobId): RememberedUpload | null;
  remember(file: FileIdentity, jobId: JobId): void;
  forget(jobId: JobId): void;
  /** On sign-out: a shared computer keeps no trace of what was uploaded. */
  clear(): void;
}

export type CsvInspection = { ok: true; header: string } | { ok: false; reason: string };

/** A quick look at a file before anything is sent. */
export declare function inspectCsv(file: File, options?: { maxFileBytes?: number }): Promise<CsvInspection>;

/** A job's id, as the server gives it, or the same digits in a string. */
export type JobId = number | string;

/** The job to make on start(), as POST /api/job takes it. */
export interface NewJob {
  name: string;
  /** Default "profile". */
  kind?: string;
  params?: Record<string, unknown>;
}

export type JobStatus =
  | "awaiting_upload"
  | "uploading"
  | "queued"
  | "running"
  | "succeeded"
  | "failed"
  | "cancelled"
  | "upload_expired";

/** A job as the server describes it (GET /api/job/{id}); the fields the uploader's users read. */
export interface Job {
  id: number;
  name: string;
  kind: string;
  params: Record<string, unknown>;
  status: JobStatus;
  created_at: string;
  updated_at: string;
  started_at: string | null;
  finished_at: string | null;
  attempts: number;
  progress: number | null;
  upload: Record<string, unknown> | null;
  result: Record<string, unknown> | null;
  error: string | null;
}

/** The server's answer to a chunk. */
export interface ChunkAnswer {
  message: string;
  data_chunk_index: number;
  job_id: number;
  /** The whole file is in and the job started. */
  complete: boolean;
  duplicate: boolean;
  expires_at?: string | null;
}

export type UploaderState = "idle" | "running" | "paused" | "complete" | "cancelled" | "failed";

export interface Progress {
  phase: "verifying" | "sending";
  bytesSent: number;
  bytesTotal: number;
  /** 0 to 100. */
  percent: number;
  /** Bytes a second over the last few seconds; 0 while not sending. */
  speed: number;
  secondsLeft: number | null;
  chunksDone: number;
  totalChunks: number;
  /** 1-based: the chunk being sent. */
  chunkNumber: number;
}

export interface UploaderEvents {
  progress: Progress;
  chunkdone: { index: number; size: number; answer: ChunkAnswer };
  retrying: { index: number | null; attempt: number; delay: number; status: number; reason: string };
  error: { error: UploadError; message: string; status: number };
  complete: { answer: ChunkAnswer };
  jobcreated: { job: Job };
  paused: {};
  resumed: {};
  cancelled: {};
  statechange: { state: UploaderState };
}

export type Outcome =
  | { outcome: "complete"; jobId: JobId; answer: ChunkAnswer }
  | { outcome: "cancelled"; jobId: JobId | null }
  | { outcome: "failed"; jobId: JobId | null; error: UploadError };

export interface UploaderOptions {
  /** The server's URL without a trailing slash; "" (the default) is the page's own origin. */
  baseUrl?: string;
  /**
   * Extra headers for every request, or a function (sync or async) called before each
   * request that returns them: the place for an application's bearer token. With a
   * function, a 401 answer asks it once more and sends again.
   */
  headers?: RequestHeaders | (() => RequestHeaders | Promise<RequestHeaders>);
  /** Called with each `progress` event's detail. */
  onProgress?: (progress: Progress) => void;
  /** Called with the new state on each `statechange` event. */
  onStateChange?: (state: UploaderState) => void;
  /** Bytes a chunk; default the server's (GET /api/config). */
  chunkSize?: number;
  /** Chunks in flight at once; default the server's. */
  parallel?: number;
  retry?: Partial<RetryPolicy>;
  /** Milliseconds a chunk request may go without progress or answer; DEFAULT_STALL_TIMEOUT. */
  stallTimeout?: number;
  /** Remembers the job of an unfinished upload, to resume it after a reload. */
  memory?: UploadMemory;
  /** Hash the chunks the server already holds and refuse to mix two files; default true. */
  verifyHeld?: boolean;
  /** For status requests and job creation; default the global fetch. */
  fetch?: typeof fetch;
  /** For chunks; default xhrTransport() in browsers, fetchTransport() elsewhere. */
  transport?: Transport;
  /** For the retries' jitter; default Math.random. */
  random?: () => number;
}

/** One file into one job: an existing job (its id) or one made on start(). */
export declare class Uploader extends EventTarget {
  constructor(file: File, job: JobId | NewJob, options?: UploaderOptions);
  readonly file: File;
  /** Null until the job to create is made. */
  readonly jobId: JobId | null;
  readonly state: UploaderState;
  /** Resolves once the upload ends, however it ends; never rejects. */
  start(): Promise<Outcome>;
  pause(): void;
  resume(): void;
  /** Stop and discard what the server holds of this upload. */
  cancel(): Promise<void>;

  addEventListener<K extends keyof UploaderEvents>(
    type: K,
    listener: (event: CustomEvent<UploaderEvents[K]>) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof UploaderEvents>(
    type: K,
    listener: (event: CustomEvent<UploaderEvents[K]>) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}
