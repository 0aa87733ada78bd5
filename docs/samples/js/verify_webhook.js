// Verify a notification from the FHIR server (a receiver's code, Node.js): HMAC-SHA256 over
// "<timestamp>.<body>". Use the raw body bytes (e.g. express.raw({ type: "*/*" })), not re-serialised JSON.
const crypto = require("node:crypto");

const REPLAY_WINDOW = 300; // seconds: older (or future) timestamps are refused

function verify(secret, timestamp, signatureHeader, body) {
  const sent = Number.parseInt(timestamp, 10);
  if (!Number.isFinite(sent) || String(sent) !== timestamp) return false;
  if (Math.abs(Date.now() / 1000 - sent) > REPLAY_WINDOW) return false;
  const expected = Buffer.from(
    "sha256=" +
      crypto.createHmac("sha256", secret).update(`${timestamp}.`).update(body).digest("hex"),
  );
  // during a secret rotation the header carries two signatures, comma-separated: either may match
  return signatureHeader.split(",").some((part) => {
    const given = Buffer.from(part.trim());
    return given.length === expected.length && crypto.timingSafeEqual(given, expected);
  });
}

module.exports = { verify };

if (require.main === module) {
  // node verify_webhook.js SECRET TIMESTAMP SIGNATURE < body
  const chunks = [];
  process.stdin.on("data", (c) => chunks.push(c));
  process.stdin.on("end", () => {
    const [secret, timestamp, signature] = process.argv.slice(2);
    const ok = verify(secret, timestamp, signature, Buffer.concat(chunks));
    console.log(ok ? "valid" : "INVALID");
    process.exit(ok ? 0 : 1);
  });
}
