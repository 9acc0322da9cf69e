// The JSON API. State-changing requests carry X-INCL, which the server requires (a cross-site form cannot).

export class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function answer(resp) {
  const body = await resp.json().catch(() => ({}));
  if (resp.status === 401) {  // a server that signs people in, and no session (or it expired): sign in, come back
    location.assign("/login?next=" + encodeURIComponent(location.pathname + location.search));
  }
  if (!resp.ok) throw new ApiError(resp.status, body.error || `${resp.status} ${resp.statusText}`);
  return body;
}

export async function get(path, params) {
  const query = params ? "?" + new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null)) : "";
  return answer(await fetch(path + query, { headers: { Accept: "application/json" } }));
}

export async function post(path) {
  return answer(await fetch(path, { method: "POST", headers: { "X-INCL": "1", Accept: "application/json" } }));
}

// JSON has no NaN or infinity: the server sends them as strings; a chart shows them as gaps.
export function num(v) {
  return typeof v === "number" ? v : null;
}

// A state-changing request with a JSON body (making a share link).
export async function postJson(path, body) {
  return answer(await fetch(path, {
    method: "POST", body: JSON.stringify(body),
    headers: { "X-INCL": "1", "Content-Type": "application/json", Accept: "application/json" },
  }));
}
