// Sign in with a credential file: its text goes to POST /api/session (same origin, X-INCL), which sets the session
// cookie; then back to the page that sent us here.

const form = document.getElementById("signin");
const error = document.getElementById("error");

function next() {
  const wanted = new URLSearchParams(location.search).get("next") || "/jobs";
  return wanted.startsWith("/") && !wanted.startsWith("//") ? wanted : "/jobs";  // never another site
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.textContent = "";
  const file = document.getElementById("file").files[0];
  const text = file ? await file.text() : document.getElementById("creds").value;
  const resp = await fetch("/api/session", {
    method: "POST", body: JSON.stringify({ creds: text }),
    headers: { "X-INCL": "1", "Content-Type": "application/json", Accept: "application/json" },
  });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) {
    error.textContent = body.error || `${resp.status} ${resp.statusText}`;
    return;
  }
  location.assign(next());
});
