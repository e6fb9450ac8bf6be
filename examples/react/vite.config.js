// The example's page and Chute on one origin: the dev server (`npm run dev`) and the
// preview of the built page (`npm run preview`) pass /api/ on to Chute, as a reverse
// proxy in front of both would in production. The page then needs no CORS, and the
// uploader's default baseUrl ("": the page's own origin) is right.
//
// CHUTE_URL says where Chute listens (default: `chute serve`'s own default).
import react from "@vitejs/plugin-react";
import { defineConfig } from "vite";

const chute = process.env.CHUTE_URL || "http://127.0.0.1:8000";
const proxy = { "/api": { target: chute } };

export default defineConfig({
  plugins: [react()],
  server: { proxy },
  preview: { proxy },
});
