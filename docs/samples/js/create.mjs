// Create a Patient: POST [base]/Patient; the server assigns the id (Location header, ETag W/"1").
//
//   TOKEN=$(node get_token.mjs) FAMILY=Chalmers node create.mjs
const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN;
if (!TOKEN) throw new Error("set TOKEN (node get_token.mjs prints one)");

const patient = {
  resourceType: "Patient",
  name: [{ use: "official", family: process.env.FAMILY ?? "Chalmers", given: ["Peter", "James"] }],
  gender: "male",
  birthDate: "1974-12-25",
};
const resp = await fetch(`${FHIR_BASE}/Patient`, {
  method: "POST",
  headers: {
    Authorization: `Bearer ${TOKEN}`,
    "Content-Type": "application/fhir+json",
    Accept: "application/fhir+json",
  },
  body: JSON.stringify(patient),
});
if (resp.status !== 201) {
  const issue = (await resp.json()).issue[0];
  console.error(`${resp.status}: ${issue.diagnostics} at ${issue.expression?.[0] ?? "-"}`);
  process.exit(1);
}
const location = resp.headers.get("Location"); // [base]/Patient/[id]/_history/1
const id = location.split("/_history/")[0].split("/").pop();
console.log(`created Patient/${id} ETag ${resp.headers.get("ETag")}`);
console.log(`Location: ${location}`);
