"""People who sign in to SMART apps (App Launch): clinicians and patients, each linked to their FHIR record.

Passwords are kept as werkzeug.security hashes (scrypt, salted): the standard library of the stack, and
what ``check_password_hash`` verifies in constant time. A production deployment would sign users in through
its own identity provider (resource-server mode); this registry serves the built-in authorization server.
"""

from __future__ import annotations

import re
import secrets

from sqlalchemy import select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from fhir_api.auth.models import AuthUser
from fhir_api.db import now, write_transaction

USER_ROLES = {"clinician": "Practitioner", "patient": "Patient"}
_USERNAME = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_FHIR_USER = re.compile(
    r"^(Practitioner|PractitionerRole|Patient|RelatedPerson|Person)/[A-Za-z0-9\-.]{1,64}$"
)
# Checked against when the username is unknown, so both paths cost one scrypt (no user enumeration by timing).
_DUMMY_HASH = generate_password_hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user that cannot be registered, with the reason."""


def add_user(
    session: Session, username: str, password: str, role: str, fhir_user: str, name: str | None = None
) -> AuthUser:
    if not _USERNAME.match(username):
        raise UserError("a username is 1-64 letters, digits or . _ @ -")
    if role not in USER_ROLES:
        raise UserError(f"a user's role is one of {', '.join(USER_ROLES)}")
    if not _FHIR_USER.match(fhir_user):
        raise UserError("--fhir-user must be a reference such as Practitioner/123 or Patient/456")
    if role == "patient" and not fhir_user.startswith("Patient/"):
        raise UserError("a patient user's --fhir-user is their Patient/<id>")
    if len(password) < 12:
        raise UserError("a password has at least 12 characters")
    with write_transaction(session):
        if session.get(AuthUser, username) is not None:
            raise UserError(f"user {username!r} exists")
        user = AuthUser(
            username=username,
            password_hash=generate_password_hash(password),
            role=role,
            fhir_user=fhir_user,
            name=name,
            disabled=False,
            created_at=now(),
        )
        session.add(user)
    return user


def authenticate(session: Session, username: str, password: str) -> AuthUser | None:
    """The enabled user with this password, else None (same cost whether or not the user exists)."""
    user = session.get(AuthUser, username) if _USERNAME.match(username or "") else None
    if user is None:
        check_password_hash(_DUMMY_HASH, password or "")
        return None
    if not check_password_hash(user.password_hash, password or "") or user.disabled:
        return None
    return user


def get_user(session: Session, username: str) -> AuthUser | None:
    user = session.get(AuthUser, username)
    return user if user is not None and not user.disabled else None


def list_users(session: Session) -> list[AuthUser]:
    return list(session.execute(select(AuthUser).order_by(AuthUser.username)).scalars())


def patient_of(user: AuthUser) -> str | None:
    """A patient user's own Patient id (their launch context)."""
    return user.fhir_user.partition("/")[2] if user.fhir_user.startswith("Patient/") else None
