"""The app's protection of data at rest: policy, keys, and the seal/open/index calls storage makes.

One ``Protection`` per app (``app.extensions["fhir_protection"]``). Keys are reached lazily, so commands
that touch no data (``db upgrade``) run without them; ``fhir-api serve`` checks them before it starts.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from flask import Flask, current_app, has_app_context
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from crypto.envelope import Envelopes, FieldCipher, generate_secret, split_wrapped, version_aad, wrapped_text
from crypto.kms import KeyConfigurationError, KeyProvider, provider_from_config
from fhir_api import db
from fhir_api.errors import KeyUnavailable, TamperedData
from resources import jsonio
from resources.protection.blind import Hasher, hasher
from resources.protection.models import IndexKey
from resources.protection.policy import Policy
from resources.protection.sealing import MARKER_TEXT, open_sealed, open_sealed_text, seal

INDEX_KEY_TTL = 10.0  # seconds a worker trusts its list of blind-index keys (rotation waits longer)
LIVE_STATES = ("active", "building")


@dataclass(frozen=True)
class IndexRoot:
    gen: int
    root: bytes


def index_key_aad(gen: int) -> bytes:
    return f"crypto_index_key/{gen}".encode()


class Protection:
    def __init__(self, config: dict[str, Any]) -> None:
        self.enabled = bool(config.get("PROTECTION", True))
        extra = config.get("PROTECTED_ELEMENTS") or ""
        self.policy = Policy.build(extra.split(",") if isinstance(extra, str) else extra)
        self._config = config
        self._envelopes: Envelopes | None = None
        self._lock = threading.Lock()
        self._roots: tuple[float, tuple[IndexRoot, ...]] | None = None

    # -- keys ---------------------------------------------------------------------------------------------
    @property
    def envelopes(self) -> Envelopes:
        if self._envelopes is None:
            with self._lock:
                if self._envelopes is None:
                    try:
                        provider = provider_from_config(self._config)
                    except KeyConfigurationError as exc:  # a running server says so per request (503)
                        raise KeyUnavailable(f"Protected data needs encryption keys: {exc}") from None
                    self._envelopes = Envelopes(provider)
        return self._envelopes

    @property
    def provider(self) -> KeyProvider:
        return self.envelopes.provider

    def index_roots(self, session: Session, *, create: bool = False) -> tuple[IndexRoot, ...]:
        """Live blind-index root keys, newest first (writes use the first, searches all of them)."""
        cached = self._roots
        if cached is not None and cached[1] and time.monotonic() - cached[0] < INDEX_KEY_TTL:
            return cached[1]  # (no key yet is never cached: the first writer may create one any moment)
        rows = session.execute(
            select(IndexKey.gen, IndexKey.wrapped)
            .where(IndexKey.state.in_(LIVE_STATES))
            .order_by(IndexKey.gen.desc())
        ).all()
        if not rows and create:
            self._create_first_index_key(session)
            rows = session.execute(
                select(IndexKey.gen, IndexKey.wrapped).where(IndexKey.state.in_(LIVE_STATES))
            ).all()
        previous = {r.gen: r.root for r in cached[1]} if cached else {}
        roots = tuple(
            IndexRoot(gen, previous.get(gen) or self.unwrap_index_key(gen, wrapped)) for gen, wrapped in rows
        )
        self._roots = (time.monotonic(), roots)
        return roots

    def forget_index_keys(self) -> None:
        self._roots = None

    def unwrap_index_key(self, gen: int, wrapped: str) -> bytes:
        kid, raw = split_wrapped(wrapped)
        return self.provider.unwrap(kid, raw, index_key_aad(gen))

    def new_index_key(self, gen: int) -> tuple[str, str]:
        """A wrapped random root key for generation ``gen`` and the KEK id wrapping it."""
        secret = generate_secret()
        kid, wrapped = self.provider.wrap(secret, index_key_aad(gen))
        return wrapped_text(kid, wrapped), kid

    def _create_first_index_key(self, session: Session) -> None:
        """Generation 1, inside the caller's transaction; concurrent first writers insert it once."""
        wrapped, kid = self.new_index_key(1)
        values = {"gen": 1, "state": "active", "key_id": kid, "wrapped": wrapped, "created_at": db.now()}
        dialect = session.get_bind().dialect.name
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(insert(IndexKey).values(**values).on_conflict_do_nothing(index_elements=["gen"]))

    def hashers(self, session: Session, res_type: str, param: str) -> list[Hasher]:
        """One hasher per live root key: a search matches rows written under any of them."""
        return [hasher(r.root, res_type, param) for r in self.index_roots(session)]

    # -- what is protected -------------------------------------------------------------------------------
    def protected_params(self, res_type: str) -> frozenset[str]:
        return self.policy.protected_params(res_type) if self.enabled else frozenset()

    # -- bodies -------------------------------------------------------------------------------------------
    def seal(
        self, res_type: str, res_id: str, version: int, resource: dict[str, Any]
    ) -> tuple[str, str, str] | None:
        """(stored body, wrapped data key, KEK id) for a version with protected elements, else None."""
        if not self.enabled:
            return None
        place = version_aad(res_type, res_id, version)
        made: dict[str, Any] = {}

        def cipher() -> FieldCipher:
            fc, wrapped, kid = self.envelopes.new(place)
            made.update(wrapped=wrapped, kid=kid)
            return fc

        sealed = seal(resource, self.policy, cipher)
        if sealed is None:
            return None
        return jsonio.dumps(sealed), made["wrapped"], made["kid"]

    def open(self, res_type: str, res_id: str, version: int, body: str, data_key: str) -> str:
        """The clear JSON of a stored version whose body holds sealed elements."""
        if MARKER_TEXT not in body:
            return body
        cipher = self.envelopes.open(data_key, version_aad(res_type, res_id, version))
        opened = open_sealed_text(body, cipher)
        if opened is not None:
            return opened
        try:
            doc = jsonio.loads_trusted(body)
        except ValueError:
            raise TamperedData(
                f"The stored body of {res_type}/{res_id} version {version} is not JSON"
            ) from None
        return jsonio.dumps(open_sealed(doc, cipher))


_DISABLED: Protection | None = None


def current() -> Protection:
    """The running app's protection (outside an app: protection off, for tools that build rows offline)."""
    if has_app_context():
        found = current_app.extensions.get("fhir_protection")
        if found is not None:
            return found
    global _DISABLED
    if _DISABLED is None:
        _DISABLED = Protection({"PROTECTION": False})
    return _DISABLED


def init_app(app: Flask) -> None:
    app.extensions["fhir_protection"] = Protection(app.config)
