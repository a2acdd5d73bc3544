"""What only the PostgreSQL store has, against a real server (started by tests/pg.py):
redacted URLs, the schema in logagg_meta, delta rows and folds under an advisory lock,
amcheck, lost connections; then real `logagg` processes: re-ingest, four writers, kill -9,
a server restart mid-ingest, a refused password, copying a store between backends, and
`logagg serve`. The contract both backends keep is in test_store_contract.py.

Every test gets a schema of its own in one shared database (`pg_url`); a test that needs
what is database-wide gets a whole database (`pg_database_url`); both are dropped after.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import psycopg
import pytest
from conftest import check_store, event, logagg_cmd, run_logagg, write_jsonl
from helpers import (
    SEED,
    assert_one_line_error,
    counters,
    generated,
    listed_keys,
    pg_sql,
    row,
    wait_until,
)
from pg import PASSWORD, PgServer, admin_execute, as_user, schema_of, with_options
from serving import ServeProcess

from logagg.errors import SchemaVersionError, StoreError
from logagg.gen import generate
from logagg.store import EventQuery
from logagg.store import postgres as pgstore
from logagg.store.postgres import PostgresStore, describe, redact

# --- PostgreSQL only ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:pw-123@db.example:5432/logs", "postgresql://u:***@db.example:5432/logs"),
        ("postgres://u@db/logs", "postgres://u@db/logs"),
        ("postgresql://db:5432/logs", "postgresql://db:5432/logs"),
        ("postgresql://u:p%40ss-word@db/logs", "postgresql://u:***@db/logs"),
        ("postgresql://u:p@ss/wd@db/logs", "postgresql://u:***@db/logs"),
        (
            "postgresql://db/logs?sslmode=require&password=hunter22&x=1",
            "postgresql://db/logs?sslmode=require&password=***&x=1",
        ),
    ],
)
def test_redact_hides_every_form_of_password(url: str, shown: str) -> None:
    assert redact(url) == shown


def test_a_message_quoting_the_url_never_shows_the_password() -> None:
    url = "postgresql://u:hunter22@db/logs"
    message = describe(psycopg.OperationalError(f"bad dsn {url} and hunter22 again"), url)
    assert "hunter22" not in message
    assert message.startswith("postgresql://u:***@db/logs: ")
    assert "\n" not in message


def test_the_schema_is_versioned_in_logagg_meta(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
    meta = dict(pg_sql(pg_url, "SELECT key, value FROM logagg_meta"))
    assert meta["schema_version"] == str(pgstore.SCHEMA_VERSION)
    assert meta["created_at"].endswith("Z")


def test_each_test_has_an_empty_schema_of_its_own_and_none_is_left_behind(pg_url: str) -> None:
    """What the fixtures promise: logagg's tables go into this test's schema, which starts
    empty, and the schemas of the tests before were dropped."""
    schema = schema_of(pg_url)
    assert pg_sql(pg_url, "SELECT current_schema()") == [(schema,)]
    in_schema = "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1"
    assert pg_sql(pg_url, in_schema, [schema]) == []
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
    assert [t for (t,) in pg_sql(pg_url, in_schema, [schema])] == sorted(
        ["logagg_meta", *pgstore.TABLES]
    )
    others = "SELECT nspname FROM pg_namespace WHERE nspname LIKE 's\\_%%' AND nspname <> %s"
    assert pg_sql(pg_url, others, [schema]) == []


def test_several_openers_of_a_new_database_create_one_schema(pg_url: str) -> None:
    errors: list[BaseException] = []

    def opener() -> None:
        try:
            with PostgresStore.open(pg_url) as store:
                store.write_batch([row(1)])
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=opener) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    with PostgresStore.open(pg_url, create=False) as store:
        assert counters(store) == (6, 1, 5, 0)


@pytest.mark.parametrize("where", ["pg_url", "pg_database_url"], ids=["schema", "database"])
def test_a_database_without_a_store_is_not_created_for_reading(
    request: pytest.FixtureRequest, where: str
) -> None:
    url: str = request.getfixturevalue(where)
    with pytest.raises(StoreError, match="no logagg store in this database") as caught:
        PostgresStore.open(url, create=False)
    assert PASSWORD not in str(caught.value)
    assert pg_sql(url, "SELECT to_regclass('logagg_meta')") == [(None,)]


def test_tables_of_another_application_are_refused_and_left_alone(pg_url: str) -> None:
    pg_sql(pg_url, "CREATE TABLE events (name text)")
    pg_sql(pg_url, "INSERT INTO events VALUES ('ada')")
    with pytest.raises(SchemaVersionError, match="'events'"):
        PostgresStore.open(pg_url)
    assert pg_sql(pg_url, "SELECT name FROM events") == [("ada",)]
    assert pg_sql(pg_url, "SELECT to_regclass('logagg_meta')") == [(None,)]


def test_a_name_with_u0000_never_reaches_a_store(pg_url: str) -> None:
    """U+0000 in a name is refused when the event is validated, so no store sees it."""
    for fields in ({"topic": "a\u0000b"}, {"source": "x\u0000"}, {"event_id": "e\u0000"}):
        with pytest.raises(ValueError, match="U\\+0000"):
            row(2, **fields)


def test_stats_reads_no_events(pg_url: str, pg_server: PgServer) -> None:
    """A role that may not read `events` still gets stats (and not a listing)."""
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(n, f"t{n % 2}") for n in range(10)])
    role = f"reader_{os.getpid()}_{time.monotonic_ns()}"
    schema = schema_of(pg_url)
    admin_execute(pg_server, f"CREATE ROLE {role} LOGIN PASSWORD 'reader-pw'")
    try:
        pg_sql(pg_url, f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        pg_sql(pg_url, f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
        pg_sql(pg_url, f"REVOKE SELECT ON events FROM {role}")
        with PostgresStore.open(as_user(pg_url, role, "reader-pw"), create=False) as reader:
            s = reader.stats()
            assert (s.counters.accepted, {t: x.events for t, x in s.topics.items()}) == (
                10,
                {"t0": 5, "t1": 5},
            )
            with pytest.raises(StoreError, match="permission denied"):
                list(reader.events(EventQuery(topic="t0")))
    finally:
        pg_sql(pg_url, f"DROP OWNED BY {role}")
        admin_execute(pg_server, f"DROP ROLE {role}")


def test_deltas_are_folded_and_stats_stay_exact(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        for n in range(pgstore.FOLD_EVERY + 3):
            store.write_batch([row(n, f"t{n % 2}"), row(n, f"t{n % 2}")], invalid=1)
        # the commit after FOLD_EVERY commits folded first: three delta rows are left
        assert pg_sql(pg_url, "SELECT count(*) FROM counter_deltas") == [(3,)]
        assert pg_sql(pg_url, "SELECT received, accepted FROM counters") == [(48, 16)]
        assert counters(store) == (3 * 19, 19, 19, 19)
    assert pg_sql(pg_url, "SELECT count(*) FROM counter_deltas") == [(0,)]  # folded on close
    assert pg_sql(pg_url, "SELECT count(*) FROM topic_deltas") == [(0,)]
    assert pg_sql(pg_url, "SELECT received, accepted FROM counters") == [(57, 19)]
    with PostgresStore.open(pg_url) as store:
        assert store.stats().topics["t0"].events == 10
        assert store.check().ok


def test_writers_wait_neither_for_each_other_nor_for_a_fold(pg_url: str) -> None:
    """Another writer's uncommitted rows and deltas in the same topic, and a fold holding
    the base counter and topic rows: this writer waits for none of them (any lock wait
    fails at once here), and the counts are exact once they commit."""
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(0, "t")])  # folded on close: the base rows exist
    when = "2025-01-01T00:00:00.000000Z"
    other = psycopg.connect(pg_url)  # a transaction left open
    try:
        other.execute("SELECT pg_advisory_xact_lock(%s)", [pgstore.LOCK_FOLD])
        other.execute("SELECT * FROM counters FOR UPDATE")
        other.execute("SELECT * FROM topics FOR UPDATE")
        other.execute(
            'INSERT INTO events (topic, event_id, "timestamp", source, payload, ingested_at)'
            " VALUES ('t', 'held', %s, 's', '{}', %s)",
            [when, when],
        )
        other.execute(
            "INSERT INTO topic_deltas (topic, events, first_timestamp, last_timestamp)"
            " VALUES ('t', 1, %s, %s)",
            [when, when],
        )
        other.execute(
            "INSERT INTO counter_deltas (received, accepted, duplicates, invalid, at)"
            " VALUES (1, 1, 0, 0, %s)",
            [when],
        )
        impatient = with_options(pg_url, "-c lock_timeout=200")
        with PostgresStore.open(impatient) as store:
            for n in range(1, pgstore.FOLD_EVERY + 2):  # the last one tries to fold first
                store.write_batch([row(n, "t")])
            assert counters(store)[:2] == (pgstore.FOLD_EVERY + 2,) * 2
    finally:
        other.commit()
        other.close()
    with PostgresStore.open(pg_url) as store:
        assert counters(store)[:2] == (pgstore.FOLD_EVERY + 3,) * 2
        assert store.stats().topics["t"].events == pgstore.FOLD_EVERY + 3
        assert store.check().ok


def test_check_verifies_indexes_with_amcheck_when_installed(pg_database_url: str) -> None:
    """An extension is database-wide: this test has a database of its own."""
    with PostgresStore.open(pg_database_url) as store:
        store.write_batch([row(1)])
        integrity = store.check().facts["integrity"]
        assert integrity == "not verified (the amcheck extension is not installed)"
        pg_sql(pg_database_url, "CREATE EXTENSION amcheck")
        result = store.check()
        assert result.ok and result.facts["integrity"] == "ok"


def test_a_lost_connection_is_a_one_line_store_error(pg_url: str) -> None:
    with PostgresStore.open(pg_url) as store:
        store.write_batch([row(1)])
        pg_sql(
            pg_url,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = 'logagg' AND datname = current_database()",
        )
        with pytest.raises(StoreError) as caught:
            store.write_batch([row(2)])
    message = str(caught.value)
    assert "lost the connection" in message and "\n" not in message
    assert PASSWORD not in message
    with PostgresStore.open(pg_url) as store:
        assert counters(store) == (1, 1, 0, 0)


def test_unreachable_server_and_refused_password_are_one_line_errors(
    pg_server: PgServer,
) -> None:
    with pytest.raises(StoreError, match="cannot connect") as caught:
        PostgresStore.open(f"postgresql://u:{PASSWORD}@127.0.0.1:1/x")
    assert PASSWORD not in str(caught.value)
    with pytest.raises(StoreError, match="authentication refused") as caught:
        PostgresStore.open(pg_server.url("postgres", password="wrong-" + PASSWORD))
    assert PASSWORD not in str(caught.value) and "\n" not in str(caught.value)


# --- real processes through the CLI ---------------------------------------------------------


def pg_rows(url: str) -> int:
    """Rows in the events table (0 while the store does not exist or cannot be reached)."""
    try:
        return int(pg_sql(url, "SELECT count(*) FROM events")[0][0])
    except psycopg.Error:
        return 0


def one_line_error(proc: subprocess.CompletedProcess[bytes], *words: str) -> str:
    """Exit 1 and one error line naming one of `words`; the password appears nowhere."""
    line = assert_one_line_error(proc, *words)
    assert PASSWORD not in line and PASSWORD not in proc.stdout.decode()
    return line


def test_cli_ingest_then_reingest_accepts_nothing(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    unique = generated(data, 6000, SEED)
    first = run_logagg("ingest", "--db", pg_url, "--json", "--batch-size", "1000", data)
    assert first.returncode == 0, first.stderr.decode()
    assert json.loads(first.stdout)["accepted"] == len(unique)
    again = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert again.returncode == 0, again.stderr.decode()
    report = json.loads(again.stdout)
    assert (report["accepted"], report["duplicates"]) == (0, 6000)
    assert check_store(pg_url)["unique_processed"] == len(unique)
    stats = json.loads(run_logagg("stats", "--db", pg_url, "--json").stdout)
    assert stats["received"] == 12000 and PASSWORD not in json.dumps(stats)
    published = run_logagg("publish", "--db", pg_url, "--topic", "deploy", "--event-id", "b1")
    assert (published.returncode, published.stderr) == (0, b"accepted: deploy b1\n")
    repeated = run_logagg("publish", "--db", pg_url, "--topic", "deploy", "--event-id", "b1")
    assert (repeated.returncode, repeated.stderr) == (0, b"duplicate (already stored): deploy b1\n")
    assert check_store(pg_url)["unique_processed"] == len(unique) + 1


def test_cli_four_concurrent_ingests_with_overlapping_inputs(pg_url: str, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    pool = list(generate(16_000, seed=SEED + 1))
    inputs = []
    for i in range(4):
        lines = rng.sample(pool, 9000) + ["not an event\n"]
        path = tmp_path / f"in{i}.jsonl"
        path.write_text("".join(lines))
        inputs.append(lines)
    union = {(d["topic"], d["event_id"]) for ls in inputs for d in map(json.loads, ls[:-1])}
    total = sum(len(lines) for lines in inputs)
    writers = [
        subprocess.Popen(
            logagg_cmd("ingest", "--db", pg_url, "--batch-size", "500", "--json", "--quiet", p),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for p in (tmp_path / f"in{i}.jsonl" for i in range(4))
    ]
    outputs = [w.communicate(timeout=120) for w in writers]
    for w, (_, err) in zip(writers, outputs, strict=True):
        assert w.returncode == 0, err.decode()
    reports = [json.loads(out) for out, _ in outputs]
    assert sum(r["accepted"] for r in reports) == len(union), reports
    assert sum(r["received"] for r in reports) == total
    assert sum(r["invalid"] for r in reports) == 4
    keys = listed_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == union
    facts = check_store(pg_url)
    assert (facts["received"], facts["unique_processed"], facts["invalid"]) == (
        total,
        len(union),
        4,
    )


def test_cli_kill_9_mid_ingest_then_rerun_is_exact(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    unique = generated(data, 60_000, SEED + 2)
    for round_no in range(2):
        proc = subprocess.Popen(
            logagg_cmd("ingest", "--db", pg_url, "--batch-size", "700", "--quiet", data),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        target = 2000 + round_no * 15_000
        try:
            wait_until(
                lambda t=target, p=proc: pg_rows(pg_url) >= t or p.poll() is not None,
                60,
                f"{target} rows (seed {SEED}, round {round_no})",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.communicate(timeout=30)
        facts = check_store(pg_url)
        assert target <= facts["rows"] < len(unique), f"seed {SEED}, round {round_no}: {facts}"
    final = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert final.returncode == 0, final.stderr.decode()
    keys = listed_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == unique
    assert check_store(pg_url)["unique_processed"] == len(unique)


def test_cli_server_restarted_mid_ingest(
    pg_server: PgServer,
    pg_url: str,
    tmp_path: Path,
) -> None:
    """A live pipe into the store while the server restarts: a one-line error and exit 1,
    every committed batch kept, and re-running the same input completes the store."""
    data = tmp_path / "in.jsonl"
    unique = generated(data, 30_000, SEED + 3)
    lines = data.read_bytes().splitlines(keepends=True)
    proc = subprocess.Popen(
        logagg_cmd(
            "ingest", "-", "--db", pg_url, "--batch-size", "500", "--flush-interval", "0.05"
        ),
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None
    stop = threading.Event()

    def feed() -> None:
        assert proc.stdin is not None
        try:
            for start in range(0, len(lines), 500):
                proc.stdin.write(b"".join(lines[start : start + 500]))
                proc.stdin.flush()
                if stop.wait(0.01):
                    break
            proc.stdin.close()
        except (BrokenPipeError, ValueError):
            pass

    feeder = threading.Thread(target=feed)
    feeder.start()
    try:
        wait_until(lambda: pg_rows(pg_url) >= 3000, 60, "3000 rows before the restart")
        pg_server.stop("fast")
        pg_server.start()
        _, err = proc.communicate(timeout=60)
    finally:
        stop.set()
        if proc.poll() is None:
            proc.kill()
        feeder.join(30)
        if not pg_server.running():
            pg_server.start()
    failed = subprocess.CompletedProcess(proc.args, proc.returncode, b"", err)
    assert "lost the connection" in one_line_error(failed, "PostgreSQL")
    facts = check_store(pg_url)
    assert 3000 <= facts["rows"] < len(unique)
    final = run_logagg("ingest", "--db", pg_url, "--json", data)
    assert final.returncode == 0, final.stderr.decode()
    keys = listed_keys(pg_url)
    assert len(keys) == len(set(keys)) and set(keys) == unique
    assert check_store(pg_url)["unique_processed"] == len(unique)


def test_cli_refused_password_and_unreachable_server_never_show_the_password(
    pg_server: PgServer,
    pg_url: str,
    tmp_path: Path,
) -> None:
    data = write_jsonl(tmp_path / "in.jsonl", [event(1)])
    wrong = pg_url.replace(PASSWORD, "wrong-" + PASSWORD)
    for command in (
        ["ingest", data],
        ["stats"],
        ["events"],
        ["check"],
        ["publish", "--topic", "x"],
    ):
        proc = run_logagg(*command, "--db", wrong)
        one_line_error(proc, "authentication refused")
        assert PASSWORD not in proc.stdout.decode()
    unreachable = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"
    one_line_error(run_logagg("stats", "--db", unreachable), "cannot connect")
    helped = run_logagg("ingest", "--help", env={"LOGAGG_DB": pg_url})
    assert helped.returncode == 0 and PASSWORD not in helped.stdout.decode()


def test_cli_copy_a_store_between_backends_through_a_pipe(pg_url: str, tmp_path: Path) -> None:
    data = tmp_path / "in.jsonl"
    generated(data, 3000, SEED + 4)
    sqlite_db = tmp_path / "a.db"
    assert run_logagg("ingest", "--db", sqlite_db, "--quiet", data).returncode == 0
    dump = run_logagg("events", "--all", "--format", "jsonl", "--db", sqlite_db)
    assert dump.returncode == 0
    into_pg = run_logagg("ingest", "-", "--db", pg_url, "--json", input=dump.stdout)
    assert into_pg.returncode == 0, into_pg.stderr.decode()
    from_pg = run_logagg("events", "--all", "--format", "jsonl", "--db", pg_url)
    assert from_pg.stdout == dump.stdout  # the same events, the same order, the same bytes
    back = tmp_path / "b.db"
    assert run_logagg("ingest", "-", "--db", back, "--quiet", input=from_pg.stdout).returncode == 0
    again = run_logagg("events", "--all", "--format", "jsonl", "--db", back)
    assert again.stdout == dump.stdout
    check_store(pg_url)


@pytest.mark.parametrize("log_level", ["warning", "debug"])
def test_serve_on_a_postgresql_store(pg_url: str, tmp_path: Path, log_level: str) -> None:
    """The HTTP face works the same on PostgreSQL, and its process never logs the password
    (a real process: its log is the point)."""
    log = tmp_path / "serve.log"
    server = ServeProcess(pg_url, log, log_level=log_level).start()
    try:
        first = server.post(event(1)).json()
        again = server.post(event(1)).json()
        assert (first["accepted"], again["duplicates"]) == (1, 1)
        stats = server.stats()
        counts = (stats["received"], stats["unique_processed"], stats["duplicate_dropped"])
        assert counts == (2, 1, 1)
        listed = server.get("/events", topic="t").json()
        assert [e["event_id"] for e in listed["events"]] == ["e1"]
        assert server.stop() in (-signal.SIGTERM, 143)
    finally:
        server.kill()
    text = log.read_text()
    assert PASSWORD not in text
    if log_level == "debug":
        assert "writer stopped: 2 received, 1 accepted, 1 duplicates, 0 invalid" in text
    check_store(pg_url)
