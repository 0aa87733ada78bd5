// Read one Patient: GET [base]/Patient/[id].
//
//   TOKEN=$(node get_token.mjs) PATIENT_ID=pat-0001 node read.mjs
const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN;
const PATIENT_ID = process.env.PATIENT_ID ?? "pat-0001";
if (!TOKEN) throw new Error("set TOKEN (node get_token.mjs prints one)");

const resp = await fetch(`${FHIR_BASE}/Patient/${encodeURIComponent(PATIENT_ID)}`, {
  headers: { Authorization: `Bearer ${TOKEN}`, Accept: "application/fhir+json" },
});
const body = await resp.json();
if (!resp.ok) {
  // Every error is an OperationOutcome; details.text links to the server's error catalogue (/docs/errors).
  const issue = body.issue[0];
  console.error(`${resp.status}: ${issue.diagnostics} (${issue.details?.text ?? ""})`);
  process.exit(1);
}
const name = body.name?.[0] ?? {};
console.log(`Patient/${body.id} ETag ${resp.headers.get("ETag")}`);
console.log(`name: ${[...(name.given ?? []), name.family ?? ""].join(" ").trim()}`);
console.log(`birthDate: ${body.birthDate ?? "-"}`);
