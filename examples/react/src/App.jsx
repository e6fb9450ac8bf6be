// One file into a Chute job, with the application's bearer token and a progress bar.
//
// The token is the one the application's OpenID Connect provider gives the person who
// signs in (authorization code flow with PKCE, by oidc-client-ts), for Chute's audience:
// Chute takes it when CHUTE_OIDC_ISSUER names that provider. It is asked for again before
// each request, so a renewed token is used. Without a provider configured, a token can be
// typed in instead (Chute gives one for a local user at POST /api/auth/token).
import { Uploader } from "@chute/uploader";
import { UserManager } from "oidc-client-ts";
import { useEffect, useRef, useState } from "react";

// "" (the default) is the page's own origin: vite.config.js passes /api/ on to Chute.
const CHUTE_URL = import.meta.env.VITE_CHUTE_URL ?? "";
const FINISHED = ["succeeded", "failed", "cancelled", "upload_expired"];

// The provider, set when the page is built: VITE_OIDC_ISSUER, VITE_OIDC_CLIENT_ID and
// VITE_OIDC_AUDIENCE (Chute's CHUTE_OIDC_AUDIENCE, asked for as a resource indicator).
const OIDC_ISSUER = import.meta.env.VITE_OIDC_ISSUER ?? "";
const OIDC_AUDIENCE = import.meta.env.VITE_OIDC_AUDIENCE ?? "";
const provider = OIDC_ISSUER
  ? new UserManager({
      authority: OIDC_ISSUER,
      client_id: import.meta.env.VITE_OIDC_CLIENT_ID ?? "",
      redirect_uri: `${window.location.origin}/`,
      scope: import.meta.env.VITE_OIDC_SCOPE ?? "openid",
      extraQueryParams: OIDC_AUDIENCE ? { resource: OIDC_AUDIENCE } : {},
      extraTokenParams: OIDC_AUDIENCE ? { resource: OIDC_AUDIENCE } : {},
    })
  : null;

// The provider's signed-in person, or null; a return from the provider is taken first.
async function signedIn() {
  if (!provider) return null;
  if (new URLSearchParams(window.location.search).has("code")) {
    const user = await provider.signinRedirectCallback();
    window.history.replaceState(null, "", window.location.pathname);
    return user;
  }
  const user = await provider.getUser();
  return user && !user.expired ? user : null;
}
// Once per page load (a return's code can be exchanged only once).
const arrival = signedIn();

export function App() {
  const [token, setToken] = useState("");
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const [person, setPerson] = useState(null);
  const [jobField, setJobField] = useState("");
  const [file, setFile] = useState(null);
  const [progress, setProgress] = useState(null);
  const [upState, setUpState] = useState("idle");
  const [jobId, setJobId] = useState(null);
  const [jobStatus, setJobStatus] = useState(null);
  const [error, setError] = useState("");
  const uploader = useRef(null);

  useEffect(() => {
    arrival.then(setPerson, (refused) => setError(refused.message));
  }, []);

  // The application's token, asked for before every request: the provider's, else the
  // one typed in.
  async function headers() {
    const user = provider && (await provider.getUser());
    const secret = user && !user.expired ? user.access_token : tokenRef.current.trim();
    return { Authorization: `Bearer ${secret}` };
  }

  async function upload(event) {
    event.preventDefault();
    if (!file) return;
    setError("");
    setJobStatus(null);
    // An existing job's id, or a job made for this file when the field is empty.
    const job = jobField.trim() || { name: file.name, kind: "profile" };
    let up;
    try {
      up = new Uploader(file, job, {
        baseUrl: CHUTE_URL,
        headers,
        onProgress: setProgress,
        onStateChange: setUpState,
      });
    } catch (refused) {
      return setError(refused.message); // a job id that is not one, say
    }
    up.addEventListener("jobcreated", (e) => setJobId(e.detail.job.id));
    uploader.current = up;
    setJobId(up.jobId);
    const outcome = await up.start();
    if (outcome.outcome === "failed") setError(outcome.error.message);
    if (outcome.outcome === "complete") setJobId(outcome.jobId);
  }

  // Once the file is in, the job runs on Chute: follow it until it ends.
  useEffect(() => {
    if (upState !== "complete" || jobId === null) return undefined;
    let stopped = false;
    (async () => {
      while (!stopped) {
        const answer = await fetch(`${CHUTE_URL}/api/job/${jobId}`, { headers: await headers() });
        const body = await answer.json();
        if (!answer.ok) return setError(body.detail);
        setJobStatus(body.status);
        if (FINISHED.includes(body.status)) return;
        await new Promise((resolve) => setTimeout(resolve, 1000));
      }
    })();
    return () => {
      stopped = true;
    };
  }, [upState, jobId]);

  const running = upState === "running" || upState === "paused";
  const percent = progress ? Math.floor(progress.percent) : 0;
  return (
    <main>
      <h1>Upload a CSV file into Chute</h1>
      {provider && (
        <p>
          {person ? (
            `Signed in as ${person.profile.sub}`
          ) : (
            <button type="button" onClick={() => provider.signinRedirect()}>
              Sign in
            </button>
          )}
        </p>
      )}
      <form onSubmit={upload}>
        <p>
          <label>
            Access token <input type="password" value={token} onChange={(e) => setToken(e.target.value)} />
          </label>
        </p>
        <p>
          <label>
            Job id (empty: a new job){" "}
            <input inputMode="numeric" value={jobField} onChange={(e) => setJobField(e.target.value)} />
          </label>
        </p>
        <p>
          <label>
            CSV file <input type="file" accept=".csv,text/csv" onChange={(e) => setFile(e.target.files[0] ?? null)} />
          </label>
        </p>
        <p>
          <button type="submit" disabled={!file || running}>
            Upload
          </button>{" "}
          {upState === "running" && <button type="button" onClick={() => uploader.current.pause()}>Pause</button>}
          {upState === "paused" && <button type="button" onClick={() => uploader.current.resume()}>Resume</button>}
          {running && <button type="button" onClick={() => uploader.current.cancel()}>Cancel</button>}
        </p>
      </form>
      <p>
        <progress aria-label="Upload progress" max="100" value={percent} /> <span id="percent">{percent} %</span>
      </p>
      <p role="status">
        Upload: {upState}
        {jobId !== null && ` · job ${jobId}`}
        {jobStatus && ` · ${jobStatus}`}
      </p>
      {error && <p role="alert">{error}</p>}
    </main>
  );
}
