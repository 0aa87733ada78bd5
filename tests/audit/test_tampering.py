"""Tampering with the audit log behind the server's back is detected.

The attacker is a database superuser who switches the append-only triggers off (SQLite: drops them;
PostgreSQL: ``session_replication_role = replica``) and then edits, deletes, reorders, inserts or truncates
rows, possibly recomputing the SHA-256 chain. What they lack is the audit key file: they can neither MAC an
event nor sign a checkpoint. Each test builds a log of its own (20 events made through HTTP, chained and
checkpointed), tampers with it, and checks that ``audit.verify`` (and once ``fhir-api audit verify``) names
what was done.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from joserfc.jwk import OKPKey
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from audit import signing
from audit.chain import catch_up, link_hash
from audit.events import canonical
from audit.verify import Report, verify
from fhir_api import create_app
from fhir_api.cli import main
from tests.helpers import authorized_client, create, created_id, fresh_database, patient

TABLES = ("audit_event", "audit_link", "audit_chain", "audit_checkpoint")
A_COLUMN = {"audit_event": "pos", "audit_link": "kind", "audit_chain": "seq", "audit_checkpoint": "seq"}
PATIENTS = 10  # each is created and read: 20 events
EVENTS = 2 * PATIENTS

postgres_only = pytest.mark.skipif(
    not os.environ.get("FHIR_TEST_DATABASE_URL"), reason="PostgreSQL only (FHIR_TEST_DATABASE_URL)"
)


# -- the log under attack ------------------------------------------------------------------------------------
@dataclass
class Log:
    """A chained, checkpointed audit log in a database of its own, and what an auditor holds."""

    url: str
    engine: Engine
    key: OKPKey  # the server's private key: the tests chain with it, the attacker never has it
    checkpoint: dict[str, Any]  # the newest signed checkpoint, {"seq", "hash", "jws"}, as kept elsewhere

    def verify(self, *, saved: Sequence[dict[str, Any]] = (), macs: bool = True) -> Report:
        return verify(
            self.engine,
            key=signing.public_key(self.key.as_dict(private=False)),
            mac_key=signing.derive_mac_key(self.key) if macs else None,
            saved=saved,
        )

    def pos(self, seq: int) -> int:
        """The event chained at ``seq``."""
        with self.engine.connect() as conn:
            return conn.execute(text("SELECT pos FROM audit_chain WHERE seq = :s"), {"s": seq}).scalar_one()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[Log]:
    """A database of the test's own with 20 events (10 creates, 10 reads), chained and checkpointed."""
    with fresh_database(tmp_path, "tamper") as url:
        app = create_app({"DATABASE_URL": url, "TESTING": True})
        engine = app.extensions["fhir_db"]["engine"]
        try:
            client = authorized_client(app)
            for _ in range(PATIENTS):
                patient_id = created_id(create(client, patient()))
                assert client.get(f"/fhir/R4/Patient/{patient_id}").status_code == 200
            key = signing.app_key(app)
            chain_all(engine, EVENTS)
            catch_up(engine, key=key, every=0)  # one signed checkpoint, of the whole log
            with engine.connect() as conn:
                row = conn.execute(text("SELECT seq, hash, jws FROM audit_checkpoint")).one()
            yield Log(url, engine, key, {"seq": row.seq, "hash": row.hash, "jws": row.jws})
        finally:
            engine.dispose()


def chain_all(engine: Engine, expected: int) -> None:
    """Chain the ``expected`` pending events. On PostgreSQL the chainer leaves events alone until every older
    transaction of the cluster has ended, other databases' too (tests elsewhere on the server): retry."""
    chained, deadline = 0, time.monotonic() + 30
    while True:
        chained += catch_up(engine)
        if chained >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert chained == expected


@contextmanager
def superuser(engine: Engine) -> Iterator[Connection]:
    """A transaction of a database superuser who switched the append-only triggers off first."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.exec_driver_sql("SET LOCAL session_replication_role = replica")
        else:
            for table in TABLES:
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_update")
                conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {table}_no_delete")
        yield conn


def assert_caught(report: Report, *fragments: str) -> None:
    """The log fails verification, and one problem's text holds every fragment."""
    assert not report.ok, "the tampering went unnoticed"
    assert any(all(f in p for f in fragments) for p in report.problems), report.problems


