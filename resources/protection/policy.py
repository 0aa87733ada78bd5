"""Which elements are protected: a declarative list of element paths, compiled into walk plans per type.

An entry is ``Type.element[.element...]``. ``Type`` is a resource type (``Patient.name``: that element of
that resource, wherever the resource appears, contained ones included) or a data type (``Attachment.data``:
that element of every Attachment anywhere, extensions included). A protected element is encrypted as a
whole, together with its ``_element`` twin (the extensions of a primitive).

The plans come from the fhir.resources R4B models (the element names and types of every resource,
backbone element and data type), so a path that does not exist is a configuration error at start-up.
"""

from __future__ import annotations

import re
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class

from resources.registry import model_class
from resources.search.definitions import SearchParam, params_for

PERSON_TYPES = ("Patient", "RelatedPerson", "Practitioner", "Person")
_PERSON_ELEMENTS = ("name", "telecom", "address", "birthDate", "identifier.value", "photo")

DEFAULT_POLICY: tuple[str, ...] = (
    *(f"{t}.{e}" for t in PERSON_TYPES for e in _PERSON_ELEMENTS),
    "Patient.contact",
    "Patient.extension",  # mother's maiden name, birth place, birth time, race, ethnicity...
    "Narrative.div",  # the narrative of every resource
    "Attachment.data",  # every inline attachment (photos, documents, extension values)
    "Annotation.text",  # every note
)

ENCRYPT = "encrypt"
DESCEND = "descend"
RESOURCE = "resource"


class PolicyError(ValueError):
    """A protection policy entry that names no element: the server must not start with it."""


