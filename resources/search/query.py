"""Translate FHIR search parameters into SQL over the index tables (http://hl7.org/fhir/R4/search.html).

Every parameter becomes an EXISTS over its index table correlated to the searched ``resource`` row; comma
values are OR, repeated parameters AND. Chains and ``_has`` nest the same builder one level down, so any
depth works and everything is filtered in the database (counts and paging never see excluded rows).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from types import SimpleNamespace
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, and_, cast, exists, false, func, literal, not_, or_, select
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session, aliased
from sqlalchemy.orm.util import AliasedClass

from fhir_api import db
from fhir_api.errors import BadRequest
from resources.dates import DateRange, parse_range
from resources.models import Resource
from resources.protection import blind
from resources.protection import service as protection
from resources.protection.policy import complex_valued, date_only, single_date, string_groups
from resources.registry import R4_RESOURCE_TYPES, supported_types
from resources.search import values as normalise
from resources.search.definitions import SearchParam, params_for
from resources.search.indexer import IDENTIFIER_SUFFIX, blind_sets, in_set
from resources.search.models import (
    INDEX_TABLES,
    BlindIndex,
    BlindSet,
    DateIndex,
    ReferenceIndex,
    TokenIndex,
    UriIndex,
)

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
# Parameters that shape results rather than filter them (handled by resources.search.results).
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
    }
)
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"not", "text", "of-type", "in", "not-in", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "reference": {"missing"},  # plus a resource type, checked separately
    "uri": {"below", "above", "missing"},
    "composite": {"missing"},
}
MAX_VALUESET_CODES = 1000


class UnknownParameter(BadRequest):
    slug, title = "unknown-search-parameter", "Unknown search parameter"
    explanation = (
        "The search names a parameter this server does not know for the resource type. With "
        "Prefer: handling=strict this is an error; otherwise the parameter is ignored and the searchset "
        "says so in an OperationOutcome entry."
    )


@dataclass
class SearchContext:
    """What a query build needs besides the parameters: the session (for :in) and our base URL."""

    session: Session | None = None
    base_url: str = ""
    strict: bool = False
    ignored: list[str] = field(default_factory=list)
    access: Any = None  # resources.access.Access: what the request's token may see (None: no token)


# -- value syntax ------------------------------------------------------------------------------------------
def split_unescaped(raw: str, sep: str) -> list[str]:
    """Split on ``sep`` unless backslash-escaped. Only ``\\<sep>`` is unescaped here: other escapes stay
    for the next level (``a\\|b,c`` splits on the comma, and ``a\\|b`` is then one code, not system|code)."""
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            nxt = raw[i + 1]
            current.append(nxt if nxt == sep else ch + nxt)
            i += 2
            continue
        if ch == sep:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


_ESCAPED = re.compile(r"\\([,|$\\])")


def unescape(value: str) -> str:
    """The literal value once no more splitting happens: ``\\,`` ``\\|`` ``\\$`` ``\\\\``."""
    return _ESCAPED.sub(r"\1", value)


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def _decimal(text: str, name: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise BadRequest(f"Parameter {name}: '{text}' is not a number", expression=name) from None
    if not number.is_finite():
        raise BadRequest(f"Parameter {name}: '{text}' is not a finite number", expression=name)
    return number


# -- per-type conditions (each returns a clause over one index-table alias) ----------------------------------
def _string_clause(t: Any, modifier: str, value: str) -> ColumnElement[bool]:
    if modifier == "exact":
        return and_(t.value_norm == normalise.normalize_text(value), t.value_exact == value)
    norm = normalise.normalize_text(value)
    if modifier == "contains":
        return t.value_norm.contains(norm, autoescape=True)
    return t.value_norm.startswith(norm, autoescape=True)


def _valueset_codes(ctx: SearchContext, url: str, name: str) -> list[tuple[str | None, str]]:
    """(system, code) pairs of a ValueSet stored here, found by canonical URL or ValueSet/id."""
    from resources import jsonio
    from resources.repository import ResourceRepository  # late: repository imports search for indexing

    if ctx.session is None:
        raise BadRequest(f"Parameter {name}: value sets cannot be expanded here", expression=name)
    repo = ResourceRepository(ctx.session)
    stored = None
    if url.startswith("ValueSet/"):
        stored = repo.read("ValueSet", url.split("/", 1)[1])
    else:
        u = aliased(UriIndex)
        found = ctx.session.execute(
            select(u.res_id).where(u.res_type == "ValueSet", u.param == "url", u.value == url[:255]).limit(1)
        ).scalar_one_or_none()
        stored = repo.read("ValueSet", found) if found else None
    if stored is None or stored.body is None:
        raise BadRequest(f"Parameter {name}: value set '{url}' is not stored on this server", expression=name)
    valueset = jsonio.loads_trusted(stored.body)
    pairs: list[tuple[str | None, str]] = []
    for include in (valueset.get("compose") or {}).get("include") or []:
        for concept in include.get("concept") or []:
            pairs.append((include.get("system"), concept.get("code")))

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("code"):
                pairs.append((item.get("system"), item["code"]))
            walk(item.get("contains") or [])

    walk((valueset.get("expansion") or {}).get("contains") or [])
    if not pairs or len(pairs) > MAX_VALUESET_CODES:
        raise BadRequest(
            f"Parameter {name}: value set '{url}' has no enumerated codes "
            f"(or more than {MAX_VALUESET_CODES})",
            expression=name,
        )
    return pairs


def _token_clause(ctx: SearchContext, t: Any, modifier: str, value: str, name: str) -> ColumnElement[bool]:
    if modifier == "text":
        return t.text_norm.startswith(normalise.normalize_text(unescape(value)), autoescape=True)
    if modifier in ("in", "not-in"):
        pairs = _valueset_codes(ctx, unescape(value), name)
        return or_(
            *[
                and_(t.code == code, t.system == system) if system else t.code == code
                for system, code in pairs
            ]
        )
    parts = [unescape(p) for p in split_unescaped(value, "|")]
    if modifier == "of-type":
        if len(parts) != 3:
            raise BadRequest(f"Parameter {name}: :of-type needs system|code|value", expression=name)
        return and_(t.type_system == parts[0], t.type_code == parts[1], t.code == parts[2][:255])
    if len(parts) == 1:
        return t.code == parts[0][:255]
    if len(parts) != 2:
        raise BadRequest(f"Parameter {name}: a token is [system]|[code]", expression=name)
    system, code = parts
    if system and code:
        return and_(t.code == code[:255], t.system == system[:255])
    if code:  # |code: no system
        return and_(t.code == code[:255], t.system.is_(None))
    if system:
        return t.system == system[:255]
    raise BadRequest(f"Parameter {name}: empty token", expression=name)


def date_condition(low: Any, high: Any, prefix: str, r: DateRange) -> ColumnElement[bool]:
    """Target range [low, high) against search range [r.low, r.high), per the prefix semantics."""
    if prefix == "eq":
        return and_(low >= r.low, high <= r.high)
    if prefix == "ne":
        return or_(low < r.low, high > r.high)
    if prefix == "gt":
        return high > r.high
    if prefix == "lt":
        return low < r.low
    if prefix == "ge":
        return high > r.low
    if prefix == "le":
        return low < r.high
    if prefix == "sa":
        return low >= r.high
    if prefix == "eb":
        return high <= r.low
    # ap: overlap with the search range widened by 10% of its distance from now (at least a day)
    gap = max(abs(datetime.now(UTC) - r.low) / 10, timedelta(days=1))
    return and_(low < r.high + gap, high > r.low - gap)


def _date_clause(t: Any, value: str, name: str) -> ColumnElement[bool]:
    prefix, text = split_prefix(value)
    return date_condition(t.low, t.high, prefix, parse_range(text, name))


def number_condition(col: Any, prefix: str, number: Decimal) -> ColumnElement[bool]:
    exponent = number.as_tuple().exponent
    half = Decimal(5).scaleb(int(exponent) - 1) if isinstance(exponent, int) else Decimal(0)
    lo, hi, v = float(number - half), float(number + half), float(number)
    match prefix:
        case "eq":
            return and_(col >= lo, col < hi)
        case "ne":
            return or_(col < lo, col >= hi)
        case "gt" | "sa":
            return col > v
        case "lt" | "eb":
            return col < v
        case "ge":
            return col >= v
        case "le":
            return col <= v
        case _:  # ap: within 10%
            spread = abs(v) * 0.1
            return and_(col >= v - spread, col <= v + spread)


def _number_clause(t: Any, value: str, name: str) -> ColumnElement[bool]:
    prefix, text = split_prefix(value)
    return number_condition(t.value, prefix, _decimal(text, name))


def _quantity_clause(t: Any, value: str, name: str) -> ColumnElement[bool]:
    prefix, text = split_prefix(value)
    parts = [unescape(p) for p in split_unescaped(text, "|")]
    if len(parts) not in (1, 3):
        raise BadRequest(f"Parameter {name}: a quantity is [prefix]number[|system|code]", expression=name)
    clause = number_condition(t.value, prefix, _decimal(parts[0], name))
    if len(parts) == 3:
        system, code = parts[1], parts[2]
        if system:
            clause = and_(clause, t.system == system)
        if code:  # with a system the code must match; without one, the code or the unit does
            clause = and_(clause, t.code == code if system else or_(t.code == code, t.unit == code))
    return clause


def _reference_clause(
    ctx: SearchContext, t: Any, param: SearchParam, modifier: str, value: str, name: str
) -> ColumnElement[bool]:
    if modifier:  # :Type means the value is an id of that type
        return and_(t.target_type == modifier, t.target_id == value)
    if "://" in value or value.startswith("urn:"):
        base = ctx.base_url.rstrip("/") + "/"
        if ctx.base_url and value.startswith(base):
            value = value[len(base) :]
        else:
            return t.url == value[:255]
    target_type, target_id = normalise.parse_reference(value) if "/" in value else (None, value)
    if target_type:
        return and_(t.target_type == target_type, t.target_id == target_id)
    if "/" in value:
        raise BadRequest(f"Parameter {name}: '{value}' is not a reference", expression=name)
    targets = [x for x in param.targets if x in R4_RESOURCE_TYPES]
    return and_(t.target_id == value, t.target_type.in_(targets)) if targets else t.target_id == value


def _uri_clause(t: Any, modifier: str, value: str) -> ColumnElement[bool]:
    if modifier == "below":  # the stored URI is the value or lies under it
        return t.value.startswith(value[:255], autoescape=True)
    if modifier == "above":  # the stored URI is the value or one of its path prefixes
        return t.value.in_(uri_prefixes(value))
    return t.value == value[:255]


def uri_prefixes(value: str) -> list[str]:
    """'http://a.org/fhir/ValueSet/1' -> itself, 'http://a.org/fhir/ValueSet', 'http://a.org/fhir', ..."""
    scheme, sep, rest = value.partition("://")
    if not sep:
        return [value[:255]]
    segments = rest.split("/")
    return [f"{scheme}://{'/'.join(segments[:n])}"[:255] for n in range(len(segments), 0, -1)]


# -- parameters ---------------------------------------------------------------------------------------------
def supported_param_types() -> frozenset[str]:
    """Parameter types this engine evaluates (everything but 'special', i.e. Location near)."""
    return frozenset(INDEX_TABLES)


def _param(res_type: str, code: str, name: str) -> SearchParam:
    param = params_for(res_type).get(code)
    if param is None:
        raise UnknownParameter(f"Unknown search parameter '{name}' for {res_type}", expression=name)
    return param


def _index_exists(
    res_type: str | None,
    outer: AliasedClass[Resource],
    table: Any,
    code: str | None,
    clause: ColumnElement[bool] | None,
) -> ColumnElement[bool]:
    t = table
    conditions = [
        t.res_type == res_type if res_type else t.res_type == outer.res_type,
        t.res_id == outer.res_id,
        *_of_param(t, code),
    ]
    if clause is not None:
        conditions.append(clause)
    return exists(select(literal(1)).where(*conditions))


def _of_param(table: Any, code: str | None) -> list[ColumnElement[bool]]:
    """The condition naming the parameter in an index table: none for ``search_blind_set`` (code None),
    whose hashes say their parameter."""
    return [] if code is None else [table.param == code]


def _missing(res_type: str, outer: AliasedClass[Resource], param: SearchParam, value: str, name: str):
    if value not in ("true", "false"):
        raise BadRequest(f"Parameter {name}: :missing takes true or false", expression=name)
    protected = param.code in protection.current().protected_params(param.base)
    if protected and param.type not in blind.BLINDABLE_TYPES:
        raise blind.Unservable(
            f"Parameter {name}: {param.code} is indexed from a protected element and cannot be searched",
            expression=name,
        )
    if protected:
        present = _blind_presence(res_type, outer, param)
    else:
        present = _index_exists(res_type, outer, aliased(INDEX_TABLES[param.type]), param.code, None)
    return not_(present) if value == "true" else present


def _blind_presence(res_type: str, outer: AliasedClass[Resource], param: SearchParam) -> ColumnElement[bool]:
    """Whether a protected parameter has a value: its presence hash (per part, for grouped parts)."""
    group = string_groups(param.base).get(param.code)
    owner = group[0] if group else param.code
    session = db.session()
    hashers = protection.current().hashers(session, param.base, owner)
    if group is None or group[0] == param.code:
        wanted = [h("any", "") for h in hashers]
    else:
        wanted = [h(f"any:{part}", "") for h in hashers for part in group[1]]
    t, code, clause = _blind_lookup(session, param.base, owner, wanted)
    return _index_exists(res_type, outer, t, code, clause)


def _blind_lookup(
    session: Session, res_type: str, code: str, wanted: list[int]
) -> tuple[Any, str | None, ColumnElement[bool]]:
    """(index alias, parameter to match or None, condition): a resource's blind hashes of ``code`` include
    one of ``wanted``. An overlap with the resource's array (GIN) where sets hold them (``in_set``),
    otherwise hash rows of the parameter."""
    unique = sorted(set(wanted))
    if blind_sets(session) and in_set(res_type, code):
        s = aliased(BlindSet)
        return s, None, s.hashes.overlap(cast(literal(unique, _HASHES), _HASHES)) if unique else false()
    t = aliased(BlindIndex)
    return t, code, t.hash.in_(unique) if unique else false()


_HASHES = ARRAY(BigInteger)


def _special(res_type: str, outer: AliasedClass[Resource], code: str, modifier: str, value: str, name: str):
    """``_id`` and ``_lastUpdated`` live on the resource row itself, so both are never missing."""
    if modifier == "missing":
        if value not in ("true", "false"):
            raise BadRequest(f"Parameter {name}: :missing takes true or false", expression=name)
        return false() if value == "true" else None
    values = [unescape(v) for v in split_unescaped(value, ",")]
    if code == "_id":
        if modifier not in ("", "not"):
            raise BadRequest(f"Parameter {name}: _id takes no modifier but :not or :missing", expression=name)
        return outer.res_id.not_in(values) if modifier == "not" else outer.res_id.in_(values)
    if modifier:
        raise BadRequest(f"Parameter {name}: _lastUpdated takes no modifier but :missing", expression=name)
    clauses = []
    for v in values:
        prefix, text = split_prefix(v)
        r = parse_range(text, name)
        lu = outer.last_updated
        clauses.append(
            {
                "eq": and_(lu >= r.low, lu < r.high),
                "ne": or_(lu < r.low, lu >= r.high),
                "gt": lu >= r.high,
                "sa": lu >= r.high,
                "lt": lu < r.low,
                "eb": lu < r.low,
                "ge": lu >= r.low,
                "le": lu < r.high,
                "ap": and_(lu >= r.low - timedelta(days=1), lu < r.high + timedelta(days=1)),
            }[prefix]
        )
    return or_(*clauses)


def parameter_clause(
    ctx: SearchContext, res_type: str, outer: AliasedClass[Resource], name: str, value: str
) -> ColumnElement[bool] | None:
    """One ``name=value`` of a search as a SQL condition on ``outer`` (None when ignored)."""
    if name.startswith("_has:"):
        return _has_clause(ctx, res_type, outer, name, value)
    head, dot, rest = name.partition(".")
    code, _, modifier = head.partition(":")
    if code in ("_id", "_lastUpdated") and not dot:
        return _special(res_type, outer, code, modifier, value, name)
    param = _param(res_type, code, name)
    if param.type not in INDEX_TABLES or not param.expression:  # near, _text, _content: not indexed
        raise UnknownParameter(f"Search parameter '{code}' is not supported by this server", expression=name)
    if dot:
        return _chain_clause(ctx, res_type, outer, param, modifier, rest, value, name)
    if modifier == "missing":
        return _missing(res_type, outer, param, value, name)
    table, index_code, matches, negate = _matching(ctx, param, modifier, value, name)
    found = _index_exists(res_type, outer, table, index_code, matches)
    return not_(found) if negate else found


def _matching(
    ctx: SearchContext, param: SearchParam, modifier: str, value: str, name: str
) -> tuple[Any, str | None, ColumnElement[bool], bool]:
    """(index table alias, param column value or None, condition on the alias, whether to negate the
    EXISTS)."""
    code = param.code
    if code in protection.current().protected_params(param.base):
        return _blind_matching(ctx, param, modifier, value, name)
    if param.type == "reference" and modifier == "identifier":  # Reference.identifier, indexed as tokens
        tokens = aliased(TokenIndex)
        wanted = [v for v in split_unescaped(value, ",") if v != ""]
        return (
            tokens,
            code + IDENTIFIER_SUFFIX,
            or_(*[_token_clause(ctx, tokens, "", v, name) for v in wanted]),
            False,
        )
    allowed = MODIFIERS[param.type]
    if (
        modifier
        and modifier not in allowed
        and not (param.type == "reference" and modifier in R4_RESOURCE_TYPES)
    ):
        raise BadRequest(
            f"Parameter {name}: modifier ':{modifier}' is not supported for {param.type} parameters",
            expression=name,
        )
    table = aliased(INDEX_TABLES[param.type])
    values = [v for v in split_unescaped(value, ",") if v != ""]
    if not values:
        raise BadRequest(f"Parameter {name} has no value", expression=name)
    if modifier in ("not", "not-in"):  # no value of the resource matches: negate the whole EXISTS
        inner = "" if modifier == "not" else "in"
        return table, code, or_(*[_token_clause(ctx, table, inner, v, name) for v in values]), True
    return table, code, or_(*[_value_clause(ctx, table, param, modifier, v, name) for v in values]), False


def _blind_matching(
    ctx: SearchContext, param: SearchParam, modifier: str, value: str, name: str
) -> tuple[Any, str | None, ColumnElement[bool], bool]:
    """A protected parameter: the same matching, as keyed hashes looked up in the blind index."""
    if param.type not in blind.BLINDABLE_TYPES:
        raise blind.Unservable(
            f"Parameter {name}: {param.code} is indexed from a protected element, and {param.type} "
            "parameters cannot be searched on protected data",
            expression=name,
        )
    if param.type == "date" and complex_valued(param.base, param.code):
        raise blind.Unservable(
            f"Parameter {name}: {param.code} is indexed from a protected element that holds periods, and "
            "blind indexes hold dates as calendar units, so it cannot be searched exactly",
            expression=name,
        )
    servable = {"string": {"", "exact"}, "token": {"", "not", "in", "not-in", "of-type"}, "date": {""}}
    if modifier not in servable[param.type]:
        if modifier and modifier not in MODIFIERS[param.type]:
            raise BadRequest(
                f"Parameter {name}: modifier ':{modifier}' is not supported for {param.type} parameters",
                expression=name,
            )
        if modifier != "contains":
            raise blind.Unservable(
                f"Parameter {name}: :{modifier} cannot be served on a protected element (its values are "
                "stored encrypted and searchable only by keyed hashes)",
                expression=name,
            )
    values = [v for v in split_unescaped(value, ",") if v != ""]
    if not values:
        raise BadRequest(f"Parameter {name} has no value", expression=name)
    session = ctx.session if ctx.session is not None else db.session()
    group = string_groups(param.base).get(param.code)
    owner = group[0] if group else param.code  # a HumanName/Address part is found in its owner's rows
    hashers = protection.current().hashers(session, param.base, owner)
    wanted: list[int] = []
    for v in values:
        for h in hashers or [_NO_KEY]:  # without any key yet, still check the value (400 when wrong)
            found = _blind_hashes(ctx, param, modifier, v, name, h)
            if h is not _NO_KEY:
                wanted += found
    t, code, clause = _blind_lookup(session, param.base, owner, wanted)
    return t, code, clause, modifier in ("not", "not-in")


_NO_KEY = blind.Hasher(b"\x00" * 32)  # stands in while no key exists yet: values are still checked


def _blind_hashes(
    ctx: SearchContext, param: SearchParam, modifier: str, value: str, name: str, h: blind.Hasher
) -> list[int]:
    if param.type == "string":
        text = unescape(value)
        group = string_groups(param.base).get(param.code)
        parts = group[1] if group else None
        return blind.string_hashes(modifier, text, normalise.normalize_text(text), h, name, parts)
    if param.type == "date":
        prefix, text = split_prefix(value)
        r = parse_range(text, name)
        low, high = r.low, r.high
        if prefix == "ap":
            gap = max(abs(datetime.now(UTC) - r.low) / 10, timedelta(days=1))
            low, high = r.low - gap, r.high + gap
        return blind.date_hashes(prefix, low, high, h, dates_only=date_only(param.base, param.code))
    if modifier in ("in", "not-in"):
        return blind.valueset_hashes(_valueset_codes(ctx, unescape(value), name), h)
    parts = [unescape(p) for p in split_unescaped(value, "|")]
    if modifier == "of-type" and len(parts) != 3:
        raise BadRequest(f"Parameter {name}: :of-type needs system|code|value", expression=name)
    if modifier != "of-type" and len(parts) > 2:
        raise BadRequest(f"Parameter {name}: a token is [system]|[code]", expression=name)
    if len(parts) == 2 and not parts[0] and not parts[1]:
        raise BadRequest(f"Parameter {name}: empty token", expression=name)
    return blind.token_hashes(modifier, parts, h, name)


def _value_clause(
    ctx: SearchContext, t: Any, param: SearchParam, modifier: str, value: str, name: str
) -> ColumnElement[bool]:
    if param.type in ("string", "reference", "uri"):  # values that are not split any further
        value = unescape(value)
    match param.type:
        case "string":
            return _string_clause(t, modifier, value)
        case "token":
            return _token_clause(ctx, t, modifier, value, name)
        case "date":
            return _date_clause(t, value, name)
        case "number":
            return _number_clause(t, value, name)
        case "quantity":
            return _quantity_clause(t, value, name)
        case "reference":
            return _reference_clause(ctx, t, param, modifier, value, name)
        case "composite":
            return _composite_clause(ctx, t, param, value, name)
        case _:
            return _uri_clause(t, modifier, value)


def _composite_view(t: Any, position: int, param_type: str) -> SimpleNamespace:
    """The composite table's columns for one component, named as that component type's own table."""
    if position == 0:
        if param_type == "reference":
            return SimpleNamespace(target_type=t.c1_system, target_id=t.c1_code, url=t.c1_code)
        return SimpleNamespace(
            system=t.c1_system,
            code=t.c1_code,
            text_norm=t.c1_code,
            type_system=t.c1_system,
            type_code=t.c1_code,
        )
    if position == 2:
        return SimpleNamespace(value=t.c3_value)
    return SimpleNamespace(
        system=t.c2_system,
        code=t.c2_code,
        unit=t.c2_unit,
        value=t.c2_value,
        low=t.c2_low,
        high=t.c2_high,
        value_norm=t.c2_text,
        value_exact=t.c2_text,
        text_norm=t.c2_code,
        type_system=t.c2_system,
        type_code=t.c2_code,
    )


def _composite_clause(
    ctx: SearchContext, t: Any, param: SearchParam, value: str, name: str
) -> ColumnElement[bool]:
    """``code-value-quantity=http://loinc.org|8480-6$gt100``: every component matches in the same tuple."""
    parts = split_unescaped(value, "$")
    if len(parts) != len(param.components):
        raise BadRequest(
            f"Parameter {name}: a value needs {len(param.components)} components separated by $",
            expression=name,
        )
    owner = params_for(param.base)
    clauses = []
    for position, ((code, _expression), text) in enumerate(zip(param.components, parts, strict=True)):
        component = owner.get(code)
        if component is None:
            raise UnknownParameter(f"Parameter {name}: component '{code}' is not defined", expression=name)
        clauses.append(
            _value_clause(ctx, _composite_view(t, position, component.type), component, "", text, name)
        )
    return and_(*clauses)


