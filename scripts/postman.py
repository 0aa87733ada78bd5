#!/usr/bin/env python3
"""Convert the committed OpenAPI document (openapi.json) into a Postman Collection v2.1.

    python scripts/postman.py            # writes docs/postman_collection.json
    python scripts/postman.py --check    # exit 1 when the committed collection is stale

One folder per OpenAPI tag, one request per operation (one per example body when an operation has several),
URLs under a ``{{baseUrl}}`` variable, bearer auth with ``{{accessToken}}`` for every operation that needs a
token, and a collection-level pre-request note on how to get one. Standard library only, and deterministic:
the same openapi.json always gives byte-identical output (tests/docs/test_postman.py checks the committed
file against it).
"""

from __future__ import annotations

import argparse
import json
import sys
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
OPENAPI = ROOT / "openapi.json"
OUTPUT = ROOT / "docs" / "postman_collection.json"
SCHEMA = "https://schema.getpostman.com/json/collection/v2.1.0/collection.json"
REGENERATE = "python scripts/postman.py"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
METHODS = ("get", "post", "put", "patch", "delete", "head", "options")
# The body media type a request is shown with, most specific first: each named example is sent once, with
# the first of these types that lists it (a JSON Patch as application/json-patch+json, not application/json).
BODY_TYPES = (
    "application/fhir+json",
    "application/json-patch+json",
    "application/merge-patch+json",
    "application/x-www-form-urlencoded",
    "application/json",
)
PREFERRED_ENUM_VALUES = ("Patient",)  # a path variable typed by ResourceType starts as Patient, not Account

TOKEN_NOTE = [
    "// Every request but the public ones (metadata, SMART discovery, /auth/token, /auth/jwks,",
    "// health, docs) sends the collection variable {{accessToken}} as a bearer token.",
    "// Tokens live at most 300 s. To get one by SMART Backend Services (docs/authentication.md):",
    "//   FHIR_BASE={{baseUrl}}/fhir/R4 CLIENT_ID=<client id> PRIVATE_KEY_FILE=<key.jwk or key.pem> \\",
    "//     python docs/samples/python/get_token.py",
    "// or, against `make demo`:  .venv/bin/fhir-api token demo-hospital",
    "// then paste it as the current value of accessToken (collection Variables tab).",
    "// Or send auth / OAuth 2.0 token endpoint with a fresh client assertion in client_assertion",
    "// (python docs/samples/python/get_token.py --assertion): its test script keeps the token",
    "// in accessToken.",
]
TOKEN_HELP = """Set `baseUrl` to the server's root URL (without /fhir/R4) and `accessToken` to a SMART access
token (they live at most 300 s). Get one by SMART Backend Services (see docs/authentication.md):

    FHIR_BASE=http://127.0.0.1:8000/fhir/R4 CLIENT_ID=... PRIVATE_KEY_FILE=key.jwk \\
        python docs/samples/python/get_token.py

or, against `make demo`, `.venv/bin/fhir-api token demo-hospital`. Sending *auth / OAuth 2.0 token endpoint*
with a fresh client assertion (`python docs/samples/python/get_token.py --assertion`) as `client_assertion`
stores the token it gets in `accessToken`."""
# Run after a successful token response: later requests use the new token.
STORE_TOKEN = [
    "if (pm.response.code === 200 && pm.response.json().access_token) {",
    '  pm.collectionVariables.set("accessToken", pm.response.json().access_token);',
    "}",
]


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` pointers (``#/components/...``) until a concrete node."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node:
        ref = node["$ref"]
        if not ref.startswith("#/"):
            raise ValueError(f"only local references are supported, not {ref}")
        target: Any = doc
        for part in ref[2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = target
        seen += 1
        if seen > 50:
            raise ValueError(f"reference loop at {ref}")
    return node


def sample_value(doc: dict[str, Any], schema: Any) -> Any:
    """A value to show for a parameter: the schema's example, default or first enum value, else empty."""
    schema = resolve(doc, schema or {})
    if not isinstance(schema, dict):
        return ""
    if schema.get("examples"):
        return schema["examples"][0]
    if "example" in schema:
        return schema["example"]
    if "default" in schema:
        return schema["default"]
    if schema.get("enum"):
        enum = schema["enum"]
        return next((v for v in PREFERRED_ENUM_VALUES if v in enum), enum[0])
    return ""


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return "" if value is None else str(value)


def markdown(text: str | None) -> str:
    """Docstring-style ``literals`` (the document's summaries come from docstrings) as Markdown code."""
    return (text or "").replace("``", "`")


def describe(*parts: str | None) -> str:
    return "\n\n".join(p.strip() for p in parts if p and p.strip())


