"""The SQLite command log's own file: where it is, what survives a restart, and the move of
the lines an older version kept in the message database."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from mailproxy.model import CommandEntry
from mailproxy.store.sqlite import SqliteStore
from mailproxy.store.sqlite_commands import log_path
from mailproxy.vault import Vault


def _entry(ts: int, endpoint: str = "POST /commands/add-messages") -> CommandEntry:
    return CommandEntry(command_ts=ts, endpoint=endpoint, tenant_id="acme",
                        payload={"messages": [{"id": f"m{ts}", "body": "x" * 100}]},
                        response_status=200)


def _legacy_lines(db: Path, lines: list[tuple[int, int]]) -> None:
    """Lines (id, ts) written into the message database's own table, as versions before
    the log had its file kept them."""
    with sqlite3.connect(db) as conn:
        conn.executemany(
            "INSERT INTO command_log (id, command_ts, endpoint, tenant_id, payload,"
            " response_status) VALUES (?, ?, 'PUT /tenant', 'acme', ?, 200)",
            [(i, ts, json.dumps({"id": "acme", "n": i})) for i, ts in lines])
    conn.close()


async def _schema_only(tmp_path: Path, cipher: Vault) -> Path:
    """A database (and log file) with the schema and nothing in it, as any version leaves."""
    db = tmp_path / "mail.db"
    store = SqliteStore(str(db), cipher)
    await store.open()
    await store.close()
    return db


async def _all_lines(store: SqliteStore) -> tuple[int, list[CommandEntry]]:
    return await store.list_commands(tenant_id=None, since_ts=None, until_ts=None,
                                     endpoint=None, limit=10, offset=0)


def _lines_in(path: Path | str) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM command_log").fetchone()[0])
    finally:
        conn.close()


async def test_lines_live_beside_the_database_and_survive_a_restart(
        tmp_path: Path, cipher: Vault) -> None:
    db = tmp_path / "mail.db"
    store = SqliteStore(str(db), cipher)
    await store.open()
    for ts in (100, 101, 102):
        await store.log_commands([_entry(ts)])
    await store.close()

    assert log_path(str(db)) == str(db) + ".commands"
    assert _lines_in(log_path(str(db))) == 3
    assert _lines_in(db) == 0  # the message database holds no second copy of the bodies

    again = SqliteStore(str(db), cipher)
    await again.open()
    try:
        total, found = await _all_lines(again)
        assert total == 3
        assert [e.command_ts for e in found] == [102, 101, 100]
        assert found[0].payload == _entry(102).payload
    finally:
        await again.close()


async def test_lines_of_the_message_database_are_moved_with_their_ids(
        tmp_path: Path, cipher: Vault) -> None:
    db = await _schema_only(tmp_path, cipher)
    Path(log_path(str(db))).unlink()  # as before the log had a file
    _legacy_lines(db, [(i, 1000 + i) for i in range(1, 1203)])  # more than one move step

    store = SqliteStore(str(db), cipher)
    await store.open()
    try:
        assert _lines_in(db) == 0
        await store.log_commands([_entry(5000)])
        total, found = await store.list_commands(tenant_id="acme", since_ts=None,
                                                 until_ts=None, endpoint=None, limit=2,
                                                 offset=0)
        assert total == 1203
        assert found[0].command_ts == 5000 and found[0].id > 1202  # ids go on after the moved
        assert (found[1].id, found[1].payload) == (1202, {"id": "acme", "n": 1202})
        exported = await store.export_commands(tenant_id=None, since_ts=None, until_ts=None)
        assert [e.id for e in exported[:3]] == [1, 2, 3]
    finally:
        await store.close()


async def test_a_move_cut_short_is_finished_without_repeating_a_line(
        tmp_path: Path, cipher: Vault) -> None:
    db = await _schema_only(tmp_path, cipher)
    # Cut short: the first lines already copied into the log file, not yet deleted here.
    _legacy_lines(db, [(1, 10), (2, 11), (3, 12)])
    with sqlite3.connect(log_path(str(db))) as conn:
        conn.execute("INSERT INTO command_log (id, command_ts, endpoint, tenant_id, payload,"
                     " response_status) VALUES (1, 10, 'PUT /tenant', 'acme', ?, 200)",
                     (json.dumps({"id": "acme", "n": 1}),))
    conn.close()

    again = SqliteStore(str(db), cipher)
    await again.open()
    try:
        total, found = await _all_lines(again)
        assert total == 3
        assert [e.id for e in found] == [3, 2, 1]
        assert _lines_in(db) == 0
    finally:
        await again.close()


async def test_a_line_that_cannot_be_encoded_is_left_out_not_the_others(
        cipher: Vault, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(":memory:", cipher)
    await store.open()
    try:
        bad = CommandEntry(command_ts=1, endpoint="POST /x", tenant_id=None,
                           payload={"x": object()}, response_status=200)
        await store.log_commands([_entry(2), bad, _entry(3)])
        total, found = await _all_lines(store)
        assert [e.command_ts for e in found] == [3, 2] and total == 2
        assert "command log line of POST /x left out" in caplog.text
    finally:
        await store.close()


async def test_ids_go_on_after_every_id_the_database_gave(
        tmp_path: Path, cipher: Vault) -> None:
    """Lines pruned before the move leave their ids used: a client has seen them."""
    db = await _schema_only(tmp_path, cipher)
    Path(log_path(str(db))).unlink()
    _legacy_lines(db, [(i, 10 + i) for i in range(1, 6)])
    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM command_log")  # all pruned by retention
    conn.close()
    store = SqliteStore(str(db), cipher)
    await store.open()
    try:
        await store.log_commands([_entry(100)])
        _, found = await _all_lines(store)
        assert [e.id for e in found] == [6]
    finally:
        await store.close()


async def test_lines_an_earlier_release_wrote_after_a_downgrade_are_kept(
        tmp_path: Path, cipher: Vault) -> None:
    """After a move, a downgraded release writes into the database's table again, with ids
    the log file has given to other lines meanwhile: those lines get new ids, not lost."""
    db = await _schema_only(tmp_path, cipher)
    store = SqliteStore(str(db), cipher)
    await store.open()
    await store.log_commands([_entry(100), _entry(101)])  # ids 1 and 2 in the log file
    await store.close()
    _legacy_lines(db, [(1, 200), (2, 201)])  # the downgraded release's own ids 1 and 2
    again = SqliteStore(str(db), cipher)
    await again.open()
    try:
        total, found = await _all_lines(again)
        assert total == 4
        assert sorted((e.command_ts, e.endpoint) for e in found) == [
            (100, "POST /commands/add-messages"), (101, "POST /commands/add-messages"),
            (200, "PUT /tenant"), (201, "PUT /tenant")]
        assert len({e.id for e in found}) == 4
        assert _lines_in(db) == 0
    finally:
        await again.close()
