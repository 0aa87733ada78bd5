"""Seal the protected elements of a resource for storage, and open them again on the way out.

A protected element's value (an array of HumanName, a birthDate string, a narrative div...) becomes
``{"$enc": "<ciphertext>"}`` in the stored JSON. No valid FHIR JSON has a ``$enc`` key, so opening needs no
policy: it finds every such object, wherever it is, and decrypts it with associated data naming its JSON
pointer. A policy change therefore never makes stored data unreadable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson
from simplejson import RawJSON

from crypto.envelope import FieldCipher
from fhir_api.errors import TamperedData
from resources import jsonio
from resources.protection.policy import DESCEND, ENCRYPT, RESOURCE, Plan, Policy

MARKER = "$enc"
MARKER_TEXT = '"$enc"'


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def seal(resource: dict[str, Any], policy: Policy, cipher_for: Any) -> dict[str, Any] | None:
    """A copy of ``resource`` with its protected elements encrypted, or None when it has none.

    ``cipher_for()`` is called once, on the first protected value found, so a version without protected
    data costs no data key."""
    plan = policy.plan(resource.get("resourceType", ""))
    if plan is None:
        return None
    state: dict[str, FieldCipher] = {}

    def cipher() -> FieldCipher:
        if "c" not in state:
            state["c"] = cipher_for()
        return state["c"]

    sealed = _seal_object(resource, plan, "", policy, cipher)
    return sealed if state else None


def _seal_object(
    obj: dict[str, Any], plan: Plan, pointer: str, policy: Policy, cipher: Any
) -> dict[str, Any]:
    out: dict[str, Any] | None = None
    steps = plan.steps
    for key, value in obj.items():
        step = steps.get(key)
        if step is None:
            continue
        kind, child = step
        here = f"{pointer}/{_escape(key)}"
        if kind == ENCRYPT:
            new: Any = {MARKER: cipher().seal(jsonio.dumps(value).encode(), here)}
        elif kind == RESOURCE:
            new = _seal_many(value, here, lambda v, p: _seal_resource(v, p, policy, cipher))
        else:
            assert child is not None and kind == DESCEND
            new = _seal_many(value, here, lambda v, p, c=child: _seal_object(v, c, p, policy, cipher))
        if new is not value:
            if out is None:
                out = dict(obj)
            out[key] = new
    return obj if out is None else out


def _seal_many(value: Any, pointer: str, one: Any) -> Any:
    if isinstance(value, dict):
        return one(value, pointer)
    if isinstance(value, list):
        items = [one(v, f"{pointer}/{i}") if isinstance(v, dict) else v for i, v in enumerate(value)]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value


def _seal_resource(value: dict[str, Any], pointer: str, policy: Policy, cipher: Any) -> dict[str, Any]:
    plan = policy.plan(value.get("resourceType", ""))
    return value if plan is None else _seal_object(value, plan, pointer, policy, cipher)


def open_sealed(doc: Any, cipher: FieldCipher, pointer: str = "") -> Any:
    """Replace, in place and in document order, every ``{"$enc": ...}`` inside a freshly parsed document
    by what it encrypts.

    The clear text is embedded as raw JSON (no parse and re-serialise of each value): the writer made it
    with the same serialiser, and AES-GCM has just proven it is exactly what the writer sealed there."""
    for container, key, token, here in list(sealed_values(doc, pointer)):
        container[key] = RawJSON(cipher.open(token, here).decode())
    return doc


def open_sealed_text(body: str, cipher: FieldCipher) -> str | None:
    """The clear JSON of a stored body, each sealed object replaced in the text itself by what it
    encrypts: the body was written by ``jsonio.dumps``, so everything around the sealed objects is already
    what serialising the opened document would write (a parse by orjson finds them and their pointers; no
    Decimal-preserving parse and no re-serialisation). None, having opened nothing, when the body is not
    in that form (the caller then parses and re-serialises it). A ``{"$enc":"..."}`` cannot occur inside a
    JSON string (its quotes would be escaped there), and each ciphertext is unique, so each is found once.
    """
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:  # e.g. a number beyond a double's range
        return None
    found = [(token, here) for _container, _key, token, here in sealed_values(doc)]
    parts: list[str] = []
    at = 0
    for token, _here in found:
        needle = f'{{"{MARKER}":"{token}"}}'
        at_marker = body.find(needle, at)
        if at_marker < 0:
            return None
        parts.append(body[at:at_marker])
        at = at_marker + len(needle)
    parts.append(body[at:])
    opened = [cipher.open(token, here).decode() for token, here in found]
    out = [parts[0]]
    for clear, rest in zip(opened, parts[1:], strict=True):
        out += (clear, rest)
    return "".join(out)


def sealed_values(doc: Any, pointer: str = "") -> Iterator[tuple[Any, Any, str, str]]:
    """(container, key, ciphertext, JSON pointer) of every sealed value in ``doc``, in document order."""
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        if isinstance(value, dict):
            here = f"{pointer}/{_escape(key) if isinstance(key, str) else key}"
            token = value.get(MARKER)
            if token is not None and len(value) == 1:
                if not isinstance(token, str):
                    raise TamperedData(f"The protected value at {here} is not a ciphertext")
                yield doc, key, token, here
            else:
                yield from sealed_values(value, here)
        elif isinstance(value, list):
            yield from sealed_values(value, f"{pointer}/{_escape(key) if isinstance(key, str) else key}")
