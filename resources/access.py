"""What one request may see and do, applied inside the queries (never by filtering pages afterwards).

``fhir_api.auth`` builds an ``Access`` from the bearer token; the views check the interaction against it,
and the repository and search engine add its SQL restriction to every query, so counts, totals, paging,
``_include``/``_revinclude`` and history never reveal a resource the token may not see.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, or_, select
from sqlalchemy.orm import Session, aliased

from fhir_api.errors import Forbidden
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
    def clause(self, ctx: Any, res_type: str, outer: Any, action: str = "s") -> ColumnElement[bool] | None:
        """The SQL condition on ``outer`` (a Resource alias) for rows of ``res_type`` this token may see:
        None when nothing restricts them, ``false()`` when none are visible."""
        if self.unrestricted:
            return None
        if not self.permits(res_type, action):
            return false()
        options: list[ColumnElement[bool]] = []
        for rule in (r for r in self.rules if r.permits(res_type, action)):
            parts = []
            if rule.query:
                parts.append(_constraint(ctx, res_type, outer, rule.query))
            if rule.patient_only:
                parts.append(
                    _in_patient_compartment(res_type, self.patient, outer) if self.patient else false()
                )
            if not parts:  # this scope alone reaches every row of the type
                options = []
                break
            options.append(and_(*parts) if len(parts) > 1 else parts[0])
        restriction = [or_(*options)] if options else []
        if self.payor is not None:
            restriction.append(_covered_by(res_type, self.payor, outer))
        if not restriction:
            return None
        return and_(*restriction) if len(restriction) > 1 else restriction[0]

    def history_condition(self, ctx: Any, action: str = "s") -> Any:
        """For ``HistoryQuery.visible``: the restriction on versions, by their current resource."""
        if self.unrestricted:
            return None
        from resources.registry import supported_types

        def condition(outer: Any, res_type: str | None) -> ColumnElement[bool] | None:
            if res_type is not None:
                return self.clause(ctx, res_type, outer, action)
            per_type = []
            for t in supported_types():
                if self.permits(t, action):
                    allowed = self.clause(ctx, t, outer, action)
                    per_type.append(
                        and_(outer.res_type == t, allowed) if allowed is not None else outer.res_type == t
                    )
            return or_(*per_type) if per_type else false()

        return condition

    @property
    def narrowed(self) -> bool:
        """Whether some rows of a permitted type can still be out of reach (patient, payor, constraints)."""
        return not self.unrestricted and (
            self.payor is not None or any(r.query or r.patient_only for r in self.rules)
        )

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