# -- what the attacker does ----------------------------------------------------------------------------------
def swap(conn: Connection, table: str, column: str, key: str, a: Any, b: Any, placeholder: Any) -> None:
    """Exchange ``column`` between the rows whose ``key`` is ``a`` and ``b`` (through a placeholder, as the
    column may be unique)."""
    get = text(f"SELECT {column} FROM {table} WHERE {key} = :k")
    put = text(f"UPDATE {table} SET {column} = :v WHERE {key} = :k")
    value_a, value_b = (conn.execute(get, {"k": k}).scalar_one() for k in (a, b))
    conn.execute(put, {"v": placeholder, "k": a})
    conn.execute(put, {"v": value_a, "k": b})
    conn.execute(put, {"v": value_b, "k": a})


def forged_event(conn: Connection, like_pos: int, mac: str | None) -> dict[str, Any]:
    """A plausible event row copied from a real one: a new id and another client, re-serialised canonically.
    Its ``txid`` is the original's (PostgreSQL); drop it to get the inserting transaction's."""
    row = dict(
        conn.execute(text("SELECT * FROM audit_event WHERE pos = :p"), {"p": like_pos}).mappings().one()
    )
    body = json.loads(row.pop("body"))
    body["id"] = str(uuid.uuid4())
    body["agent"][0]["who"]["identifier"]["value"] = "mallory"
    del row["pos"]
    return {**row, "event_id": body["id"], "client_id": "mallory", "body": canonical(body), "mac": mac}


def insert_event(conn: Connection, row: dict[str, Any]) -> int:
    columns = ", ".join(row)
    values = ", ".join(f":{c}" for c in row)
    stmt = text(f"INSERT INTO audit_event ({columns}) VALUES ({values}) RETURNING pos")
    return conn.execute(stmt, row).scalar_one()


def rechain(conn: Connection, seq: int, pos: int) -> None:
    """Chain event ``pos`` at ``seq`` and recompute every later link with correct hashes, as an attacker who
    knows the scheme (but not the signing key) would."""
    select_event = "SELECT e.pos, e.recorded, e.txid, e.body FROM audit_event e"
    forged = conn.execute(text(f"{select_event} WHERE e.pos = :p"), {"p": pos}).one()
    later = conn.execute(
        text(f"{select_event} JOIN audit_chain c ON c.pos = e.pos WHERE c.seq >= :s ORDER BY c.seq"),
        {"s": seq},
    ).all()
    prev = conn.execute(text("SELECT hash FROM audit_chain WHERE seq = :s"), {"s": seq - 1}).scalar_one()
    conn.execute(text("DELETE FROM audit_chain WHERE seq >= :s"), {"s": seq})
    insert = text(
        "INSERT INTO audit_chain (seq, pos, recorded, prev_hash, hash, txid) "
        "VALUES (:seq, :pos, :recorded, :prev, :hash, :txid)"
    )
    for n, (event_pos, recorded, txid, body) in enumerate([forged, *later], start=seq):
        digest = link_hash(prev, n, body)
        conn.execute(
            insert,
            {"seq": n, "pos": event_pos, "recorded": recorded, "prev": prev, "hash": digest, "txid": txid},
        )
        prev = digest


def run_cli(url: str, *args: str) -> Result:
    """``fhir-api audit ...`` on the log's database (the keys come from the session's environment)."""
    return CliRunner().invoke(main, ["audit", *args], env={"FHIR_DATABASE_URL": url})


# -- the untouched log ---------------------------------------------------------------------------------------
def test_untouched_log_verifies_clean(log: Log) -> None:
    """No attack: every link, MAC and checkpoint holds, with or without the auditor's saved checkpoint."""
    for saved in ([], [log.checkpoint]):
        report = log.verify(saved=saved)
        assert report.ok, report.problems
        assert (report.checked, report.head_seq, report.unchained) == (EVENTS, EVENTS, 0)
        assert report.checkpoints == 1 + len(saved)


