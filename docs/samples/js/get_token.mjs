// Get an access token by SMART Backend Services (client_credentials with a private_key_jwt assertion).
//
//   FHIR_BASE=http://127.0.0.1:8000/fhir/R4 CLIENT_ID=... PRIVATE_KEY_FILE=key.jwk SCOPE='system/*.rs' \
//       node get_token.mjs                  # prints the access token
//
// Node 18+ (fetch, node:crypto), no packages. The assertion is signed here: a backend service keeps its
// private key on the server side, never in a browser. PRIVATE_KEY_FILE: a private JWK, a JWK Set, a PEM
// file, or a `make demo` key file (var/keys/clients/NAME.json, which also holds the client_id).
import { readFileSync } from "node:fs";
import { createHash, createPrivateKey, createPublicKey, randomUUID, sign } from "node:crypto";

const FHIR_BASE = (process.env.FHIR_BASE ?? "http://127.0.0.1:8000/fhir/R4").replace(/\/+$/, "");
const SCOPE = process.env.SCOPE ?? "system/*.rs";
const CURVE_ALGS = { "P-256": "ES256", "P-384": "ES384", "P-521": "ES512" };
const b64url = (data) => Buffer.from(data).toString("base64url");

function loadKey() {
  const text = readFileSync(process.env.PRIVATE_KEY_FILE, "utf8");
  let clientId = process.env.CLIENT_ID ?? "";
  let key;
  let kid;
  if (text.includes("-----BEGIN")) {
    key = createPrivateKey(text);
  } else {
    let data = JSON.parse(text);
    if (data.key) {
      clientId ||= data.client_id; // a `make demo` key file
      data = data.key;
    }
    if (data.keys) data = data.keys.find((k) => k.d); // a JWK Set
    key = createPrivateKey({ key: data, format: "jwk" });
    kid = data.kid;
  }
  if (!clientId) throw new Error("set CLIENT_ID (the client_id the server registered)");
  const pub = createPublicKey(key).export({ format: "jwk" });
  // RFC 7638 thumbprint when the key has no kid (what `ensure_kid` gives keys in this server's tools).
  const members = pub.kty === "EC" ? { crv: pub.crv, kty: pub.kty, x: pub.x, y: pub.y } : { e: pub.e, kty: pub.kty, n: pub.n };
  kid = process.env.KEY_ID ?? kid ?? b64url(createHash("sha256").update(JSON.stringify(members)).digest());
  const alg = process.env.ALG ?? CURVE_ALGS[pub.crv] ?? "RS384";
  return { key, kid, alg, clientId };
}

function signedAssertion(tokenUrl) {
  const { key, kid, alg, clientId } = loadKey();
  const now = Math.floor(Date.now() / 1000);
  const header = { alg, kid, typ: "JWT" };
  // aud is exactly the token endpoint's URL; exp at most five minutes ahead; jti never reused.
  const claims = { iss: clientId, sub: clientId, aud: tokenUrl, exp: now + 240, jti: randomUUID() };
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const hash = `sha${alg.slice(2)}`;
  const signature = alg.startsWith("ES")
    ? sign(hash, Buffer.from(input), { key, dsaEncoding: "ieee-p1363" }) // JWS wants r||s, not DER
    : sign(hash, Buffer.from(input), key);
  return `${input}.${b64url(signature)}`;
}

// SMART discovery: the token URL (also the assertion's audience).
const conf = await (await fetch(`${FHIR_BASE}/.well-known/smart-configuration`)).json();
const resp = await fetch(conf.token_endpoint, {
  method: "POST",
  headers: { "Content-Type": "application/x-www-form-urlencoded" },
  body: new URLSearchParams({
    grant_type: "client_credentials",
    scope: SCOPE,
    client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
    client_assertion: signedAssertion(conf.token_endpoint),
  }),
});
const body = await resp.json();
if (!resp.ok) {
  // OAuth errors (RFC 6749 section 5.2), not OperationOutcome.
  console.error(`token endpoint answered ${resp.status}: ${body.error}: ${body.error_description}`);
  process.exit(1);
}
console.error(`granted scope '${body.scope}' for ${body.expires_in} s`);
console.log(body.access_token);
