"""SMART on FHIR scopes (App Launch 1.x and 2.x): parse them and compute what a client is granted.

A token may only ever name what the request asked for, what the client was registered for and what the
client's role allows, so ``grant`` intersects all three. Pure logic: no Flask, no database, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode

CONTEXTS = ("patient", "user", "system")
ACTIONS = "cruds"  # create, read, update, delete, search: the v2 letters, in their canonical order

_V1_SUFFIXES: dict[str, frozenset[str]] = {
    "read": frozenset("rs"),
    "write": frozenset("cud"),
    "*": frozenset(ACTIONS),
}
_V2_SUFFIX = re.compile(r"c?r?u?d?s?")
_RES_TYPE = re.compile(r"\*|[A-Z][A-Za-z]*")
_MAX_SHOWN = 120  # a hostile scope string should not flood logs and error responses


class InvalidScope(ValueError):
    """A malformed resource scope; the message names the scope and the reason, nothing else."""

    def __init__(self, text: str, reason: str) -> None:
        shown = text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."
        super().__init__(f"Invalid scope {shown!r}: {reason}")
        self.scope = text
        self.reason = reason


@dataclass(frozen=True)
class ResourceScope:
    """One resource scope; ``query`` is the v2 constraint, which callers must apply to searches."""

    context: str
    res_type: str
    actions: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()
    text: str = ""

    def permits(self, res_type: str, action: str) -> bool:
        """Whether this scope allows ``action`` (one of ACTIONS) on ``res_type``; the query is not checked."""
        return self.res_type in ("*", res_type) and action in self.actions


@dataclass(frozen=True)
class RoleCeiling:
    """The most a role can ever be granted, whatever the client was registered for.

    ``types`` None means any resource type; ``type_order`` is the order in which a requested ``*`` type
    expands to ``types`` (types not listed there follow alphabetically), so granted strings are stable.
    """

    contexts: frozenset[str]
    types: frozenset[str] | None
    actions: frozenset[str]
    other: frozenset[str] = frozenset()
    type_order: tuple[str, ...] = ()
    # Types a role manages for itself whatever its data ceiling (its own Subscriptions: every role that
    # may subscribe sees and changes only the ones its client created). Granted only when named: a ``*``
    # request does not reach them under a ceiling with listed types.
    own: frozenset[str] = frozenset()

    def expand(self, res_type: str) -> tuple[str, ...]:
        """The concrete types a requested type stands for under this ceiling (empty if none allowed)."""
        if self.types is None or res_type in self.own:
            return (res_type,)
        if res_type != "*":
            return (res_type,) if res_type in self.types else ()
        listed = tuple(t for t in self.type_order if t in self.types)
        return listed + tuple(sorted(self.types.difference(listed)))

    def actions_for(self, res_type: str) -> frozenset[str]:
        return frozenset(ACTIONS) if res_type in self.own else self.actions

    def type_set(self) -> frozenset[str] | None:
        """Every type this role can reach (None: any), its own managed types included."""
        return None if self.types is None else self.types | self.own


_INSURER_TYPES = ("Patient", "Coverage", "Claim", "ClaimResponse", "ExplanationOfBenefit")
_OWN = frozenset({"Subscription"})

ROLE_CEILINGS: dict[str, RoleCeiling] = {
    "clinical-system": RoleCeiling(
        contexts=frozenset({"system"}), types=None, actions=frozenset(ACTIONS), other=frozenset(), own=_OWN
    ),
    "clinician": RoleCeiling(
        contexts=frozenset({"user", "patient"}),
        types=None,
        actions=frozenset(ACTIONS),
        other=frozenset(
            {
                "openid",
                "fhirUser",
                "profile",
                "launch",
                "launch/patient",
                "launch/encounter",
                "offline_access",
                "online_access",
            }
        ),
    ),
    # Patients read their own record; they never write through a token.
    "patient": RoleCeiling(
        contexts=frozenset({"patient"}),
        types=None,
        actions=frozenset("rs"),
        other=frozenset(
            {"openid", "fhirUser", "profile", "launch/patient", "offline_access", "online_access"}
        ),
    ),
    "insurer": RoleCeiling(
        contexts=frozenset({"system"}),
        types=frozenset(_INSURER_TYPES),
        actions=frozenset("rs"),
        other=frozenset(),
        type_order=_INSURER_TYPES,
        own=_OWN,
    ),
    "auditor": RoleCeiling(
        contexts=frozenset({"system"}),
        types=frozenset({"AuditEvent"}),
        actions=frozenset("rs"),
        other=frozenset(),
        type_order=("AuditEvent",),
    ),
    # Administrators manage the server, not clinical data.
    # Client and key management only: the "admin" scope lets it introspect and revoke any token.
    "admin": RoleCeiling(
        contexts=frozenset(), types=frozenset(), actions=frozenset(), other=frozenset({"admin"})
    ),
}


def _is_resource_shaped(text: str) -> bool:
    """Scopes with a '/' are resource scopes, except the launch context requests (launch/patient...)."""
    return "/" in text and not text.startswith("launch/")


def parse_scope(text: str) -> ResourceScope | None:
    """A resource scope, or None for the non-resource scopes (openid, fhirUser, profile, launch,
    launch/patient, launch/encounter, offline_access, online_access, and any other scope without a '/'
    that is not a resource scope). Raises InvalidScope for a malformed resource scope."""
    if not _is_resource_shaped(text):
        return None
    if any(ch.isspace() for ch in text):
        raise InvalidScope(text, "a scope contains no whitespace")
    body, has_query, raw_query = text.partition("?")
    context, _, rest = body.partition("/")
    if context not in CONTEXTS:
        raise InvalidScope(text, f"context must be one of {', '.join(CONTEXTS)}")
    res_type, dot, suffix = rest.partition(".")
    if not _RES_TYPE.fullmatch(res_type):
        raise InvalidScope(text, "resource type must be '*' or a resource type name such as Observation")
    if not dot:
        raise InvalidScope(text, "missing '.' and permissions after the resource type")
    v1 = _V1_SUFFIXES.get(suffix)
    if v1 is not None:
        if has_query:
            raise InvalidScope(text, "query constraints need v2 permissions such as .rs, not ." + suffix)
        return ResourceScope(context, res_type, v1, (), text)
    if not suffix or not _V2_SUFFIX.fullmatch(suffix):
        raise InvalidScope(text, "permissions must be read, write, * or letters of 'cruds' in that order")
    query: tuple[tuple[str, str], ...] = ()
    if has_query:
        try:
            pairs = parse_qsl(raw_query, strict_parsing=True, keep_blank_values=False)
        except ValueError as exc:
            raise InvalidScope(text, "malformed query constraint") from exc
        if not pairs:
            raise InvalidScope(text, "empty query constraint")
        query = tuple(pairs)
    return ResourceScope(context, res_type, frozenset(suffix), query, text)


def parse_scopes(text: str) -> list[ResourceScope]:
    """The resource scopes of a space-separated scope string, in order; other scopes are ignored."""
    return [scope for token in text.split() if (scope := parse_scope(token)) is not None]


def _is_v1(scope: ResourceScope) -> bool:
    """v1 requests are echoed verbatim when granted in full, since clients compare the strings."""
    return "?" not in scope.text and scope.text.rpartition(".")[2] in _V1_SUFFIXES


def _v2_text(context: str, res_type: str, actions: frozenset[str], query: tuple[tuple[str, str], ...]) -> str:
    """The canonical v2 spelling; the query is re-encoded so the scope never contains a space."""
    text = f"{context}/{res_type}.{''.join(a for a in ACTIONS if a in actions)}"
    return f"{text}?{urlencode(query)}" if query else text


def _covers(
    registered: ResourceScope, requested: ResourceScope, res_type: str, query: tuple[tuple[str, str], ...]
) -> bool:
    """Whether a registered scope covers the requested scope narrowed to ``res_type``.

    A constrained registered scope only covers a request for the same type with the same constraint:
    deciding whether one query is narrower than another is not worth the risk of getting it wrong.
    """
    if registered.context != requested.context:
        return False
    if registered.query:
        return registered.query == query and registered.res_type in (res_type, requested.res_type)
    return registered.res_type in ("*", res_type)


def _candidate_types(
    scope: ResourceScope, ceiling: RoleCeiling, registered: list[ResourceScope]
) -> tuple[str, ...]:
    """The types a requested scope can be granted for: a wildcard request against a client registered for
    named types gets those types (system/*.rs for a client registered with system/Patient.rs is
    system/Patient.rs), not nothing."""
    types = ceiling.expand(scope.res_type)
    if scope.res_type != "*" or ceiling.types is not None:
        return types
    same = [r for r in registered if r.context == scope.context]
    if any(r.res_type == "*" for r in same):
        return types
    return tuple(dict.fromkeys(r.res_type for r in same))


def grant(requested: str, registered: str, role: str) -> str:
    """The granted scope string: requested ∩ registered ∩ the role's ceiling (see below), space-separated,
    deterministic order (order of `requested`), no duplicates."""
    ceiling = ROLE_CEILINGS.get(role)
    if ceiling is None:
        raise ValueError(f"unknown role {role!r}")
    registered_tokens = registered.split()
    registered_scopes = [s for token in registered_tokens if (s := parse_scope(token)) is not None]
    registered_other = {token for token in registered_tokens if not _is_resource_shaped(token)}

    granted: list[str] = []
    seen: set[object] = set()

    def add(key: object, text: str) -> None:
        if key not in seen:
            seen.add(key)
            granted.append(text)

    for token in requested.split():
        scope = parse_scope(token)
        if scope is None:
            if token in registered_other and token in ceiling.other:
                add(token, token)
            continue
        if scope.context not in ceiling.contexts:
            continue
        for res_type in _candidate_types(scope, ceiling, registered_scopes):
            allowed: set[str] = set()
            for reg in registered_scopes:
                if _covers(reg, scope, res_type, scope.query):
                    allowed |= reg.actions
            actions = scope.actions & allowed & ceiling.actions_for(res_type)
            if not actions:
                continue
            if _is_v1(scope) and actions == scope.actions and res_type == scope.res_type:
                text = scope.text
            else:
                text = _v2_text(scope.context, res_type, actions, scope.query)
            add((scope.context, res_type, actions, scope.query), text)
    return " ".join(granted)