@pytest.mark.parametrize("table", TABLES)
@pytest.mark.parametrize(
    "verb", ["UPDATE", "DELETE", pytest.param("TRUNCATE", marks=postgres_only)], ids=str.lower
)
def test_triggers_refuse_changes(log: Log, table: str, verb: str) -> None:
    """An ordinary session (the app's own, or a careless admin) cannot change or remove audit rows."""
    column = A_COLUMN[table]
    sql = {
        "UPDATE": f"UPDATE {table} SET {column} = {column}",
        "DELETE": f"DELETE FROM {table}",
        "TRUNCATE": f"TRUNCATE {table}",
    }[verb]
    with pytest.raises(DBAPIError, match=f"{table} is append-only"), log.engine.begin() as conn:
        conn.exec_driver_sql(sql)
    assert log.verify().ok


# -- edits and removals --------------------------------------------------------------------------------------
def test_modified_event_body(log: Log) -> None:
    """Rewriting who did something: the client id inside one event's JSON is replaced."""
    pos = log.pos(5)
    with superuser(log.engine) as conn:
        body = conn.execute(text("SELECT body FROM audit_event WHERE pos = :p"), {"p": pos}).scalar_one()
        forged = body.replace('"value":"test-client"', '"value":"someone-else"')
        assert forged != body
        conn.execute(text("UPDATE audit_event SET body = :b WHERE pos = :p"), {"b": forged, "p": pos})
    report = log.verify()
    assert_caught(report, "seq 5: the event differs from what was chained (modified)")
    assert_caught(report, "seq 5: the event was not written by this server (MAC does not hold)")


@pytest.mark.parametrize(
    ("statement", "expected"),
    [
        ("DELETE FROM audit_event WHERE pos = :pos", "seq 7: its event row is gone (deleted)"),
        ("DELETE FROM audit_chain WHERE seq = :seq", "seq 7: links missing (found seq 8 next)"),
    ],
    ids=["event", "chain-link"],
)
def test_deleted_row(log: Log, statement: str, expected: str) -> None:
    """Hiding an access: one event row, or its chain link, is deleted from the middle of the log."""
    pos = log.pos(7)
    with superuser(log.engine) as conn:
        assert conn.execute(text(statement), {"pos": pos, "seq": 7}).rowcount == 1
    assert_caught(log.verify(), expected)


@pytest.mark.parametrize(
    ("table", "columns", "key", "expected"),
    [
        ("audit_chain", ("pos",), "seq", ["seq 4: the event differs", "seq 9: the event differs"]),
        ("audit_event", ("body", "mac"), "pos", ["seq 4: the event differs", "seq 9: the event differs"]),
        ("audit_chain", ("seq",), "pos", ["seq 4: does not follow its predecessor"]),
    ],
    ids=["chain-positions", "event-bodies", "chain-seqs"],
)
def test_reordered_rows(
    log: Log, table: str, columns: tuple[str, ...], key: str, expected: list[str]
) -> None:
    """Rearranging history: two links point at each other's events, two events (with their valid MACs)
    trade places, or two links trade sequence numbers."""
    rows = {"seq": (4, 9), "pos": (log.pos(4), log.pos(9))}[key]
    with superuser(log.engine) as conn:
        for column in columns:
            swap(conn, table, column, key, *rows, placeholder=-1 if column in ("pos", "seq") else "")
    report = log.verify()
    for fragment in expected:
        assert_caught(report, fragment)


# -- forged events -------------------------------------------------------------------------------------------
def test_forged_event_behind_the_chain(log: Log) -> None:
    """Planting an event in the past: a row slipped in below the chain head, which no chainer will link."""
    with superuser(log.engine) as conn:
        row = forged_event(conn, log.pos(3), mac=None)
        insert_event(conn, {**row, "pos": 0})  # below the head (and, on PostgreSQL, an old txid)
    assert catch_up(log.engine, key=log.key) == 0
    assert_caught(log.verify(), "1 event(s) below the chain head were never chained (inserted out of band)")


