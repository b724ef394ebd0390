"""The usage history on disk and in Snowflake: kill -9 loses at most one interval and never double-counts, the
export MERGE is idempotent against the recording fake Snowflake, the SQL parses as Snowflake's, node time is
apportioned by busy time, and budgets roll over by UTC day and month."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlglot
from prometheus_client import CollectorRegistry
from sqlglot import expressions as exp

from spcs_llm.engines.base import Usage
from spcs_llm.errors import BudgetExceeded
from spcs_llm.usage import sql
from spcs_llm.usage.budgets import Budgets, period_bounds
from spcs_llm.usage.export import Exporter, in_spcs, spcs_setup, spcs_table
from spcs_llm.usage.meter import Attribution, current
from spcs_llm.usage.service import IDLE_USER, UsageService, interval_rows
from spcs_llm.usage.settings import BudgetSettings, UsageSettings
from spcs_llm.usage.store import StoreError, UsageStore, check_location

from .fake_snowflake import FakeSnowflakeError
from .fake_usage_snowflake import FakeSnowflakeWithUsage

SRC = Path(__file__).resolve().parents[2] / "src"
KEYS_PER_INTERVAL = 300

WRITER = textwrap.dedent(f"""
    import sys
    from prometheus_client import CollectorRegistry
    from spcs_llm.usage.meter import Attribution
    from spcs_llm.usage.service import UsageService
    from spcs_llm.usage.settings import UsageSettings

    service = UsageService(UsageSettings(db_path=sys.argv[1]), [], CollectorRegistry())
    n = 0
    while True:
        for k in range({KEYS_PER_INTERVAL}):
            service.meter.rows(Attribution(f"user{{k}}", "ROLE", f"q{{n}}", "complete", "m"), 1, 0)
        service.flush()
        n += 1
        print(n, flush=True)
