"""Seal the protected elements of a resource for storage, and open them again on the way out.

A protected element's value (an array of HumanName, a birthDate string, a narrative div...) becomes
``{"$enc": "<ciphertext>"}`` in the stored JSON. No valid FHIR JSON has a ``$enc`` key, so opening needs no
policy: it finds every such object, wherever it is, and decrypts it with associated data naming its JSON
pointer. A policy change therefore never makes stored data unreadable.
"""

from __future__ import annotations

from typing import Any

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
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for key, value in items:
        if isinstance(value, dict):
            here = f"{pointer}/{_escape(key) if isinstance(key, str) else key}"
            token = value.get(MARKER)
            if token is not None and len(value) == 1:
                if not isinstance(token, str):
                    raise TamperedData(f"The protected value at {here} is not a ciphertext")
                doc[key] = RawJSON(cipher.open(token, here).decode())
            else:
                open_sealed(value, cipher, here)
        elif isinstance(value, list):
            open_sealed(value, cipher, f"{pointer}/{_escape(key) if isinstance(key, str) else key}")
    return doc