def _ids_matching(
    ctx: SearchContext, res_type: str, name: str, value: str, id_col: Any
) -> ColumnElement[bool]:
    """``id_col`` names a ``res_type`` resource matching ``name=value`` (for chains and ``_has``).

    A plain indexed parameter is a correlated EXISTS on its index table (rows exist only for current,
    non-deleted resources, so no join to ``resource``); the planner can then stop at the page size instead
    of materialising every match. Anything else (nested chains, modifiers that negate) goes through the
    resource table.
    """
    head = name.partition(".")
    code, _, modifier = head[0].partition(":")
    inner = aliased(Resource)
    # The token's reach applies to the resources a chain or _has looks at, not only to those returned:
    # filtering on what it may not read would tell real values from made-up ones.
    reach = None if ctx.access is None else ctx.access.clause(ctx, res_type, inner, "s")
    if (
        reach is None
        and not head[1]
        and not name.startswith("_has:")
        and code not in ("_id", "_lastUpdated")
        and modifier != "missing"
    ):
        param = _param(res_type, code, name)
        if param.type in INDEX_TABLES and param.expression:
            table, index_code, matches, negate = _matching(ctx, param, modifier, value, name)
            if not negate:
                return exists(
                    select(literal(1)).where(
                        table.res_type == res_type,
                        table.res_id == id_col,
                        *_of_param(table, index_code),
                        matches,
                    )
                )
    clause = parameter_clause(ctx, res_type, inner, name, value)
    conditions = [inner.res_type == res_type, inner.deleted.is_(False), inner.res_id == id_col]
    if clause is not None:
        conditions.append(clause)
    if reach is not None:
        conditions.append(reach)
    return exists(select(literal(1)).where(*conditions))