""")


def test_kill_9_loses_at_most_the_last_interval_and_never_double_counts(tmp_path: Path) -> None:
    db = tmp_path / "usage.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(db)], stdout=subprocess.PIPE, env=env, text=True)
    acked = 0
    try:
        assert proc.stdout is not None
        while acked < 5:  # let it write a few intervals, then kill it in the middle of whatever it does
            line = proc.stdout.readline()
            assert line, "the writer died"
            acked = int(line)
        time.sleep(random.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        acked = max([acked, *(int(x) for x in proc.stdout.read().split())])
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # (each interval also holds one idle-time row: these rows cost no engine time)
    rows = (
        sqlite3.connect(db)
        .execute("SELECT flush_id, COUNT(*), SUM(rows) FROM usage WHERE user != ? GROUP BY flush_id", (IDLE_USER,))
        .fetchall()
    )
    assert all(count == KEYS_PER_INTERVAL and total == KEYS_PER_INTERVAL for _, count, total in rows)  # no halves
    assert acked <= len(rows) <= acked + 1  # every acknowledged interval is there; at most the one in flight more
    (total,) = sqlite3.connect(db).execute("SELECT SUM(rows) FROM usage").fetchone()
    assert total == KEYS_PER_INTERVAL * len(rows)  # nothing counted twice


def _store_with_history(tmp_path: Path, intervals: int = 3) -> UsageService:
    service = UsageService(UsageSettings(db_path=tmp_path / "u.db", credits_per_node_hour=1.0), [], CollectorRegistry())
    for i in range(intervals):
        for attr, rows, errors in (
            (Attribution("O'BRIEN\\X", "ANALYST", f"q{i}", "complete"), 2, 1),
            (Attribution("BOB", "", "", "chat.completions"), 1, 0),
        ):
            token = current.set(attr)
            service.meter.engine_call("fake-model", Usage(7, 3, 1), 0.5)
            current.reset(token)
            service.meter.rows(attr, rows, errors)
        service.flush()
    return service


def _deployed() -> FakeSnowflakeWithUsage:
    fake = FakeSnowflakeWithUsage()
    for statement in sql.deploy_statements("DB", "SCH"):
        fake.cursor().execute(statement)
    return fake


def test_export_merges_each_row_once_even_when_retried(tmp_path: Path) -> None:
    service = _store_with_history(tmp_path)
    store = service.store
    fake = _deployed()
    exporter = Exporter(lambda: fake, "DB.SCH.SPCS_LLM_USAGE", batch_rows=4)
    local = store.unexported(1000)
    assert exporter.export_pending(store) == len(local) == 6  # two MERGEs of at most 4 rows
    assert exporter.export_pending(store) == 0  # nothing new: no statement
    table = fake.rows_of("DB.SCH.SPCS_LLM_USAGE")
    assert sorted((r["FLUSH_ID"], r["USER_NAME"], r["ROW_COUNT"], r["ERRORS"]) for r in table) == sorted(
        (r["flush_id"], r["user"], r["rows"], r["errors"]) for r in local
    )
    assert {r["USER_NAME"] for r in table} == {"O'BRIEN\\X", "BOB"}  # quotes and backslashes survive

    # the acknowledgement of a MERGE is lost: nothing is marked, the retry re-sends it and inserts nothing twice
    service.meter.rows(Attribution("CAROL", "OPS", "q9", "complete", "fake-model"), 5, 0)  # + an idle row
    service.flush()
    fake.lose_ack_on = r"^MERGE"
    with pytest.raises(FakeSnowflakeError):
        exporter.export_pending(store)
    assert len(store.unexported()) == 2
    assert exporter.export_pending(store) == 2
    assert len(fake.rows_of("DB.SCH.SPCS_LLM_USAGE")) == 8
    assert sum(r["ROW_COUNT"] for r in fake.rows_of("DB.SCH.SPCS_LLM_USAGE")) == 2 * 3 + 3 + 5

    # a refused MERGE (no privilege, no warehouse): nothing in the table, the rows wait for the next try
    service.meter.rows(Attribution("DAN", "OPS", "q10", "complete", "fake-model"), 1, 0)
    service.flush()
    fake.fail_on = r"^MERGE"
    with pytest.raises(FakeSnowflakeError):
        exporter.export_pending(store)
    fake.fail_on = None
    assert exporter.export_pending(store) == 2
    assert len(fake.rows_of("DB.SCH.SPCS_LLM_USAGE")) == 10
    assert sum("MERGE" in s for s in fake.statements) == 6  # 2 + lost ack 1 + its retry 1 + refused 1 + retry 1
    store.close()


def test_export_into_a_missing_table_fails_like_snowflake(tmp_path: Path) -> None:
    service = _store_with_history(tmp_path, intervals=1)
    with pytest.raises(FakeSnowflakeError, match="does not exist"):
        Exporter(lambda: FakeSnowflakeWithUsage(), "DB.SCH.SPCS_LLM_USAGE").export_pending(service.store)
    assert len(service.store.unexported()) == 2
    service.store.close()


def test_the_service_exports_what_it_flushes_when_it_stops(tmp_path: Path) -> None:
    fake = _deployed()
    service = UsageService(
        UsageSettings(db_path=tmp_path / "u.db"),
        [],
        CollectorRegistry(),
        exporter=Exporter(lambda: fake, "DB.SCH.SPCS_LLM_USAGE"),
    )
    service.meter.rows(Attribution("ALICE", "ANALYST", "q", "complete", "m"), 4, 0)
    import asyncio

    asyncio.run(service.stop())
    assert [r["ROW_COUNT"] for r in fake.rows_of("DB.SCH.SPCS_LLM_USAGE") if r["USER_NAME"] == "ALICE"] == [4]


def test_the_service_creates_its_table_when_deploy_did_not(tmp_path: Path) -> None:
    env = {"SNOWFLAKE_DATABASE": "DB", "SNOWFLAKE_SCHEMA": "SCH"}
    service = _store_with_history(tmp_path, intervals=1)
    fake = FakeSnowflakeWithUsage()
    exporter = Exporter(lambda: fake, spcs_table(UsageSettings(), env), setup=spcs_setup(UsageSettings(), env))
    assert exporter.export_pending(service.store) == 2
    assert len(fake.rows_of("DB.SCH.SPCS_LLM_USAGE")) == 2 and "DB.SCH.USAGE_HISTORY" in fake.views
    fake.views["DB.SCH.USAGE_HISTORY"] = "kept"
    again = Exporter(lambda: fake, "DB.SCH.SPCS_LLM_USAGE", setup=spcs_setup(UsageSettings(), env))
    service.meter.rows(Attribution("X", "", "", "f", "m"), 1, 0)
    service.flush()
    assert again.export_pending(service.store) == 2  # a row and its interval's idle row
    assert fake.views["DB.SCH.USAGE_HISTORY"] == "kept"  # IF NOT EXISTS: an existing view is left alone
    assert len(fake.rows_of("DB.SCH.SPCS_LLM_USAGE")) == 4
    service.store.close()


def test_spcs_detection_and_table_name(tmp_path: Path) -> None:
    token = tmp_path / "token"
    env = {
        "SNOWFLAKE_HOST": "acct.snowflakecomputing.com",
        "SNOWFLAKE_DATABASE": "LLM_DB",
        "SNOWFLAKE_SCHEMA": "SERVING",
        "SNOWFLAKE_ACCOUNT": "ACCT",
    }
    assert not in_spcs(env, token)
    token.write_text("t0k3n")
    assert in_spcs(env, token)
    assert not in_spcs({}, token)
    assert spcs_table(UsageSettings(), env) == "LLM_DB.SERVING.SPCS_LLM_USAGE"
    assert spcs_table(UsageSettings(export_table="usage log"), env) == 'LLM_DB.SERVING."usage log"'


def test_sql_parses_as_snowflake_and_the_view_is_shaped_like_cortex() -> None:
    table, view = sql.deploy_statements("DB", "SCH")
    assert isinstance(sqlglot.parse_one(table, read="snowflake"), exp.Create)
    tree = sqlglot.parse_one(view, read="snowflake")
    assert isinstance(tree, exp.Create) and tree.args["kind"] == "VIEW"
    columns = [e.alias_or_name for e in tree.expression.expressions]
    cortex = [
        "START_TIME",
        "END_TIME",
        "FUNCTION_NAME",
        "MODEL_NAME",
        "QUERY_ID",
        "WAREHOUSE_ID",
        "TOKENS",
        "TOKEN_CREDITS",
    ]
    assert set(cortex) | {"USER_NAME", "ROLE_NAME"} <= set(columns)
    merge = sql.merge_sql(
        "DB.SCH.SPCS_LLM_USAGE",
        [
            {
                "flush_id": "p-1",
                "start_time": 1.0,
                "end_time": 2.5,
                "user": "it's",
                "role": "",
                "query_id": "q",
                "function": "complete",
                "model": "m",
                "rows": 1,
                "input_tokens": 2,
                "output_tokens": 3,
                "cached_tokens": 0,
                "busy_seconds": 0.25,
                "errors": 0,
                "engine_calls": 1,
                "node_seconds": 1.5,
                "credits": None,
            }
        ],
    )
    assert isinstance(sqlglot.parse_one(merge, read="snowflake"), exp.Merge)
    assert sql.literal(float("nan")) == "NULL" and sql.literal("a\\'b") == "'a\\\\''b'"


def test_node_time_is_apportioned_by_engine_busy_time() -> None:
    settings = UsageSettings(credits_per_node_hour=3.6)
    pending = {
        ("A", "R1", "q1", "complete", "m"): [10, 100, 50, 0, 3.0, 0, 10],
        ("B", "R2", "q2", "complete", "m"): [5, 10, 5, 0, 1.0, 0, 5],
        ("C", "R2", "q3", "complete", "m"): [7, 0, 0, 0, 0.0, 0, 0],
    }  # answered from the cache only
    rows = {r[3]: r for r in interval_rows("p-1", 1000.0, 1100.0, pending, settings)}
    assert rows["A"][15] == pytest.approx(75.0) and rows["A"][16] == pytest.approx(0.075)
    assert rows["B"][15] == pytest.approx(25.0) and rows["B"][16] == pytest.approx(0.025)
    assert rows["C"][15] == 0 and rows["C"][16] == 0
    idle = interval_rows("p-2", 1100.0, 1400.0, {}, settings)
    assert [(r[3], r[15], r[16]) for r in idle] == [(IDLE_USER, 300.0, pytest.approx(0.3))]
    half = interval_rows("p-3", 0.0, 100.0, {}, UsageSettings(node_share=0.5))
    assert half[0][15] == 50.0 and half[0][16] is None  # no rate configured: no credit estimate


def test_budgets_roll_over_by_utc_day_and_month_and_split_across_instances() -> None:
    now = [datetime(2026, 1, 31, 23, 59, tzinfo=UTC).timestamp()]
    budgets = Budgets(
        [BudgetSettings(role="analyst", tokens=100), BudgetSettings(tokens=1000, period="month")],
        instances=2,
        clock=lambda: now[0],
    )
    analyst = ("ALICE", "ANALYST", "q", "complete", "m")
    other = ("BOB", "OPS", "q", "complete", "m")
    assert [b.limit for b in budgets.items] == [50, 500]
    budgets.spend(analyst, 50)
    with pytest.raises(BudgetExceeded):
        budgets.check(analyst)
    budgets.check(other)  # the day budget covers the analyst role only
    now[0] += 120  # past UTC midnight, and into February
    budgets.check(analyst)
    assert [b.spent for b in budgets.items] == [0, 0]
    assert period_bounds("month", datetime(2024, 2, 10, tzinfo=UTC).timestamp()) == (
        datetime(2024, 2, 1, tzinfo=UTC).timestamp(),
        datetime(2024, 3, 1, tzinfo=UTC).timestamp(),
    )


def test_a_stage_volume_is_refused(tmp_path: Path) -> None:
    mounts = "overlay / overlay rw 0 0\nstagefs /stage fuse.snowflake rw 0 0\n/dev/sdb /data ext4 rw 0 0\n"
    with pytest.raises(StoreError, match="stage volume"):
        check_location(Path("/stage/usage/usage.sqlite3"), mounts)
    check_location(Path("/data/usage.sqlite3"), mounts)
    check_location(Path("/stagefoo/usage.sqlite3"), mounts)  # a prefix of the name is not the mount
    UsageStore(tmp_path / "deep" / "dir" / "u.db").close()  # parents are created


def test_cli_prints_a_table_and_one_line_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from spcs_llm.cli import main

    service = _store_with_history(tmp_path)
    service.store.close()
    assert main(["usage", "--db", str(tmp_path / "u.db"), "--since", "7d", "--by", "role"]) == 0
    out = capsys.readouterr().out
    assert "ANALYST" in out and "in tokens" in out and "est. credits" in out
    assert main(["usage", "--db", str(tmp_path / "u.db"), "--by", "user", "--format", "csv"]) == 0
    assert "O'BRIEN\\X" in capsys.readouterr().out
    assert main(["usage", "--db", str(tmp_path / "u.db"), "--by", "colour"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot group by colour" in err
    assert main(["usage", "--db", str(tmp_path / "missing.db")]) == 2
    assert "no usage history" in capsys.readouterr().err


def _spend(service: UsageService, attr: Attribution, tokens: int) -> None:
    token = current.set(attr)
    try:
        service.meter.check("fake-model")
        service.meter.engine_call("fake-model", Usage(tokens, 0, 0), 0.1)
    finally:
        current.reset(token)


def test_instances_share_budgets_through_the_exported_table(tmp_path: Path) -> None:
    """Two instances (and a restarted one with an empty local disk) see each other's spending through the
    Snowflake table: each counts its own tokens at once and the others' as of the last sync."""
    fake = _deployed()
    budgets = [BudgetSettings(role="ANALYST", tokens=100)]

    def instance(name: str) -> UsageService:
        return UsageService(
            UsageSettings(db_path=tmp_path / name / "u.db", budget_instances=4),
            budgets,
            CollectorRegistry(),
            exporter=Exporter(lambda: fake, "DB.SCH.SPCS_LLM_USAGE"),
        )

    a, b = instance("a"), instance("b")
    assert [x.limit for x in a.budgets.items] == [100]  # shared through the table: the whole allowance
    analyst = Attribution("ALICE", "ANALYST", "q", "complete")
    _spend(a, analyst, 60)
    a.flush()
    a.export_and_sync()
    _spend(b, analyst, 30)
    b.flush()
    b.export_and_sync()  # b now knows a's 60
    assert b.budgets.status()[0]["spent"] == 90
    _spend(b, analyst, 15)  # 90 < 100: allowed, and now 105
    with pytest.raises(BudgetExceeded):
        _spend(b, analyst, 1)
    _spend(b, Attribution("BOB", "OPS", "q", "complete"), 5)  # not covered
    a.export_and_sync()  # a learns b's 30 (b's last 15 is not flushed yet): 90 < 100, still allowed
    _spend(a, analyst, 1)
    b.flush()
    b.export_and_sync()
    a.flush()
    a.export_and_sync()
    with pytest.raises(BudgetExceeded):
        _spend(a, analyst, 1)
    restarted = instance("c")  # a new process on a fresh disk
    restarted.export_and_sync()
    with pytest.raises(BudgetExceeded):
        _spend(restarted, analyst, 1)
    assert restarted.budgets.status()[0]["spent"] == 60 + 30 + 15 + 1
    for s in (a, b, restarted):
        s.store.close()


def test_without_the_connector_inside_spcs_the_history_stays_local(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from spcs_llm.usage import build

    monkeypatch.setattr(build, "in_spcs", lambda: True)
    monkeypatch.setattr(build, "_connector_installed", lambda: False)
    service = build.build_usage(UsageSettings(db_path=tmp_path / "u.db"), [], CollectorRegistry())
    assert service is not None and service.exporter is None
    service.store.close()
    from spcs_llm.config import ConfigError

    with pytest.raises(ConfigError, match="snowflake-connector-python"):
        build.build_usage(UsageSettings(db_path=tmp_path / "u.db", export="on"), [], CollectorRegistry())