def parameters(doc: dict[str, Any], path_item: dict[str, Any], op: dict[str, Any]) -> list[dict[str, Any]]:
    """Path-level parameters overridden by the operation's own (same name and location), in order."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for raw in [*path_item.get("parameters", []), *op.get("parameters", [])]:
        param = resolve(doc, raw)
        merged[(param["in"], param["name"])] = param
    return list(merged.values())


def url_for(doc: dict[str, Any], path: str, params: list[dict[str, Any]]) -> dict[str, Any]:
    segments = [f":{s[1:-1]}" if s.startswith("{") and s.endswith("}") else s for s in path.split("/")[1:]]
    query: list[dict[str, Any]] = []
    variables: list[dict[str, Any]] = []
    for param in params:
        where, schema = param["in"], resolve(doc, param.get("schema", {}))
        if where == "path":
            variables.append(
                {
                    "key": param["name"],
                    "value": as_text(sample_value(doc, schema)),
                    "description": param.get("description", ""),
                }
            )
        elif where == "query":
            value = sample_value(doc, schema)
            if (
                isinstance(value, dict)
                and param.get("explode", True)
                and param.get("style", "form") == "form"
            ):
                # An exploded object (the search criteria): each of its example's members is a parameter.
                for name, member in value.items():
                    query.append(
                        {
                            "key": name,
                            "value": as_text(member),
                            "description": param.get("description", ""),
                            "disabled": True,
                        }
                    )
                continue
            query.append(
                {
                    "key": param["name"],
                    "value": as_text(value),
                    "description": param.get("description", ""),
                    "disabled": not param.get("required", False),
                }
            )
    raw = "{{baseUrl}}/" + "/".join(segments)
    enabled = [q for q in query if not q["disabled"]]
    if enabled:
        raw += "?" + "&".join(f"{q['key']}={q['value']}" for q in enabled)
    url: dict[str, Any] = {"raw": raw, "host": ["{{baseUrl}}"], "path": segments}
    if query:
        url["query"] = query
    if variables:
        url["variable"] = variables
    return url


def headers_for(doc: dict[str, Any], params: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for param in params:
        if param["in"] != "header":
            continue
        out.append(
            {
                "key": param["name"],
                "value": as_text(sample_value(doc, param.get("schema", {}))),
                "description": param.get("description", ""),
                "disabled": not param.get("required", False),
            }
        )
    return out


def skeleton(doc: dict[str, Any], schema: Any) -> Any:
    """A body built from a schema's properties, when the document gives no example."""
    schema = resolve(doc, schema or {})
    props = schema.get("properties") if isinstance(schema, dict) else None
    if not props:
        return {}
    return {name: sample_value(doc, sub) for name, sub in sorted(props.items())}


def bodies(doc: dict[str, Any], op: dict[str, Any]) -> list[tuple[str | None, str, str | None, Any]]:
    """(example name, media type, example summary, value) for each request body to show; [(None, ...)] when
    the body has no named example (built from the schema), [] when the operation takes no body."""
    body = resolve(doc, op.get("requestBody"))
    if not body:
        return []
    content: dict[str, Any] = body.get("content", {})
    ordered = [t for t in BODY_TYPES if t in content] + sorted(t for t in content if t not in BODY_TYPES)
    if not ordered:
        return []
    out: list[tuple[str | None, str, str | None, Any]] = []
    shown: set[str] = set()
    for media_type in ordered:
        for name, raw in sorted(content[media_type].get("examples", {}).items()):
            if name in shown:
                continue
            shown.add(name)
            example = resolve(doc, raw)
            out.append((name, media_type, example.get("summary"), example.get("value")))
    if not out:
        media_type = ordered[0]
        media = content[media_type]
        value = media["example"] if "example" in media else skeleton(doc, media.get("schema"))
        out.append((None, media_type, None, value))
    return out


def body_for(media_type: str, value: Any) -> dict[str, Any]:
    if media_type == "application/x-www-form-urlencoded":
        fields = value if isinstance(value, dict) else {}
        return {
            "mode": "urlencoded",
            "urlencoded": [{"key": k, "value": as_text(v), "type": "text"} for k, v in fields.items()],
        }
    return {
        "mode": "raw",
        "raw": json.dumps(value, indent=2, ensure_ascii=False),
        "options": {"raw": {"language": "json"}},
    }


def returns_token(doc: dict[str, Any], op: dict[str, Any]) -> bool:
    """Whether the operation's 200 answer is an OAuth token response (it has an access_token)."""
    ok = resolve(doc, op.get("responses", {}).get("200", {}))
    for media in ok.get("content", {}).values():
        schema = resolve(doc, media.get("schema", {}))
        if isinstance(schema, dict) and "access_token" in schema.get("properties", {}):
            return True
    return False