def _chain_clause(
    ctx: SearchContext,
    res_type: str,
    outer: AliasedClass[Resource],
    param: SearchParam,
    modifier: str,
    rest: str,
    value: str,
    name: str,
) -> ColumnElement[bool]:
    """``subject:Patient.name=x``: a reference whose target matches the rest of the chain."""
    if param.type != "reference":
        raise BadRequest(f"Parameter {name}: only reference parameters can be chained", expression=name)
    next_code = rest.partition(".")[0].partition(":")[0]
    candidates = [modifier] if modifier else [t for t in param.targets if t in supported_types()]
    if modifier and modifier not in supported_types():
        raise BadRequest(f"Parameter {name}: '{modifier}' is not a resource type", expression=name)
    targets = [
        t
        for t in candidates
        if next_code.startswith("_has") or next_code in ("_id", "_lastUpdated") or next_code in params_for(t)
    ]
    if not targets:
        raise UnknownParameter(
            f"Parameter {name}: no target of '{param.code}' has a parameter '{next_code}'", expression=name
        )
    clauses = []
    for target in targets:
        ref = aliased(ReferenceIndex)
        clauses.append(
            _index_exists(
                res_type,
                outer,
                ref,
                param.code,
                and_(ref.target_type == target, _ids_matching(ctx, target, rest, value, ref.target_id)),
            )
        )
    return or_(*clauses)


