// Search, following the Bundle's next links page by page (opaque cursors: follow them as given).
//
//   TOKEN=$(node get_token.mjs) QUERY='Patient?family=Chalmers&_count=10' node search.mjs
const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN;
const QUERY = process.env.QUERY ?? "Patient?family=Chalmers&_count=10";
const MAX_PAGES = Number(process.env.MAX_PAGES ?? 5);
if (!TOKEN) throw new Error("set TOKEN (node get_token.mjs prints one)");

let url = `${FHIR_BASE}/${QUERY}${QUERY.includes("?") ? "&" : "?"}_total=accurate`;
let pages = 0;
while (url && pages < MAX_PAGES) {
  const resp = await fetch(url, { headers: { Authorization: `Bearer ${TOKEN}`, Accept: "application/fhir+json" } });
  const bundle = await resp.json();
  if (!resp.ok) {
    console.error(`${resp.status}: ${bundle.issue[0].diagnostics}`);
    process.exit(1);
  }
  if (pages === 0) console.log(`total: ${bundle.total ?? "?"}`);
  pages += 1;
  for (const entry of bundle.entry ?? []) {
    const res = entry.resource;
    if (res.resourceType === "OperationOutcome") console.log(`note: ${res.issue[0].diagnostics}`);
    else console.log(`page ${pages}: ${res.resourceType}/${res.id} (${entry.search?.mode ?? ""})`);
  }
  url = (bundle.link ?? []).find((link) => link.relation === "next")?.url;
}
console.log(`pages: ${pages}`);
