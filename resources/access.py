"""What one request may see and do, applied inside the queries (never by filtering pages afterwards).

``fhir_api.auth`` builds an ``Access`` from the bearer token; the views check the interaction against it,
and the repository and search engine add its SQL restriction to every query, so counts, totals, paging,
``_include``/``_revinclude`` and history never reveal a resource the token may not see.

Old versions (vread, history) must pass twice: the resource must be within reach now (its current
version, on the search index), and the version itself by its own content (resources.owners), so a
resource moved into a patient's compartment does not bring along what it said while it was another's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session, aliased

from fhir_api.errors import Forbidden
from resources import owners
from resources.models import Resource
from resources.search.compartments import compartment_clause, compartments
from resources.search.models import ReferenceIndex

ACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


@dataclass(frozen=True)
class Rule:
    """One granted resource scope: a type (or ``*``), its actions, and an optional search constraint."""

    res_type: str
    actions: frozenset[str]
    query: tuple[tuple[str, str], ...] = ()
    patient_only: bool = False  # a patient/ scope: only the compartment of the token's patient

    def permits(self, res_type: str, action: str) -> bool:
        return (self.res_type in ("*", res_type)) and action in self.actions


@dataclass(frozen=True)
class Access:
    """Rules from the token's scopes, narrowed by context: one patient's compartment, or an insurer's
    members. ``UNRESTRICTED`` is for the server's own work (seeding, CLI), never for a request."""

    rules: tuple[Rule, ...] = ()
    types: frozenset[str] | None = None  # the role's ceiling on types, when it has one
    patient: str | None = None  # only this patient's compartment
    payor: str | None = None  # only patients covered by this Organization id (and its own Coverage)
    owner: str | None = None  # the client: of the types clients own (Subscription), only its own
    unrestricted: bool = False

    # -- interaction checks ---------------------------------------------------------------------------
    def permits(self, res_type: str, action: str) -> bool:
        if self.unrestricted:
            return True
        if self.types is not None and res_type not in self.types:
            return False
        return any(r.permits(res_type, action) for r in self.rules)

    def permits_any(self, action: str) -> bool:
        return self.unrestricted or any(action in r.actions for r in self.rules)

    def require(self, res_type: str | None, action: str) -> None:
        """403 unless the token's scopes allow ``action`` on ``res_type`` (any type when None)."""
        ok = self.permits_any(action) if res_type is None else self.permits(res_type, action)
        if not ok:
            what = f"{res_type} resources" if res_type else "resources"
            raise Forbidden(f"The access token's scopes do not allow {ACTION_NAMES[action]} of {what}")

    # -- row restriction ------------------------------------------------------------------------------
    def clause(
        self, ctx: Any, res_type: str, outer: Any, action: str = "s", version: Any = None
    ) -> ColumnElement[bool] | None:
        """The SQL condition on ``outer`` (a Resource alias) for rows of ``res_type`` this token may see:
        None when nothing restricts them, ``false()`` when none are visible.

        With ``version`` (a ResourceVersion alias of the same resource), that version must also be within
        reach by its own content, under the rule that reaches the resource: the token's patient's
        compartment, an insurer's members. (A scope's search constraint is judged on the current version
        only: the index describes no other.)"""
        if self.unrestricted:
            return None
        if not self.permits(res_type, action):
            return false()
        reach = self._reach(ctx, res_type, outer, action)
        if version is None:
            return reach.condition()
        mine = owners.in_patient_compartment(res_type, self.patient, version) if self.patient else None
        condition = reach.condition(mine)
        if self.payor is not None:
            return and_(condition, _version_covered_by(res_type, self.payor, version))
        return condition

    def _reach(self, ctx: Any, res_type: str, outer: Any, action: str) -> _Reach:
        free: list[ColumnElement[bool]] = []
        confined: list[ColumnElement[bool]] = []
        if res_type in OWNED_TYPES:  # the client's own, whatever its patient or payor context
            mine = OWNED_TYPES[res_type](self.owner, outer) if self.owner else false()
            if any(r.permits(res_type, action) for r in self.rules):
                return _Reach(None, [], mine)
            return _Reach([], [], mine)
        covered = _covered_by(res_type, self.payor, outer) if self.payor is not None else None
        for rule in (r for r in self.rules if r.permits(res_type, action)):
            constraint = _constraint(ctx, res_type, outer, rule.query) if rule.query else None
            if rule.patient_only:
                own = _in_patient_compartment(res_type, self.patient, outer) if self.patient else false()
                confined.append(and_(constraint, own) if constraint is not None else own)
            elif constraint is None:  # this scope alone reaches every row of the type
                return _Reach(None, [], covered)
            else:
                free.append(constraint)
        return _Reach(free, confined, covered)

    def versions_condition(self, ctx: Any, action: str = "s") -> Any:
        """For ``HistoryQuery.visible`` and vread: the restriction on versions, by their current resource
        and by their own content (None: every version visible)."""
        if self.unrestricted:
            return None
        from resources.registry import supported_types

        def condition(outer: Any, version: Any, res_type: str | None) -> ColumnElement[bool] | None:
            if res_type is not None:
                return self.clause(ctx, res_type, outer, action, version)
            # Every type at once. The tests on the version do not depend on its type, so they are stated
            # once, not once per type (PostgreSQL plans a subquery for each: hundreds, and a slow plan).
            free: list[ColumnElement[bool]] = []
            confined: list[ColumnElement[bool]] = []
            for t in supported_types():
                if not self.permits(t, action):
                    continue
                reach = self._reach(ctx, t, outer, action)
                covered = [reach.covered] if reach.covered is not None else []
                if reach.free is None:
                    free.append(and_(outer.res_type == t, *covered))
                    continue
                if reach.free:
                    free.append(and_(outer.res_type == t, or_(*reach.free), *covered))
                if reach.confined:
                    confined.append(and_(outer.res_type == t, or_(*reach.confined), *covered))
            options = [or_(*free)] if free else []
            if confined:
                mine = or_(*confined)
                if self.patient and version is not None:
                    mine = and_(mine, owners.in_patient_compartment(None, self.patient, version))
                options.append(mine)
            if not options:
                return false()
            visible = or_(*options)
            if self.payor is not None and version is not None:
                return and_(visible, _version_covered_by(None, self.payor, version))
            return visible

        return condition

    @property
    def narrowed(self) -> bool:
        """Whether some rows of a permitted type can still be out of reach (patient, payor, constraints)."""
        return not self.unrestricted and (
            self.payor is not None or any(r.query or r.patient_only for r in self.rules)
        )

    def narrows(self, res_type: str) -> bool:
        """``narrowed``, for one type: rows of an owned type are always someone's."""
        return self.narrowed or (not self.unrestricted and res_type in OWNED_TYPES)

    def visible(self, session: Session, res_type: str, res_id: str, action: str = "r") -> bool:
        """Whether one current resource is within reach (a 404 otherwise: existence is not disclosed)."""
        from resources.search.query import SearchContext

        outer = aliased(Resource)
        condition = self.clause(SearchContext(session=session), res_type, outer, action)
        if condition is None:
            return True
        stmt = select(exists().where(outer.res_type == res_type, outer.res_id == res_id, condition))
        return bool(session.execute(stmt).scalar())


