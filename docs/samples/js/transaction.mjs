// A transaction Bundle (all entries or none): a patient (created only if none has the identifier yet) and
// an observation that refers to it by its urn:uuid fullUrl, which the server rewrites to Patient/[id].
//
//   TOKEN=$(node get_token.mjs) MRN=12345 node transaction.mjs
import { randomUUID } from "node:crypto";

const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const TOKEN = process.env.TOKEN;
const MRN = process.env.MRN ?? "12345";
const SYSTEM = "urn:oid:1.2.36.146.595.217.0.1";
if (!TOKEN) throw new Error("set TOKEN (node get_token.mjs prints one)");

const patientRef = `urn:uuid:${randomUUID()}`;
const bundle = {
  resourceType: "Bundle",
  type: "transaction",
  entry: [
    {
      fullUrl: patientRef,
      resource: {
        resourceType: "Patient",
        identifier: [{ system: SYSTEM, value: MRN }],
        name: [{ family: "Chalmers", given: ["Peter"] }],
      },
      request: { method: "POST", url: "Patient", ifNoneExist: `identifier=${SYSTEM}|${MRN}` },
    },
    {
      fullUrl: `urn:uuid:${randomUUID()}`,
      resource: {
        resourceType: "Observation",
        status: "final",
        code: { coding: [{ system: "http://loinc.org", code: "8867-4", display: "Heart rate" }] },
        subject: { reference: patientRef },
        effectiveDateTime: "2024-05-01T09:30:00Z",
        valueQuantity: { value: 72, unit: "/min", system: "http://unitsofmeasure.org", code: "/min" },
      },
      request: { method: "POST", url: "Observation" },
    },
  ],
};
const resp = await fetch(FHIR_BASE, {
  method: "POST",
  headers: {
    Authorization: `Bearer ${TOKEN}`,
    "Content-Type": "application/fhir+json",
    Accept: "application/fhir+json",
  },
  body: JSON.stringify(bundle),
});
const result = await resp.json();
if (!resp.ok) {
  // One failing entry rolls back the whole transaction; the diagnostics name the entry.
  console.error(`${resp.status}: ${result.issue[0].diagnostics}`);
  process.exit(1);
}
console.log(`${result.type}: ${result.entry.length} entries`);
for (const entry of result.entry) console.log(`${entry.response.status} ${entry.response.location ?? ""}`.trim());
