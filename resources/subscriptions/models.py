"""Subscription tables: each subscription's delivery state, the change outbox, the delivery queue and its log.

The Subscription resource itself is stored like any other resource (read, search and history work as for
every type); these tables hold what the server needs to deliver: who owns it, its sealed secret and
headers, and the queue. Only ``resources.subscriptions.store`` queries them.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from fhir_api.db import Base, UTCDateTime
from resources.models import BigIntId


class SubscriptionState(Base):
    """One row per Subscription resource: owner, parsed criteria, channel and delivery health."""

    __tablename__ = "subscription_state"

    sub_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), nullable=False)  # the client that created it
    principal: Mapped[str] = mapped_column(Text, nullable=False)  # JSON: role, scope and context then
    status: Mapped[str] = mapped_column(String(16), nullable=False)  # requested|active|error|off
    criteria_type: Mapped[str] = mapped_column(String(64), nullable=False)
    criteria: Mapped[str] = mapped_column(Text, nullable=False)  # the query after '?'
    endpoint: Mapped[str] = mapped_column(String(2048), nullable=False)
    content: Mapped[str] = mapped_column(String(16), nullable=False)  # empty|id-only|full-resource
    mime: Mapped[str | None] = mapped_column(String(64))
    data_key: Mapped[str] = mapped_column(Text, nullable=False)  # wraps the secret and the headers
    secret: Mapped[str] = mapped_column(Text, nullable=False)  # sealed HMAC key
    old_secret: Mapped[str | None] = mapped_column(Text)  # sealed, still signed with until old_until
    old_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    headers: Mapped[str | None] = mapped_column(Text)  # sealed JSON list of "Name: value"
    next_seq: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)  # consecutive
    error: Mapped[str | None] = mapped_column(Text)
    due: Mapped[datetime | None] = mapped_column(UTCDateTime)  # when its first queued event may go
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    end: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_subscription_state_type", "criteria_type", "status"),
        Index("ix_subscription_state_due", "due"),
        Index("ix_subscription_state_owner", "owner"),
    )


class SubscriptionChange(Base):
    """The outbox: a version written while some subscription watched its type, committed with the write."""

    __tablename__ = "subscription_change"

    seq: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    res_type: Mapped[str] = mapped_column(String(64), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)


class SubscriptionDelivery(Base):
    """One event for one subscription: the queue entry while pending, then the log of what happened."""

    __tablename__ = "subscription_delivery"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    sub_id: Mapped[str] = mapped_column(String(64), nullable=False)
    event_number: Mapped[int] = mapped_column(Integer, nullable=False)
    res_type: Mapped[str] = mapped_column(String(64), nullable=False)
    res_id: Mapped[str] = mapped_column(String(64), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    event: Mapped[str] = mapped_column(String(8), nullable=False)  # create|update|delete
    replay: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    # pending | delivered | failed (given up) | withheld (the owner may no longer read it)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int | None] = mapped_column(Integer)
    created: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    finished: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_subscription_delivery_queue", "sub_id", "status", "id"),
        Index("ix_subscription_delivery_number", "sub_id", "event_number"),
        Index("ix_subscription_delivery_resource", "sub_id", "res_type", "res_id"),
    )


class SubscriptionAttempt(Base):
    """Each attempt to deliver an event: when, the answer (or the error) and how long it took."""

    __tablename__ = "subscription_attempt"

    id: Mapped[int] = mapped_column(BigIntId, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigIntId, nullable=False)
    at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    latency_ms: Mapped[int] = mapped_column(Integer, nullable=False)

    __table_args__ = (Index("ix_subscription_attempt_delivery", "delivery_id", "id"),)
