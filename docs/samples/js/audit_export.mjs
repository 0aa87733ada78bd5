// Export the audit log as NDJSON (auditor tokens only) and check its signed manifest: the Ed25519
// signature (key from /audit/checkpoints), the event count and the SHA-256 of every line before it.
//
//   TOKEN=<an auditor token, scope system/AuditEvent.rs> node audit_export.mjs
// Optional filters: START, END (FHIR dates), PATIENT (Patient/id), CLIENT (client id).
// This sample reads the whole export into memory; stream resp.body to a file for a large log.
import { createHash, createPublicKey, verify } from "node:crypto";
import { writeFileSync } from "node:fs";

const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const SERVER = FHIR_BASE.replace(/\/fhir\/R4$/, ""); // the audit endpoints live beside the FHIR base
const TOKEN = process.env.TOKEN;
const OUTPUT = process.env.OUTPUT ?? "audit.ndjson";
if (!TOKEN) throw new Error("set TOKEN (an auditor token: scope system/AuditEvent.rs)");

const params = new URLSearchParams({ format: "ndjson" });
for (const name of ["START", "END", "PATIENT", "CLIENT"]) {
  if (process.env[name]) params.set(name.toLowerCase(), process.env[name]);
}
const auth = { Authorization: `Bearer ${TOKEN}` };
const resp = await fetch(`${SERVER}/audit/export?${params}`, { headers: auth });
if (!resp.ok) {
  console.error(`${resp.status}: ${(await resp.json()).issue[0].diagnostics}`);
  process.exit(1);
}
const text = await resp.text();
writeFileSync(OUTPUT, text);
const digest = createHash("sha256");
let events = 0;
let manifestToken;
for (const line of text.split("\n")) {
  if (!line) continue;
  const record = JSON.parse(line);
  if (record.resourceType === "Parameters") manifestToken = record.parameter[0].valueString; // last line
  else {
    digest.update(`${line}\n`);
    events += 1;
  }
}
if (!manifestToken) throw new Error("the export has no manifest: it was cut short");

const { key } = await (await fetch(`${SERVER}/audit/checkpoints?_count=1`, { headers: auth })).json();
const [header, payload, signature] = manifestToken.split(".");
const signed = verify(
  null, // Ed25519 hashes internally
  Buffer.from(`${header}.${payload}`),
  createPublicKey({ key, format: "jwk" }),
  Buffer.from(signature, "base64url"),
);
const manifest = JSON.parse(Buffer.from(payload, "base64url").toString());
const hashOk = manifest.sha256 === digest.digest("hex");
console.log(`exported ${events} audit events to ${OUTPUT} (seq ${manifest.first_seq}..${manifest.last_seq})`);
console.log(`manifest signature: ${signed ? "ok" : "INVALID"} (Ed25519, key from /audit/checkpoints)`);
console.log(`manifest count: ${manifest.count === events ? "ok" : "MISMATCH"}`);
console.log(`manifest sha256: ${hashOk ? "ok" : "MISMATCH"}`);
if (!signed || manifest.count !== events || !hashOk) process.exit(1);