def _has_clause(
    ctx: SearchContext, res_type: str, outer: AliasedClass[Resource], name: str, value: str
) -> ColumnElement[bool]:
    """``_has:Observation:patient:code=x``: some Observation whose ``patient`` points here matches."""
    parts = name.split(":", 3)
    if len(parts) != 4 or not parts[3]:
        raise BadRequest(f"Parameter {name}: _has is _has:Type:reference:parameter", expression=name)
    _, source, ref_code, rest = parts
    if source not in supported_types():
        raise BadRequest(f"Parameter {name}: '{source}' is not a resource type", expression=name)
    ref_param = _param(source, ref_code, name)
    if ref_param.type != "reference":
        raise BadRequest(
            f"Parameter {name}: '{ref_code}' is not a reference parameter of {source}", expression=name
        )
    ref = aliased(ReferenceIndex)
    probe = select(literal(1)).where(
        ref.res_type == source,
        ref.param == ref_code,
        ref.target_type == outer.res_type,
        ref.target_id == outer.res_id,
        _ids_matching(ctx, source, rest, value, ref.res_id),
    )
    if _many_sources(ctx, source, rest, value):
        # OFFSET 0 keeps the EXISTS a per-row probe. PostgreSQL would flatten it into a semi-join that hashes
        # every reference of the parameter; when the sources are many, most targets match and probing targets
        # in page order stops at the page size instead.
        probe = probe.offset(0)
    return exists(probe)


