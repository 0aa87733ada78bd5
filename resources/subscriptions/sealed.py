"""A subscription's secret and channel headers, sealed at rest under the server's keys (crypto.envelope):
a copied database reveals neither the HMAC key nor the bearer tokens receivers asked for."""

from __future__ import annotations

import json

from resources.protection import service as protection


def _place(sub_id: str) -> bytes:
    return f"Subscription/{sub_id}#channel".encode()


def new_key(sub_id: str) -> str:
    """A fresh data key for a subscription, wrapped (stored in ``data_key``)."""
    _cipher, wrapped, _kid = protection.current().envelopes.new(_place(sub_id))
    return wrapped


def seal(sub_id: str, data_key: str, pointer: str, value: str) -> str:
    return protection.current().envelopes.open(data_key, _place(sub_id)).seal(value.encode(), pointer)


def open_(sub_id: str, data_key: str, pointer: str, token: str) -> str:
    return protection.current().envelopes.open(data_key, _place(sub_id)).open(token, pointer).decode()


def seal_headers(sub_id: str, data_key: str, headers: list[tuple[str, str]]) -> str | None:
    return seal(sub_id, data_key, "headers", json.dumps(headers)) if headers else None


def open_headers(sub_id: str, data_key: str, token: str | None) -> list[tuple[str, str]]:
    return [tuple(h) for h in json.loads(open_(sub_id, data_key, "headers", token))] if token else []