UNRESTRICTED = Access(unrestricted=True)

# Types whose rows belong to the client that created them: type -> (client id, Resource alias) -> the
# condition that the row is that client's (registered by the owning feature, e.g. subscriptions).
OWNED_TYPES: dict[str, Any] = {}


@dataclass(frozen=True)
class _Reach:
    """One type's rows within a token's reach now: through scopes that reach any patient's rows (``free``;
    None when one reaches every row), through scopes confined to the token's patient (``confined``), and
    the insurer's restriction over both (``covered``)."""

    free: list[ColumnElement[bool]] | None
    confined: list[ColumnElement[bool]]
    covered: ColumnElement[bool] | None

    def condition(self, confined_version: ColumnElement[bool] | None = None) -> ColumnElement[bool] | None:
        """``confined_version``: what a version must also meet to be seen through a confined scope."""
        restriction = []
        if self.free is not None:
            options = list(self.free)
            if self.confined:
                mine = or_(*self.confined)
                options.append(and_(mine, confined_version) if confined_version is not None else mine)
            restriction.append(or_(*options))
        if self.covered is not None:
            restriction.append(self.covered)
        if not restriction:
            return None
        return and_(*restriction) if len(restriction) > 1 else restriction[0]


def _constraint(
    ctx: Any, res_type: str, outer: Any, query: tuple[tuple[str, str], ...]
) -> ColumnElement[bool]:
    """A scope's search constraint, strictly: one it cannot apply (unknown parameter) reaches nothing."""
    from fhir_api.errors import FhirError
    from resources.search.query import SearchContext, build_filters

    strict = SearchContext(session=ctx.session, base_url=ctx.base_url, strict=True)
    try:
        clauses = build_filters(strict, res_type, outer, list(query))
    except FhirError:
        return false()
    if not clauses:
        return false()
    return and_(*clauses) if len(clauses) > 1 else clauses[0]


def _in_patient_compartment(res_type: str, patient: str, outer: Any) -> ColumnElement[bool]:
    """The Patient compartment of the official CompartmentDefinition; other types are out of reach."""
    if res_type != "Patient" and res_type not in compartments()["Patient"]:
        return false()
    return compartment_clause("Patient", patient, res_type, outer)


def _members(payor: str) -> Any:
    """Ids of patients that have a Coverage whose payor is Organization/<payor>."""
    beneficiary, payor_ref = aliased(ReferenceIndex), aliased(ReferenceIndex)
    own_coverage = select(payor_ref.res_id).where(
        payor_ref.res_type == "Coverage",
        payor_ref.param == "payor",
        payor_ref.target_type == "Organization",
        payor_ref.target_id == payor,
    )
    return select(beneficiary.target_id).where(
        beneficiary.res_type == "Coverage",
        beneficiary.param == "beneficiary",
        beneficiary.target_type == "Patient",
        beneficiary.res_id.in_(own_coverage),
    )


def _version_covered_by(res_type: str | None, payor: str, version: Any) -> ColumnElement[bool]:
    """``_covered_by`` for a version, by its own content (membership itself is today's Coverage); of any
    type when ``res_type`` is None."""
    if res_type == "Coverage":
        return owners.paid_by(version, payor)
    if res_type is not None:
        return owners.in_patient_compartment(res_type, _members(payor), version)
    return or_(
        and_(version.res_type == "Coverage", owners.paid_by(version, payor)),
        and_(version.res_type != "Coverage", owners.in_patient_compartment(None, _members(payor), version)),
    )


def _covered_by(res_type: str, payor: str, outer: Any) -> ColumnElement[bool]:
    """An insurer sees its members' records of the allowed types, and of Coverage only its own."""
    if res_type == "Coverage":
        ref = aliased(ReferenceIndex)
        return exists().where(
            ref.res_type == "Coverage",
            ref.res_id == outer.res_id,
            ref.param == "payor",
            ref.target_type == "Organization",
            ref.target_id == payor,
        )
    if res_type != "Patient" and res_type not in compartments()["Patient"]:
        return false()
    return compartment_clause("Patient", _members(payor), res_type, outer)