MANY_SOURCES = 1000


def _many_sources(ctx: SearchContext, res_type: str, name: str, value: str) -> bool:
    """Whether at least MANY_SOURCES resources match ``name=value`` (a bounded index read, on PostgreSQL)."""
    session = ctx.session
    if session is None or session.get_bind().dialect.name != "postgresql":
        return False
    code, _, modifier = name.partition(":")
    param = params_for(res_type).get(code)
    if (
        "." in name
        or name.startswith("_")
        or param is None
        or param.type not in INDEX_TABLES
        or not param.expression
    ):
        return False
    table, index_code, matches, negate = _matching(ctx, param, modifier, value, name)
    if negate:
        return False
    sample = select(table.res_id).where(table.res_type == res_type, *_of_param(table, index_code), matches)
    found = session.execute(
        select(func.count()).select_from(sample.limit(MANY_SOURCES).subquery())
    ).scalar_one()
    return int(found) >= MANY_SOURCES


def build_filters(
    ctx: SearchContext, res_type: str, outer: AliasedClass[Resource], params: list[tuple[str, str]]
) -> list[ColumnElement[bool]]:
    """AND of every filtering parameter; unknown ones raise (strict) or are recorded in ``ctx.ignored``."""
    clauses = []
    params, merged = _merge_protected_date_ranges(ctx, res_type, outer, params)
    clauses += merged
    for name, value in params:
        if name.partition(":")[0] in RESULT_PARAMETERS:  # also _include:iterate and the like
            continue
        try:
            clause = parameter_clause(ctx, res_type, outer, name, value)
        except UnknownParameter:
            if ctx.strict:
                raise
            ctx.ignored.append(name)
            continue
        if clause is not None:
            clauses.append(clause)
    return clauses


