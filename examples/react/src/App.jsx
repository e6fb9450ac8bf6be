// One file into a Chute job, with the application's bearer token and a progress bar.
//
// In an application the token comes from its sign-in library, asked again before each
// request so that a refreshed token is used; here it is typed into the page (Chute gives
// one for a local user at POST /api/auth/token), and read anew on every request.
import { Uploader } from "@chute/uploader";
import { useEffect, useRef, useState } from "react";

// "" (the default) is the page's own origin: vite.config.js passes /api/ on to Chute.
const CHUTE_URL = import.meta.env.VITE_CHUTE_URL ?? "";
const FINISHED = ["succeeded", "failed", "cancelled", "upload_expired"];

export function App() {
  const [token, setToken] = useState("");
  const tokenRef = useRef(token);
  tokenRef.current = token;
  const [jobField, setJobField] = useState("");
  const [file, setFile] = useState(null);
  const [progress, setProgress] = useState(null);
  const [upState, setUpState] = useState("idle");
  const [jobId, setJobId] = useState(null);
  const [jobStatus, setJobStatus] = useState(null);
  const [error, setError] = useState("");
  const uploader = useRef(null);

  // The application's token, asked for before every request.
  const headers = async () => ({ Authorization: `Bearer ${tokenRef.current.trim()}` });

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