@pytest.mark.parametrize("mac", [None, "guessed"], ids=["no-mac", "wrong-mac"])
def test_forged_event_chained_like_a_real_one(log: Log, mac: str | None) -> None:
    """Planting an event the chainer then links and signs: only the MAC tells it from the server's own."""
    with superuser(log.engine) as conn:
        row = forged_event(conn, log.pos(EVENTS), mac=None)
        del row["txid"]  # the inserting transaction's, so the chainer takes it as a new event
        if mac == "guessed":
            row["mac"] = signing.event_mac(b"a key the attacker made up", row["body"])
        insert_event(conn, row)
    chain_all(log.engine, 1)
    report = log.verify()
    assert report.checked == EVENTS + 1
    assert_caught(report, f"seq {EVENTS + 1}: the event was not written by this server (MAC does not hold)")


@postgres_only
@pytest.mark.parametrize("txid", [None, 2**62], ids=["no-txid", "future-txid"])
def test_forged_event_the_chainer_never_takes(log: Log, txid: int | None) -> None:
    """Planting an event that stays outside the chain for good: PostgreSQL's chainer takes events by their
    writing transaction id, and a row without one (or with one from the far future) never qualifies."""
    with superuser(log.engine) as conn:
        insert_event(conn, {**forged_event(conn, log.pos(EVENTS), mac=None), "txid": txid})
    catch_up(log.engine, key=log.key)  # as `fhir-api audit verify` does first
    report = log.verify()
    assert not report.ok, "a forged event outside the chain went unnoticed"
    assert any("never chained" in p or "never reach" in p or "MAC" in p for p in report.problems)


@pytest.mark.parametrize("where", ["stored", "saved"])
def test_rewritten_chain_contradicts_the_checkpoint(log: Log, where: str) -> None:
    """A careful attacker inserts a forged event in the middle and recomputes every later link, so the
    chain is internally consistent; it no longer matches the head the server signed (whether the signed
    checkpoint is still in the database, or deleted there and presented by the auditor)."""
    with superuser(log.engine) as conn:
        row = forged_event(conn, log.pos(10), mac=None)
        del row["txid"]
        rechain(conn, 11, insert_event(conn, row))
        if where == "saved":
            conn.exec_driver_sql("DELETE FROM audit_checkpoint")
    saved = [log.checkpoint] if where == "saved" else []
    report = log.verify(saved=saved, macs=False)  # the checkpoint alone catches it, MACs aside
    assert report.checked == EVENTS + 1
    assert report.problems == [f"seq {EVENTS}: the chain differs from the signed checkpoint (rewritten)"]


# -- truncation and checkpoints ------------------------------------------------------------------------------
def test_truncation_after_a_checkpoint(log: Log, tmp_path: Path) -> None:
    """Cutting off the latest events, their links and every stored checkpoint: the checkpoint the auditor
    saved earlier (printed by ``fhir-api audit checkpoint``) vouches for more than is left. The CLI's verify
    passes before the attack and exits 1 after it."""
    printed = run_cli(log.url, "checkpoint")
    assert printed.exit_code == 0, printed.output
    saved = json.loads(printed.stdout)
    assert saved == log.checkpoint
    kept = tmp_path / "checkpoint.json"
    kept.write_text(printed.stdout)
    before = run_cli(log.url, "verify", "--checkpoint", str(kept))
    assert before.exit_code == 0, before.output
    assert f"verified: {EVENTS} events" in before.stdout

    cut = EVENTS - 3
    with superuser(log.engine) as conn:
        conn.execute(
            text("DELETE FROM audit_event WHERE pos IN (SELECT pos FROM audit_chain WHERE seq > :s)"),
            {"s": cut},
        )
        conn.execute(text("DELETE FROM audit_chain WHERE seq > :s"), {"s": cut})
        conn.exec_driver_sql("DELETE FROM audit_checkpoint")
    truncated = f"the chain ends at seq {cut} but a checkpoint vouches for seq {EVENTS} (truncated)"
    assert_caught(log.verify(saved=[saved]), truncated)

    after = run_cli(log.url, "verify", "--checkpoint", str(kept))
    assert after.exit_code == 1, after.output
    assert f"PROBLEM: {truncated}" in after.stderr
    assert "FAILED" in after.stdout


def _changed_hash(checkpoint: dict[str, Any], attacker: OKPKey) -> dict[str, str]:
    return {"hash": "f" * 64, "jws": checkpoint["jws"]}