def _merge_protected_date_ranges(
    ctx: SearchContext, res_type: str, outer: AliasedClass[Resource], params: list[tuple[str, str]]
) -> tuple[list[tuple[str, str]], list[ColumnElement[bool]]]:
    """``birthdate=ge1970&birthdate=lt1975`` on a protected date with at most one value per resource: one
    EXISTS over the buckets of the closed range, instead of one per open bound. Returns the parameters
    left for the usual path and the merged clauses."""
    shield = protection.current()
    groups: dict[str, list[str]] = {}
    for name, value in params:
        param = params_for(res_type).get(name)
        if (
            param is not None
            and param.type == "date"
            and name in shield.protected_params(res_type)
            and "," not in value
            and split_prefix(value)[0] not in ("ne", "ap")
            and single_date(res_type, name)
        ):
            groups.setdefault(name, []).append(value)
    merged: list[ColumnElement[bool]] = []
    for name, values in groups.items():
        if len(values) < 2:
            continue
        param = params_for(res_type)[name]
        conditions = []
        for value in values:
            prefix, text = split_prefix(value)
            r = parse_range(text, name)
            conditions.append((prefix, r.low, r.high))
        hashers = shield.hashers(ctx.session if ctx.session is not None else db.session(), res_type, name)
        dates_only = date_only(res_type, name)
        wanted = [x for h in hashers for x in blind.date_range_hashes(conditions, h, dates_only=dates_only)]
        t, code, clause = _blind_lookup(
            ctx.session if ctx.session is not None else db.session(), res_type, name, wanted
        )
        merged.append(_index_exists(res_type, outer, t, code, clause))
        params = [(n, v) for n, v in params if not (n == name and v in values)]
    return params, merged


__all__ = ["DateIndex", "SearchContext", "TokenIndex", "UnknownParameter", "build_filters", "date_condition"]