def request_items(doc: dict[str, Any], path: str, method: str, op: dict[str, Any]) -> list[dict[str, Any]]:
    path_item = doc["paths"][path]
    params = parameters(doc, path_item, op)
    op_id = op.get("operationId") or f"{method}:{path}"
    summary = " ".join(markdown(op.get("summary") or op_id).split()).rstrip(".")
    public = op.get("security", doc.get("security")) == []
    notes = [f"`{method.upper()} {path}` (operationId `{op_id}`)."]
    if op.get("x-smart-action"):
        notes.append(f"SMART action `{op['x-smart-action']}` on the resource type.")
    if public:
        notes.append("No token needed.")
    description = describe(markdown(op.get("summary")), markdown(op.get("description")), " ".join(notes))
    variants = bodies(doc, op) if method not in ("get", "head", "delete") else []
    items = []
    for name, media_type, example_summary, value in variants or [(None, None, None, None)]:
        headers = headers_for(doc, params)
        request: dict[str, Any] = {"method": method.upper(), "header": headers}
        if media_type is not None:
            headers.insert(0, {"key": "Content-Type", "value": media_type})
            request["body"] = body_for(media_type, value)
        request["url"] = url_for(doc, path, params)
        request["description"] = description
        if public:
            request["auth"] = {"type": "noauth"}
        label = summary if name is None or len(variants) == 1 else f"{summary} ({example_summary or name})"
        item_id = op_id if name is None or len(variants) == 1 else f"{op_id}:{name}"
        item: dict[str, Any] = {"id": item_id, "name": label, "request": request, "response": []}
        if returns_token(doc, op):
            item["event"] = [{"listen": "test", "script": {"type": "text/javascript", "exec": STORE_TOKEN}}]
        items.append(item)
    return items


def convert(doc: dict[str, Any], base_url: str = DEFAULT_BASE_URL) -> dict[str, Any]:
    """The collection for an OpenAPI 3.x document (a pure function of its input)."""
    info = doc.get("info", {})
    title = info.get("title", "API")
    version = info.get("version", "")
    tags = [t["name"] for t in doc.get("tags", [])]
    tag_text = {t["name"]: t.get("description", "") for t in doc.get("tags", [])}
    folders: dict[str, list[dict[str, Any]]] = {name: [] for name in tags}
    for path, path_item in doc.get("paths", {}).items():
        for method in METHODS:
            op = path_item.get(method)
            if op is None:
                continue
            tag = (op.get("tags") or ["other"])[0]
            folders.setdefault(tag, []).extend(request_items(doc, path, method, op))
    description = describe(
        info.get("description"),
        f"Generated from openapi.json (OpenAPI {doc.get('openapi', '')}) by `{REGENERATE}`; do not edit.",
        TOKEN_HELP,
    )
    return {
        "info": {
            "_postman_id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"fhir-api:{title}:{version}")),
            "name": f"{title} {version}".strip(),
            "description": description,
            "schema": SCHEMA,
        },
        "item": [
            {"name": name, "description": markdown(tag_text.get(name, "")), "item": items}
            for name, items in folders.items()
            if items
        ],
        "auth": {
            "type": "bearer",
            "bearer": [{"key": "token", "value": "{{accessToken}}", "type": "string"}],
        },
        "event": [{"listen": "prerequest", "script": {"type": "text/javascript", "exec": TOKEN_NOTE}}],
        "variable": [
            {"key": "baseUrl", "value": base_url, "type": "string"},
            {"key": "accessToken", "value": "", "type": "string"},
        ],
    }


def render(collection: dict[str, Any]) -> str:
    return json.dumps(collection, indent=2, ensure_ascii=False) + "\n"


def generate(openapi_path: Path = OPENAPI) -> str:
    return render(convert(json.loads(openapi_path.read_text(encoding="utf-8"))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--openapi", type=Path, default=OPENAPI, help="the OpenAPI document (JSON)")
    parser.add_argument("-o", "--output", type=Path, default=OUTPUT, help="the collection to write")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when OUTPUT is stale")
    args = parser.parse_args(argv)
    text = generate(args.openapi)
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.is_file() else ""
        if current != text:
            print(f"{args.output} differs from {args.openapi}: run `{REGENERATE}`", file=sys.stderr)
            return 1
        print(f"{args.output} is up to date")
        return 0
    args.output.write_text(text, encoding="utf-8")
    print(f"wrote {args.output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