def _signed_by_another_key(checkpoint: dict[str, Any], attacker: OKPKey) -> dict[str, str]:
    payload = {"seq": checkpoint["seq"], "hash": "f" * 64, "time": "2026-01-01T00:00:00.000Z"}
    return {"hash": payload["hash"], "jws": signing.sign(payload, attacker)}


def _unsigned(checkpoint: dict[str, Any], attacker: OKPKey) -> dict[str, str]:
    return {"hash": checkpoint["hash"], "jws": ""}


@pytest.mark.parametrize(
    ("forge", "expected"),
    [
        (_changed_hash, "its row differs from what was signed"),
        (_signed_by_another_key, "the signature does not hold"),
        (_unsigned, "is not signed"),
    ],
    ids=["changed-hash", "another-key", "unsigned"],
)
def test_forged_checkpoint(
    log: Log, forge: Callable[[dict[str, Any], OKPKey], dict[str, str]], expected: str
) -> None:
    """Making a checkpoint vouch for another head: its hash edited, or re-signed with a key of the
    attacker's, or its signature removed."""
    attacker = OKPKey.generate_key("Ed25519", parameters={"alg": signing.ALG})
    attacker.ensure_kid()
    forged = forge(log.checkpoint, attacker)
    with superuser(log.engine) as conn:
        conn.execute(
            text("UPDATE audit_checkpoint SET hash = :hash, jws = :jws WHERE seq = :seq"),
            {**forged, "seq": log.checkpoint["seq"]},
        )
    assert_caught(log.verify(), f"stored checkpoint at seq {EVENTS}", expected)


# -- PostgreSQL: ownership and the application's privileges --------------------------------------------------
@postgres_only
def test_tables_belong_to_the_audit_owner(log: Log) -> None:
    """The app's role does not own the audit tables, so it cannot drop or disable their triggers."""
    with log.engine.connect() as conn:
        owners = dict(
            conn.execute(
                text("SELECT tablename, tableowner FROM pg_tables WHERE tablename = ANY(:t)"),
                {"t": list(TABLES)},
            ).all()
        )
    assert owners == dict.fromkeys(TABLES, "fhir_audit_owner")


@pytest.fixture
def app_role(log: Log) -> Iterator[Engine]:
    """A fresh LOGIN role granted what migration 0008 grants the application; dropped afterwards."""
    name = f"fhir_app_test_{uuid.uuid4().hex[:12]}"
    password = uuid.uuid4().hex
    admin = create_engine(log.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE ROLE {name} LOGIN PASSWORD '{password}'")
    engine = create_engine(make_url(log.url).set(username=name, password=password))
    try:
        with admin.connect() as conn:
            for table in TABLES:
                conn.exec_driver_sql(f"GRANT SELECT, INSERT ON {table} TO {name}")
            conn.exec_driver_sql(f"GRANT USAGE ON SEQUENCE audit_event_pos_seq TO {name}")
        yield engine
    finally:
        engine.dispose()
        with admin.connect() as conn:
            conn.exec_driver_sql(f"DROP OWNED BY {name}")  # its grants in this database
            conn.exec_driver_sql(f"DROP ROLE {name}")
        admin.dispose()


@postgres_only
@pytest.mark.parametrize("table", TABLES)
def test_app_role_may_only_append(app_role: Engine, log: Log, table: str) -> None:
    """A compromised application (its own database role) may read and append, but cannot change or remove
    rows, nor switch the triggers off."""
    with app_role.begin() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one() > 0
        conn.exec_driver_sql(f"INSERT INTO {table} SELECT * FROM {table} WHERE false")  # allowed
    column = A_COLUMN[table]
    refused = [
        f"UPDATE {table} SET {column} = {column}",
        f"DELETE FROM {table}",
        f"TRUNCATE {table}",
        f"ALTER TABLE {table} DISABLE TRIGGER ALL",
        "SET session_replication_role = replica",
    ]
    for sql in refused:
        with pytest.raises(DBAPIError, match=r"permission denied|must be owner"), app_role.begin() as conn:
            conn.exec_driver_sql(sql)
    assert log.verify().ok
