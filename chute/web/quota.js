// The user's storage on the jobs page: "used X of Y" (DESIGN §8), read from /api/auth/me.

/** Bytes in the page's units (decimal, as the job list shows them). */
export function formatBytes(n) {
  const units = ["bytes", "KB", "MB", "GB", "TB"];
  let i = 0;
  let v = n;
  while (v >= 1000 && i < units.length - 1) {
    v /= 1000;
    i++;
  }
  return i === 0 ? `${n} bytes` : `${v.toFixed(v < 10 ? 2 : 1)} ${units[i]}`;
}

/** What `/api/auth/me` says of the user's storage, in words. */
export function quotaText(me) {
  const used = `Storage: used ${formatBytes(me.used_bytes)}`;
  const reserved = me.reserved_bytes
    ? `, and ${formatBytes(me.reserved_bytes)} more kept for unfinished uploads`
    : "";
  if (me.quota_bytes == null) return `${used} (no quota)${reserved}.`;
  return `${used} of ${formatBytes(me.quota_bytes)}${reserved}.`;
}

/** Fill `element` with the signed-in user's storage; hide it when that cannot be read. */
export async function showQuota(element) {
  let me = null;
  try {
    const response = await fetch("/api/auth/me", { credentials: "same-origin" });
    if (response.ok) me = await response.json();
  } catch {
    me = null;
  }
  if (!me || typeof me.used_bytes !== "number") {
    element.hidden = true;
    return;
  }
  element.textContent = quotaText(me);
  const counted = me.used_bytes + (me.reserved_bytes || 0);
  element.classList.toggle("full", me.quota_bytes != null && counted >= 0.9 * me.quota_bytes);
  element.hidden = false;
}
