// The page's API tokens view (#/tokens): make a token (its secret shown once), list
// them with their last use, revoke one. app.js routes here and lends its helpers.

const $ = (id) => document.getElementById(id);
const MAX_DAYS = 3650;

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("aria-") || key === "role" || key === "for") node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

/** The view's parts, made once, inside #tokens. */
function build() {
  const form = el(
    "form",
    { id: "token-form", className: "panel stack" },
    el("h2", { id: "token-form-title" }, "New token"),
    el(
      "p",
      { className: "help" },
      "A token lets a script or pipeline use Chute as you, without your password: send it as " +
        "“Authorization: Bearer …”, or set CHUTE_TOKEN for the chute command. " +
        "A token cannot make other tokens.",
    ),
    el("label", { for: "token-name" }, "Token name"),
    el("input", { id: "token-name", name: "name", maxLength: 100, required: true, autocomplete: "off" }),
    el("label", { for: "token-days" }, "Expires after (days; leave empty for never)"),
    el("input", { id: "token-days", name: "days", type: "number", min: 1, max: MAX_DAYS, step: 1 }),
    el("button", { type: "submit" }, "Create token"),
    el("p", { id: "token-error", className: "error", role: "alert" }),
  );
  form.setAttribute("aria-labelledby", "token-form-title");

  const made = el(
    "div",
    { id: "token-made", className: "panel stack", hidden: true, role: "region", "aria-label": "New token" },
    el("p", { id: "token-made-text" }),
    el("label", { for: "token-secret" }, "Secret"),
    el("input", { id: "token-secret", readOnly: true, spellcheck: false, autocomplete: "off" }),
    el(
      "div",
      { className: "row buttons" },
      el("button", { type: "button", id: "token-copy" }, "Copy"),
      el("button", { type: "button", id: "token-done" }, "Done"),
    ),
    el("p", { id: "token-copied", role: "status", "aria-live": "polite" }),
  );

  const list = el(
    "div",
    { className: "panel" },
    el("h2", { id: "tokens-list-title" }, "Your tokens"),
    el(
      "div",
      { className: "scroll", role: "region", "aria-labelledby": "tokens-list-title", tabIndex: 0 },
      el(
        "table",
        { id: "tokens-table" },
        el(
          "thead",
          {},
          el(
            "tr",
            {},
            ...["Name", "Created", "Expires", "Last used", "Revoke"].map((h) => el("th", { scope: "col" }, h)),
          ),
        ),
        el("tbody"),
      ),
    ),
    el("p", { id: "tokens-empty", hidden: true }, "No API tokens yet."),
  );
  $("tokens").replaceChildren(form, made, list);
}

function forgetSecret() {
  const secret = $("token-secret");
  if (secret) secret.value = "";
  const made = $("token-made");
  if (made) made.hidden = true;
}

let helpers = null;

async function load() {
  const { api, clean, when } = helpers;
  let page;
  try {
    page = await api("GET", "/api/tokens");
  } catch (error) {
    $("token-error").textContent = clean(`The tokens could not be loaded: ${error.message}`);
    return;
  }
  const body = $("tokens-table").tBodies[0];
  body.replaceChildren();
  for (const token of page.items) {
    const expires = token.expires_at ? when(token.expires_at) : "never";
    const revoke = el("button", { type: "button", className: "revoke" }, "Revoke");
    revoke.setAttribute("aria-label", clean(`Revoke ${token.name}`));
    revoke.addEventListener("click", () => revokeToken(token));
    const row = el(
      "tr",
      {},
      el("td", {}, clean(token.name)),
      el("td", {}, when(token.created_at)),
      el("td", {}, token.expired ? `expired ${expires}` : expires),
      el("td", {}, token.last_used_at ? when(token.last_used_at) : "never"),
      el("td", {}, revoke),
    );
    row.dataset.tokenId = String(token.id);
    body.append(row);
  }
  $("tokens-empty").hidden = page.items.length > 0;
  $("tokens-table").hidden = page.items.length === 0;
}

async function create(event) {
  event.preventDefault();
  const { api, clean, when } = helpers;
  const form = event.target;
  $("token-error").textContent = "";
  forgetSecret();
  const body = { name: form.name.value };
  if (form.days.value !== "") {
    const days = Number(form.days.value);
    if (!Number.isInteger(days) || days < 1 || days > MAX_DAYS) {
      $("token-error").textContent = `Expiry: a whole number of days from 1 to ${MAX_DAYS}, or empty for never.`;
      return;
    }
    body.expires_in_days = days;
  }
  let made;
  try {
    made = await api("POST", "/api/tokens", body);
  } catch (error) {
    $("token-error").textContent = clean(error.message);
    return;
  }
  form.reset();
  const expiry = made.expires_at ? `it expires ${when(made.expires_at)}` : "it never expires";
  $("token-made-text").textContent = clean(
    `Token “${made.name}” is made; ${expiry}. Copy its secret now: it will not be shown again.`,
  );
  $("token-secret").value = made.secret;
  $("token-copied").textContent = "";
  $("token-made").hidden = false;
  $("token-secret").focus();
  $("token-secret").select();
  await load();
}

async function copySecret() {
  const secret = $("token-secret");
  try {
    await navigator.clipboard.writeText(secret.value);
    $("token-copied").textContent = "Copied.";
  } catch {
    // No clipboard access (a page over plain http, say): leave it selected to copy by hand.
    secret.focus();
    secret.select();
    $("token-copied").textContent = "Copying was refused by the browser: the secret is selected, copy it with Ctrl+C.";
  }
}

async function revokeToken(token) {
  const { api, clean } = helpers;
  $("token-error").textContent = "";
  if (!confirm(clean(`Revoke the token “${token.name}”? Scripts using it stop working at once.`))) return;
  try {
    await api("DELETE", `/api/tokens/${token.id}`);
  } catch (error) {
    // Already revoked (from another tab, say): the list below shows it gone.
    if (error.status !== 404) $("token-error").textContent = clean(`Revoking failed: ${error.message}`);
  }
  await load();
}

/**
 * Show the view; `api`, `clean` and `when` are app.js's (fetch with the session,
 * text made safe to show, a time as people read it).
 */
export async function openTokens({ api, clean, when }) {
  if (helpers === null) {
    helpers = { api, clean, when };
    build();
    $("token-form").addEventListener("submit", create);
    $("token-copy").addEventListener("click", copySecret);
    $("token-done").addEventListener("click", forgetSecret);
    // A secret is shown once: leaving the view forgets it.
    window.addEventListener("hashchange", () => {
      if (location.hash !== "#/tokens") forgetSecret();
    });
  }
  forgetSecret();
  $("token-error").textContent = "";
  await load();
}
