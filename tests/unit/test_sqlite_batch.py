"""Many rows per statement: every row stored once, in order, in few statements."""

from __future__ import annotations

import sqlite3

import pytest

from mailproxy.store.sqlite_batch import InList, MultiRowInsert, chunk_sizes

INSERT = "INSERT INTO t (a, b, c) VALUES (:a, :b, :a || :b);"


def table() -> sqlite3.Connection:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE TABLE t (seq INTEGER PRIMARY KEY, a TEXT, b INTEGER, c TEXT)")
    return conn


def statements(conn: sqlite3.Connection) -> list[str]:
    seen: list[str] = []
    conn.set_trace_callback(seen.append)
    return seen


@pytest.mark.parametrize("total", [0, 1, 2, 3, 7, 1000, 1024, 1025, 2500])
def test_chunk_sizes_add_up_and_are_few_powers_of_two(total: int) -> None:
    sizes = list(chunk_sizes(total, 1024))
    assert sum(sizes) == total
    assert all(size & (size - 1) == 0 and 1 <= size <= 1024 for size in sizes)
    assert len(sizes) <= total // 1024 + 11


def test_chunk_sizes_respect_a_limit_that_is_not_a_power_of_two() -> None:
    assert list(chunk_sizes(10, 3)) == [2, 2, 2, 2, 2]
    assert list(chunk_sizes(3, 0)) == [1, 1, 1]


def test_a_thousand_rows_go_in_order_in_a_handful_of_statements() -> None:
    conn = table()
    seen = statements(conn)
    MultiRowInsert(INSERT).run(conn, [{"a": f"r{i}", "b": i} for i in range(1000)])
    assert len([s for s in seen if s.startswith("INSERT")]) <= 6
    got = conn.execute("SELECT a, b, c FROM t ORDER BY seq").fetchall()
    assert got == [(f"r{i}", i, f"r{i}{i}") for i in range(1000)]


def test_the_database_limit_on_parameters_splits_the_rows() -> None:
    conn = table()
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 10)  # three rows of three names
    seen = statements(conn)
    MultiRowInsert(INSERT).run(conn, [{"a": "x", "b": i} for i in range(7)])
    # the trace shows each statement with its values bound
    assert [s.count("('x'") for s in seen if s.startswith("INSERT")] == [2, 2, 2, 1]
    assert [b for (b,) in conn.execute("SELECT b FROM t ORDER BY seq")] == list(range(7))


def test_no_rows_run_no_statement() -> None:
    conn = table()
    seen = statements(conn)
    MultiRowInsert(INSERT).run(conn, [])
    assert seen == []


@pytest.mark.parametrize("sql", [
    "UPDATE t SET a = :a",
    "INSERT INTO t (a) VALUES (:a) ON CONFLICT DO NOTHING",
    "INSERT INTO t (a) VALUES (:a) RETURNING seq",
    "INSERT INTO t (a, b) VALUES (:a, 'x:y')",
    "INSERT INTO t (a) SELECT :a",
])
def test_only_plain_insert_values_statements_are_taken(sql: str) -> None:
    with pytest.raises(ValueError):
        MultiRowInsert(sql)


def test_an_in_list_is_cut_to_fit_the_parameter_limit() -> None:
    conn = table()
    conn.executemany("INSERT INTO t (a, b) VALUES (?, ?)", [(f"r{i}", i % 2) for i in range(50)])
    conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 9)  # 8 values beside the one fixed
    query = InList("SELECT a FROM t WHERE b = ? AND a IN")
    wanted = [f"r{i}" for i in range(0, 50, 3)] + ["absent"]
    parts = list(query.parts(conn, wanted, fixed=1))
    assert [len(p) for p in parts] == [8, 8, 2]
    assert [v for p in parts for v in p] == wanted
    found = [a for p in parts for (a,) in conn.execute(query.text(len(p)), (1, *p))]
    assert sorted(found) == sorted(f"r{i}" for i in range(0, 50, 3) if i % 2 == 1)
    with pytest.raises(ValueError):
        InList("SELECT a FROM t WHERE a = ?")
