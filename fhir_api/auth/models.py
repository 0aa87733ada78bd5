"""Authorization state that every worker and host must share: clients, used assertions, revocations."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime


class AuthClient(Base):
    """A registered SMART client; its role is the ceiling of what it can ever be granted."""

    __tablename__ = "auth_client"
    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[str] = mapped_column(String(32), nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False, default="")
    jwks: Mapped[str | None] = mapped_column(Text)  # public keys as a JWK Set (JSON), for private_key_jwt
    jwks_url: Mapped[str | None] = mapped_column(String(2048))
    organization: Mapped[str | None] = mapped_column(String(128))  # "Organization/<id>" (insurers)
    redirect_uris: Mapped[str | None] = mapped_column(Text)  # JSON list, for app launch
    public: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    allowed_networks: Mapped[str | None] = mapped_column(Text)  # space-separated CIDR blocks; None: anywhere
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class UsedAssertion(Base):
    """Client-assertion ids already accepted: a second use of one is a replay (RFC 7523 section 3)."""

    __tablename__ = "auth_used_assertion"
    key: Mapped[str] = mapped_column(String(400), primary_key=True)  # "<client_id> <jti>"
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    __table_args__ = (Index("ix_auth_used_assertion_expires", "expires_at"),)


class RevokedToken(Base):
    """Access tokens revoked before they expire (RFC 7009); rows are useless after ``expires_at``."""

    __tablename__ = "auth_revoked_token"
    jti: Mapped[str] = mapped_column(String(64), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    __table_args__ = (Index("ix_auth_revoked_token_expires", "expires_at"),)


class AuthUser(Base):
    """A person who signs in to an app (App Launch): a clinician or a patient, linked to their FHIR record."""

    __tablename__ = "auth_user"
    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(Text, nullable=False)  # werkzeug.security (scrypt)
    role: Mapped[str] = mapped_column(String(32), nullable=False)  # clinician | patient
    fhir_user: Mapped[str] = mapped_column(String(128), nullable=False)  # Practitioner/<id> or Patient/<id>
    name: Mapped[str | None] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class AuthCode(Base):
    """An authorization code, kept by its hash: single use, short-lived, bound to its PKCE challenge."""

    __tablename__ = "auth_code"
    code_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    redirect_uri: Mapped[str] = mapped_column(Text, nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    code_challenge: Mapped[str] = mapped_column(String(128), nullable=False)
    code_challenge_method: Mapped[str] = mapped_column(String(8), nullable=False)
    nonce: Mapped[str | None] = mapped_column(String(256))
    patient: Mapped[str | None] = mapped_column(String(64))
    encounter: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    __table_args__ = (Index("ix_auth_code_expires", "expires_at"),)


class RefreshToken(Base):
    """A refresh token (``offline_access``/``online_access``), kept by its hash; rotated on every use."""

    __tablename__ = "auth_refresh_token"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), nullable=False)
    username: Mapped[str] = mapped_column(String(64), nullable=False)
    scope: Mapped[str] = mapped_column(Text, nullable=False)
    patient: Mapped[str | None] = mapped_column(String(64))
    encounter: Mapped[str | None] = mapped_column(String(64))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    revoked: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    __table_args__ = (Index("ix_auth_refresh_token_expires", "expires_at"),)


class LaunchContext(Base):
    """An EHR launch: the context (patient, encounter) an EHR hands to an app by an opaque ``launch`` id."""

    __tablename__ = "auth_launch"
    launch_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    patient: Mapped[str | None] = mapped_column(String(64))
    encounter: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
