// The admin's page (#/admin): the users of this Chute, a form to add one, and a button
// to disable or enable each. Shown only to admins; the server refuses others anyway.
// app.js hands in what it shares (api, clean, showView) so this module imports nothing.

const $ = (id) => document.getElementById(id);

/** Show the header's link to this page to admins only. */
export function adminLink(me) {
  const link = $("admin-link");
  if (link) link.hidden = !(me && me.is_admin);
}

/** Build the page's parts once, inside its (empty) section of index.html. */
function build(section) {
  if (section.dataset.built) return;
  section.dataset.built = "1";
  section.innerHTML = `
    <h1 id="admin-title" tabindex="-1">Users</h1>
    <form id="user-form" class="panel stack" aria-labelledby="user-form-title">
      <h2 id="user-form-title">Add a user</h2>
      <label for="user-name">User name</label>
      <input id="user-name" name="username" maxlength="100" autocomplete="off" required>
      <label for="user-password">Password</label>
      <input id="user-password" name="password" type="password" autocomplete="new-password" required>
      <label class="check-label"><input id="user-admin" name="is_admin" type="checkbox"> Admin (may manage users)</label>
      <button type="submit">Add user</button>
      <p id="user-form-error" class="error" role="alert"></p>
      <p id="user-form-done" role="status" aria-live="polite"></p>
    </form>
    <div class="panel">
      <h2 id="users-title">All users</h2>
      <p id="users-error" class="error" role="alert"></p>
      <div class="scroll" role="region" aria-labelledby="users-title" tabindex="0">
        <table id="users-table">
          <thead><tr><th scope="col">Name</th><th scope="col">Role</th><th scope="col">State</th><th scope="col">Action</th></tr></thead>
          <tbody></tbody>
        </table>
      </div>
    </div>`;
}

function text(tag, value) {
  const el = document.createElement(tag);
  el.textContent = value;
  return el;
}

async function load(ui) {
  const body = $("users-table").tBodies[0];
  let users;
  try {
    users = await ui.api("GET", "/api/users");
  } catch (error) {
    $("users-error").textContent = ui.clean(error.message);
    return;
  }
  $("users-error").textContent = "";
  body.replaceChildren(
    ...users.map((user) => {
      const row = document.createElement("tr");
      row.dataset.userId = String(user.id);
      const name = ui.clean(user.username);
      row.append(
        text("td", name),
        text("td", user.is_admin ? "admin" : "user"),
        text("td", user.disabled ? "disabled" : "enabled"),
      );
      const action = document.createElement("td");
      if (user.id === ui.me.id) {
        action.textContent = "you";
      } else {
        const verb = user.disabled ? "Enable" : "Disable";
        const button = text("button", verb);
        button.type = "button";
        button.setAttribute("aria-label", `${verb} ${name}`);
        button.addEventListener("click", () => toggle(ui, user, button));
        action.append(button);
      }
      row.append(action);
      return row;
    }),
  );
}

async function toggle(ui, user, button) {
  button.disabled = true;
  try {
    await ui.api("POST", `/api/users/${user.id}/${user.disabled ? "enable" : "disable"}`);
    $("users-error").textContent = "";
  } catch (error) {
    $("users-error").textContent = ui.clean(error.message);
  }
  await load(ui);
}

async function add(ui, event) {
  event.preventDefault();
  const form = event.target;
  $("user-form-error").textContent = "";
  $("user-form-done").textContent = "";
  try {
    const user = await ui.api("POST", "/api/users", {
      username: form.username.value,
      password: form.password.value,
      is_admin: form.is_admin.checked,
    });
    form.reset();
    $("user-form-done").textContent = ui.clean(`Added ${user.username}.`);
  } catch (error) {
    $("user-form-error").textContent = ui.clean(error.message);
  }
  await load(ui);
}

/** Open the page (for an admin). `ui`: {api, clean, showView, me} from app.js. */
export async function openAdmin(ui) {
  const section = $("view-admin");
  build(section);
  const form = $("user-form");
  // The listeners see the latest `ui` (the signed-in user may have changed).
  form.onsubmit = (event) => add(ui, event);
  ui.showView("admin");
  await load(ui);
}