@dataclass
class Plan:
    """JSON key -> (what to do, the plan for the value when descending)."""

    steps: dict[str, tuple[str, Plan | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    entries: frozenset[str]

    @classmethod
    def build(cls, extra: Iterable[str] = ()) -> Policy:
        entries = set(DEFAULT_POLICY)
        for raw in extra:
            entry = raw.strip()
            if entry:
                _check_entry(entry)
                entries.add(entry)
        return cls(frozenset(entries))

    def plan(self, res_type: str) -> Plan | None:
        return _resource_plan(self.entries, res_type)

    def protected_params(self, res_type: str) -> frozenset[str]:
        return _protected_params(self.entries, res_type)


def _check_entry(entry: str) -> None:
    head, _, rest = entry.partition(".")
    if not rest or not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*(\.[A-Za-z][A-Za-z0-9]*)+", entry):
        raise PolicyError(f"protection policy entry {entry!r} is not Type.element[.element...]")
    cls = _type_class(head)
    if cls is None:
        raise PolicyError(f"protection policy entry {entry!r}: {head} is not a FHIR R4 type")
    for name in rest.split("."):
        fields = _fields(cls)
        matched = [f for f in fields if f.element == name or f.choice == name]
        if not matched:
            raise PolicyError(f"protection policy entry {entry!r}: {cls.__name__} has no element {name}")
        cls = matched[0].klass  # type: ignore[assignment]
        if cls is None and name != rest.split(".")[-1]:
            raise PolicyError(f"protection policy entry {entry!r}: {name} is a primitive with no elements")


# -- model introspection ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Field:
    key: str  # the JSON property: birthDate, valueAttachment, class
    element: str  # the element name as paths say it (same as key)
    choice: str | None  # value for valueAttachment
    klass: type | None  # the complex type's model, None for primitives
    is_resource: bool  # typed Resource: a contained or bundled resource, planned by its resourceType
    primitive: str | None = None  # the FHIR primitive type of a primitive element: Date, DateTime...


def _type_class(name: str) -> type | None:
    cls = model_class(name)
    if cls is not None:
        return cls
    try:
        found = get_fhir_model_class(name)
    except (KeyError, ValueError, ImportError):
        return None
    return found if found.__name__ == name else None


def _unwrap(annotation: Any) -> Any:
    while True:
        origin = typing.get_origin(annotation)
        if origin is None:
            return annotation
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if origin is typing.Annotated or args:
            annotation = args[0]
        else:
            return annotation


def _primitive(annotation: Any) -> str | None:
    """``Date`` for ``Optional[Annotated[date, Date()]]``: the FHIR primitive marker, if any."""
    while True:
        if typing.get_origin(annotation) is typing.Annotated:
            marks = [type(m).__name__ for m in getattr(annotation, "__metadata__", ())]
            return marks[0] if marks else None
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if not args:
            return None
        annotation = args[0]


@cache
def _fields(cls: type) -> tuple[_Field, ...]:
    out = []
    for name, info in cls.model_fields.items():  # type: ignore[attr-defined]
        extra = info.json_schema_extra
        if not isinstance(extra, dict) or not extra.get("element_property"):
            continue
        key = info.alias or name
        target = _unwrap(info.annotation)
        klass = target.get_model_klass() if hasattr(target, "get_model_klass") else None
        is_resource = klass is not None and klass.__name__ == "Resource"
        choice = extra.get("one_of_many")
        primitive = None if klass is not None else _primitive(info.annotation)
        choice_name = choice if isinstance(choice, str) else None
        out.append(_Field(key, key, choice_name, klass, is_resource, primitive))
    return tuple(out)


def _is_backbone(klass: type) -> bool:
    """A backbone element class (PatientContact) is only meaningful under its path, not by its name."""
    return _type_class(klass.__name__) is not klass


# -- plans ------------------------------------------------------------------------------------------------
def _entries_for(entries: frozenset[str], context: str) -> set[str]:
    """The parts after ``context.`` of the entries that start there."""
    prefix = context + "."
    return {e[len(prefix) :] for e in entries if e.startswith(prefix)}


@cache
def _resource_plan(entries: frozenset[str], res_type: str) -> Plan | None:
    cls = model_class(res_type)
    if cls is None:
        return None
    memo: dict[tuple[type, str, frozenset[str]], Plan] = {}
    return _plan(entries, cls, res_type, frozenset(), memo)


def _plan(
    entries: frozenset[str],
    cls: type,
    context: str,
    inherited: frozenset[str],
    memo: dict[tuple[type, str, frozenset[str]], Plan],
) -> Plan:
    key = (cls, context, inherited)
    if key in memo:
        return memo[key]
    plan = Plan()
    memo[key] = plan  # before recursing: element types are recursive (Extension.extension, item.item)
    relative = _entries_for(entries, context) | set(inherited)
    for f in _fields(cls):
        names = {f.element} | ({f.choice} if f.choice else set())
        if any(n in relative for n in names):
            plan.steps[f.key] = (ENCRYPT, None)
            plan.steps["_" + f.key] = (ENCRYPT, None)
            continue
        if f.is_resource:
            plan.steps[f.key] = (RESOURCE, None)
            continue
        if f.klass is None:
            continue
        below = frozenset(r.split(".", 1)[1] for r in relative if "." in r and r.split(".", 1)[0] in names)
        child_context = f"{context}.{f.element}" if _is_backbone(f.klass) else f.klass.__name__
        plan.steps[f.key] = (DESCEND, _plan(entries, f.klass, child_context, below, memo))
    return plan


# -- search parameters over protected elements --------------------------------------------------------------
_PATH_HEAD = re.compile(
    r"^\(?\s*(?P<path>[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*)"
    r"(?:\s+as\s+(?P<as>[A-Za-z]+)|\.ofType\((?P<of>[A-Za-z]+)\))?"
)


def expression_paths(param: SearchParam) -> list[str]:
    """The element path each member of a parameter's expression starts with: ``Patient.telecom``, and
    ``Observation.valueString`` for ``(Observation.value as string)``."""
    from resources.search.paths import split_union

    paths = []
    for member in split_union(param.expression):
        found = _PATH_HEAD.match(member.strip())
        if found:
            path, cast = found.group("path"), found.group("as") or found.group("of")
            paths.append(path + cast[:1].upper() + cast[1:] if cast else path)
    return paths


def _same_element(a: str, b: str) -> bool:
    """``value`` names every ``valueXxx``: a choice and one of its forms are the same element."""
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    return long.startswith(short) and long[len(short)].isupper()


def _overlaps(path: str, entry: str) -> bool:
    """One path lies under the other (either way), segment by segment."""
    a, b = path.split("."), entry.split(".")
    return all(_same_element(x, y) for x, y in zip(a, b, strict=False))


@cache
def _protected_params(entries: frozenset[str], res_type: str) -> frozenset[str]:
    """Parameters of a type whose values come from a protected element or contain one (a composite is
    protected when one of its components is)."""
    own = [e for e in entries if e.startswith(res_type + ".")]
    if not own:
        return frozenset()
    params = params_for(res_type)
    found = set()
    for code, param in params.items():
        if param.type == "composite" or not param.expression:
            continue
        if any(_overlaps(p, e) for p in expression_paths(param) for e in own):
            found.add(code)
    for code, param in params.items():
        if param.type == "composite" and any(c in found for c, _ in param.components):
            found.add(code)
    return frozenset(found)


@cache
def date_only(res_type: str, param_code: str) -> bool:
    """Whether every value of a date parameter is a FHIR ``date`` (no time of day): then its blind index
    needs no second-precision buckets."""
    param = params_for(res_type).get(param_code)
    cls = model_class(res_type)
    if param is None or cls is None:
        return False
    for path in expression_paths(param):
        current: list[type] = [cls]
        found: list[_Field] = []
        for name in path.split(".")[1:]:
            found = [f for c in current for f in _fields(c) if f.element == name or f.choice == name]
            current = [f.klass for f in found if f.klass is not None]
        if not found or any(f.primitive != "Date" for f in found):
            return False
    return True


@cache
def single_date(res_type: str, param_code: str) -> bool:
    """Whether a date parameter has at most one value per resource (``Patient.birthDate``): then several
    conditions on it hold for the same value, and may be merged into one range."""
    param = params_for(res_type).get(param_code)
    cls = model_class(res_type)
    if param is None or cls is None or len(paths := expression_paths(param)) != 1:
        return False
    names = paths[0].split(".")[1:]
    if len(names) != 1:
        return False
    info = cls.model_fields.get(names[0])  # type: ignore[attr-defined]
    if info is None:
        return False
    return typing.get_origin(_unwrap_optional(info.annotation)) is not list


def _unwrap_optional(annotation: Any) -> Any:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if union and args else annotation


@cache
def complex_valued(res_type: str, param_code: str) -> bool:
    """Whether a parameter's values can be complex elements (a Period, a Timing) rather than primitives:
    blind date indexes hold calendar units, so such a protected parameter cannot be searched exactly."""
    param = params_for(res_type).get(param_code)
    cls = model_class(res_type)
    if param is None or cls is None:
        return True
    for path in expression_paths(param):
        current: list[type] = [cls]
        for name in path.split(".")[1:]:
            found = [f for c in current for f in _fields(c) if f.element == name or f.choice == name]
            if not found:
                return True  # a path the models do not know: assume the worst
            if any(f.klass is not None for f in found) and name == path.split(".")[-1]:
                return True
            current = [f.klass for f in found if f.klass is not None]
    return False


HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")
_PART_TYPES = {"HumanName": HUMAN_NAME_PARTS, "Address": ADDRESS_PARTS}


def _complex_type_at(cls: type, path: str) -> str | None:
    current: list[type] = [cls]
    found: list[_Field] = []
    for name in path.split(".")[1:]:
        found = [f for c in current for f in _fields(c) if f.element == name]
        current = [f.klass for f in found if f.klass is not None]
    return current[0].__name__ if len(current) == 1 and found else None


@cache
def string_groups(res_type: str) -> dict[str, tuple[str, tuple[str, ...]]]:
    """String parameters that search parts of one HumanName or Address element: code -> (the owner
    parameter whose blind rows hold every part, labelled; the parts this code searches).

    ``name``, ``phonetic`` -> (name, every HumanName part); ``family`` -> (name, (family,));
    ``address-city`` -> (address, (city,)). Blind rows are then written once, under the owner, instead of
    once per parameter: a Patient's rows drop by about 40 %."""
    cls = model_class(res_type)
    if cls is None:
        return {}
    params = params_for(res_type)
    single = {
        code: paths[0]
        for code, p in params.items()
        if p.type == "string" and len(paths := expression_paths(p)) == 1
    }
    owners: dict[str, tuple[str, tuple[str, ...]]] = {}
    for code, path in sorted(single.items(), key=lambda kv: kv[0] != kv[1].rsplit(".", 1)[-1]):
        parts = _PART_TYPES.get(_complex_type_at(cls, path) or "")
        if parts and path not in owners:  # the code named like the element (name, address) owns it
            owners[path] = (code, parts)
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for code, path in single.items():
        if path in owners:
            out[code] = owners[path]
            continue
        parent, _, part = path.rpartition(".")
        if parent in owners and part in owners[parent][1]:
            out[code] = (owners[parent][0], (part,))
    return out
