"""Shippers that write to Elasticsearch send to `logagg serve` under `/es`: the official
Python Elasticsearch client (its product check, `helpers.bulk`, gzip bodies, Basic auth)
and rsyslog's omelasticsearch, a real daemon shipping a file while it and the server are
killed and restarted.

The client tests share one in-process server with a token (each test writes indices of
its own); the rsyslog test runs `logagg serve` as a process of its own, to kill it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import check_store, logagg_cmd
from elasticsearch import AuthenticationException, Elasticsearch, helpers
from helpers import WAIT, event_count, wait_until
from serving import AppServer, ServeProcess

TOKEN = "shipper-t0ken-0123456789"
TS = "2025-03-01T12:00:00Z"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    db = tmp_path_factory.mktemp("es") / "store.db"
    server = AppServer(db, token=TOKEN).start()
    yield server
    server.stop()


@pytest.fixture
def client(server: AppServer) -> Iterator[Elasticsearch]:
    es = Elasticsearch(server.url + "/es", basic_auth=("elastic", TOKEN), request_timeout=30)
    yield es
    es.close()


def topic_events(server: AppServer, topic: str) -> list[dict[str, Any]]:
    response = server.get("/events", topic=topic, order="asc", limit=1000)
    assert response.status_code == 200, response.text
    events: list[dict[str, Any]] = response.json()["events"]
    return events


def statuses(items: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(op, item["status"]) for entry in items for op, item in entry.items()]


# --- the Python client ------------------------------------------------------------------


def test_helpers_bulk_passes_the_product_check_and_every_document_is_one_event(
    server: AppServer, client: Elasticsearch
) -> None:
    info = client.info()  # the client refuses a server without X-Elastic-Product
    assert info["version"]["number"].startswith("8.")
    docs = [
        {"message": f"order {n}", "@timestamp": TS, "host": {"name": "web-1"}, "n": n}
        for n in range(40)
    ]
    actions = [
        {"_op_type": "create", "_index": "es-orders", "_id": f"o-{n}", "_source": doc}
        for n, doc in enumerate(docs[:20])
    ] + [{"_op_type": "create", "_index": "es-orders", "_source": doc} for doc in docs[20:]]
    assert helpers.bulk(client, actions) == (40, [])

    stored = topic_events(server, "es-orders")
    assert len(stored) == 40
    by_n = {e["payload"]["n"]: e for e in stored}
    assert by_n[3]["event_id"] == "o-3"  # _id
    assert by_n[3]["payload"] == docs[3]  # the document, whole
    assert {e["source"] for e in stored} == {"web-1"}  # host.name
    assert {e["timestamp"] for e in stored} == {"2025-03-01T12:00:00.000000Z"}  # @timestamp
    assert len({e["event_id"] for e in stored}) == 40  # content ids for the other 20

    # A re-send (a shipper's retry): under `create` each copy is a 409, nothing new
    ok, errors = helpers.bulk(client, actions, raise_on_error=False)
    assert ok == 0 and len(errors) == 40
    assert {e["create"]["status"] for e in errors} == {409}
    assert {e["create"]["error"]["type"] for e in errors} == {"version_conflict_engine_exception"}
    with pytest.raises(helpers.BulkIndexError):
        helpers.bulk(client, actions[:1])
    # under `index`: 200 noop, and a document of the same _id never overwrites the first
    again = [dict(a, _op_type="index") for a in actions[20:]]
    changed = [dict(a, _op_type="index", _source={**a["_source"], "n": -1}) for a in actions[:20]]
    assert helpers.bulk(client, changed + again) == (40, [])
    response = client.bulk(operations=[{"index": {"_index": "es-orders", "_id": "o-1"}}, {"x": 1}])
    assert statuses(response["items"]) == [("index", 200)]
    assert response["items"][0]["index"]["result"] == "noop"
    assert topic_events(server, "es-orders") == stored
    assert server.stats()["topic_counts"]["es-orders"] == 40


def test_identical_documents_without_id_are_numbered_and_a_resend_adds_none(
    server: AppServer, client: Elasticsearch
) -> None:
    line = {"log": "retrying connection", "@timestamp": TS}
    actions = [{"_op_type": "create", "_index": "es-repeats", "_source": line}] * 5
    assert helpers.bulk(client, actions) == (5, [])
    assert len(topic_events(server, "es-repeats")) == 5  # five log lines, five events
    ok, errors = helpers.bulk(client, actions, raise_on_error=False)
    assert (ok, len(errors)) == (0, 5)
    # another index is another topic: its identical lines are numbered on their own
    assert helpers.bulk(client, [dict(a, _index="es-repeats-2") for a in actions[:2]]) == (2, [])
    ids = {e["event_id"] for e in topic_events(server, "es-repeats")}
    assert {e["event_id"] for e in topic_events(server, "es-repeats-2")} < ids


def test_gzip_bodies_and_the_index_in_the_path(server: AppServer) -> None:
    es = Elasticsearch(
        server.url + "/es", basic_auth=("any", TOKEN), http_compress=True, request_timeout=30
    )
    try:
        operations: list[dict[str, Any]] = []
        for n in range(300):
            operations += [{"create": {"_id": f"z-{n}"}}, {"message": "x" * 200, "seq": n}]
        response = es.bulk(index="es-zipped", operations=operations)  # /es/es-zipped/_bulk
    finally:
        es.close()
    assert response["errors"] is False
    assert statuses(response["items"]) == [("create", 201)] * 300
    stored = topic_events(server, "es-zipped")
    assert len(stored) == 300
    assert {e["source"] for e in stored} == {"127.0.0.1"}  # no host: the client's address


def test_invalid_items_are_400_and_the_others_are_stored(
    server: AppServer, client: Elasticsearch
) -> None:
    response = client.bulk(
        operations=[
            {"create": {"_index": "es-mixed", "_id": "good-1"}},
            {"message": "fine", "timestamp": 1740830400000},  # epoch ms
            {"create": {"_index": "es-mixed", "_id": "bad-time"}},
            {"message": "x", "@timestamp": "yesterday"},
            {"create": {"_id": "no-index"}},
            {"message": "x"},
            {"update": {"_index": "es-mixed", "_id": "good-1"}},
            {"doc": {"message": "changed"}},
            {"delete": {"_index": "es-mixed", "_id": "good-1"}},
            {"index": {"_index": "es-mixed", "_id": "x" * 300}},
            {"message": "id too long"},
            {"create": {"_index": "es-mixed", "_id": "good-2"}},
            {"message": "also fine", "host": "db-2"},
        ]
    )
    assert response["errors"] is True
    assert statuses(response["items"]) == [
        ("create", 201),
        ("create", 400),
        ("create", 400),
        ("update", 400),
        ("delete", 400),
        ("index", 400),
        ("create", 201),
    ]
    reasons = [next(iter(i.values())).get("error", {}).get("reason", "") for i in response["items"]]
    assert "timestamp" in reasons[1] or "time" in reasons[1]
    assert "index is missing" in reasons[2]
    assert "update is not supported" in reasons[3]
    assert "event_id" in reasons[5]
    stored = {e["event_id"]: e for e in topic_events(server, "es-mixed")}
    assert sorted(stored) == ["good-1", "good-2"]
    assert stored["good-1"]["timestamp"] == "2025-03-01T12:00:00.000000Z"
    assert stored["good-1"]["payload"] == {"message": "fine", "timestamp": 1740830400000}
    assert stored["good-2"]["source"] == "db-2"  # host as a string


def test_what_clients_ask_before_sending(server: AppServer, client: Elasticsearch) -> None:
    assert client.ping()
    assert client.license.get()["license"]["status"] == "active"
    assert client.cluster.health()["status"] == "green"
    assert client.cat.health(format="json")[0]["status"] == "green"
    assert not client.indices.exists_index_template(name="logs-template")
    template = {"index_patterns": ["logs-*"], "template": {"settings": {}}}
    assert client.indices.put_index_template(name="logs-template", **template)["acknowledged"]
    assert client.ilm.put_lifecycle(name="logs", policy={"phases": {}})["acknowledged"]
    # writing a document any other way is refused, never acknowledged unstored
    response = server.http.post(  # type: ignore[union-attr]
        "/es/es-single/_doc", json={"message": "x"}, headers={"x-test": "1"}
    )
    assert response.status_code == 400 and response.headers["x-elastic-product"] == "Elasticsearch"
    assert topic_events(server, "es-single") == []


def test_an_api_key_whose_key_is_the_token_is_accepted(server: AppServer) -> None:
    es = Elasticsearch(server.url + "/es", api_key=("filebeat-1", TOKEN), request_timeout=30)
    wrong = Elasticsearch(server.url + "/es", api_key=("filebeat-1", "wrong-" + TOKEN))
    try:
        response = es.bulk(operations=[{"create": {"_index": "es-keyed", "_id": "k-1"}}, {"m": 1}])
        assert statuses(response["items"]) == [("create", 201)]
        with pytest.raises(AuthenticationException):
            wrong.info()
    finally:
        es.close()
        wrong.close()
    assert [e["event_id"] for e in topic_events(server, "es-keyed")] == ["k-1"]


def test_the_token_is_required(server: AppServer) -> None:
    es = Elasticsearch(server.url + "/es", basic_auth=("elastic", "wrong-" + TOKEN))
    try:
        with pytest.raises(AuthenticationException):
            es.info()
    finally:
        es.close()
    response = server.http.post(  # type: ignore[union-attr]
        "/es/_bulk", content=b"", headers={"content-type": "text/plain"}
    )
    assert response.status_code == 406  # a web page's media type: refused


# --- rsyslog: a real shipper daemon, killed and restarted mid-stream ------------------------

RSYSLOGD = shutil.which("rsyslogd") or next(
    (p for p in ("/usr/sbin/rsyslogd", "/sbin/rsyslogd") if os.access(p, os.X_OK)), None
)
MISSING_RSYSLOG = (
    "rsyslogd not found: install the distribution's rsyslog and rsyslog-elasticsearch"
    " packages (`make test` does this when rsyslogd is missing)"
)
RSYSLOG_CONFIG = """\
global(workDirectory="{work}")
module(load="imfile")
module(load="omelasticsearch")
template(name="logagg-doc" type="list" option.jsonf="on") {{
  property(outname="@timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="message" name="msg" format="jsonf")
  constant(outname="host" value="shipper-1" format="jsonf")
}}
template(name="logagg-id" type="string" string="%$!metadata!filename%:%$!metadata!fileoffset%")
input(type="imfile" file="{log}" tag="app" addMetadata="on" ruleset="ship")
ruleset(name="ship") {{
  action(type="omelasticsearch" server="http://127.0.0.1:{port}/es" searchIndex="app-logs"
         template="logagg-doc" bulkmode="on" bulkid="logagg-id" dynbulkid="on"
         writeoperation="create" esVersion.major="8" uid="rsyslog" pwd="{token}"
         action.resumeRetryCount="-1" action.resumeInterval="1")
}}
"""
LINES = 2000


class Rsyslog:
    """rsyslogd in the foreground with a configuration and work directory of its own (no
    system socket, nothing outside `home`); its messages go to `home/rsyslog.log`."""

    def __init__(self, home: Path, config: str) -> None:
        assert RSYSLOGD is not None, MISSING_RSYSLOG
        self.home = home
        self.conf = home / "rsyslog.conf"
        self.log = home / "rsyslog.log"
        (home / "work").mkdir(exist_ok=True)
        self.conf.write_text(config)
        self.proc: subprocess.Popen[bytes] | None = None
        check = subprocess.run(
            [RSYSLOGD, "-N1", "-f", str(self.conf)], capture_output=True, timeout=WAIT
        )
        assert check.returncode == 0, check.stderr.decode() + check.stdout.decode()

    def start(self) -> Rsyslog:
        pid = self.home / "rsyslog.pid"
        pid.unlink(missing_ok=True)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [RSYSLOGD, "-n", "-f", str(self.conf), "-i", str(pid)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        proc = self.proc
        wait_until(lambda: pid.exists() or proc.poll() is not None, WAIT, "rsyslogd to start")
        assert proc.poll() is None, f"rsyslogd ended at once:\n{self.log.read_text()}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(WAIT)


class Appender(threading.Thread):
    """Writes LINES numbered lines to `path`, a few at a time, as an application does."""

    def __init__(self, path: Path) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.written = 0
        self.stop = threading.Event()

    def run(self) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            while self.written < LINES and not self.stop.is_set():
                for _ in range(4):
                    self.written += 1
                    out.write(f"request {self.written:05d} served in {self.written % 97} ms\n")
                out.flush()
                self.stop.wait(0.005)  # the application's pace, not a synchronisation


def test_rsyslog_ships_a_file_exactly_once_through_kills_of_itself_and_the_server(
    tmp_path: Path,
) -> None:
    assert RSYSLOGD is not None, MISSING_RSYSLOG
    db = tmp_path / "store.db"
    log = tmp_path / "app.log"
    log.touch()
    server = ServeProcess(db, tmp_path / "serve.log", env={"LOGAGG_TOKEN": TOKEN}).start()
    config = RSYSLOG_CONFIG.format(work=tmp_path / "work", log=log, port=server.port, token=TOKEN)
    rsyslog = Rsyslog(tmp_path, config)
    appender = Appender(log)
    stored = lambda: event_count(db) if db.exists() else 0  # noqa: E731
    try:
        rsyslog.start()
        appender.start()
        wait_until(lambda: stored() >= 300, WAIT, "the first lines to be stored")
        server.kill()  # kill -9 while rsyslog sends
        wait_until(lambda: appender.written >= 1000, WAIT, "more lines while the server is down")
        server.restart()  # same store, same port: rsyslog's retries reach it
        wait_until(lambda: stored() >= 1200, WAIT, "rsyslog to resume")
        rsyslog.kill()  # kill -9 of the shipper mid-stream
        wait_until(lambda: appender.written >= 1600, WAIT, "more lines while rsyslog is down")
        rsyslog.start()  # it reads on from its last saved position (re-sending some)
        appender.join(WAIT)
        assert appender.written == LINES
        wait_until(lambda: stored() >= LINES, 3 * WAIT, f"all {LINES} lines to be stored")
    finally:
        appender.stop.set()
        rsyslog.kill()
        server.kill()

    lines = log.read_text().splitlines(keepends=True)
    offsets = [0]
    for line in lines[:-1]:
        offsets.append(offsets[-1] + len(line.encode()))
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT topic, event_id, source, payload FROM events").fetchall()
    conn.close()
    assert len(rows) == LINES  # every line once: none lost, none twice
    assert {(topic, source) for topic, _, source, _ in rows} == {("app-logs", "shipper-1")}
    messages = sorted(json.loads(payload)["message"] for *_, payload in rows)
    assert messages == [line.rstrip("\n") for line in lines]
    assert {event_id for _, event_id, _, _ in rows} == {f"{log}:{at}" for at in offsets}
    report = check_store(db)
    assert report["rows"] == report["unique_processed"] == LINES
    assert report["received"] == LINES + report["duplicate_dropped"] + report["invalid"]


def test_serve_source_names_the_source_of_documents_that_have_none(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    args = ("--source", "edge-gateway")
    with_source = ServeProcess(db, tmp_path / "serve.log", args=args).start()
    try:
        es = Elasticsearch(with_source.url + "/es", request_timeout=30)
        try:
            operations: list[dict[str, Any]] = []
            for n in range(3):
                operations += [{"create": {"_id": f"s-{n}"}}, {"message": "m", "n": n}]
            operations += [{"create": {"_id": "s-host"}}, {"message": "m", "host": "db-9"}]
            response = es.bulk(index="es-sourced", operations=operations)
        finally:
            es.close()
        assert response["errors"] is False
        lines = b'{"level":30,"time":1740830400000,"msg":"hi","pid":1}\n'
        assert with_source.http is not None
        ndjson = with_source.http.post(
            "/publish?preset=pino", content=lines, headers={"content-type": "application/x-ndjson"}
        )
        assert ndjson.status_code == 200, ndjson.text
    finally:
        assert with_source.stop() in (0, -signal.SIGTERM)
    conn = sqlite3.connect(db)
    try:
        rows = dict(conn.execute("SELECT event_id, source FROM events WHERE topic = 'es-sourced'"))
        pino = conn.execute("SELECT source FROM events WHERE topic != 'es-sourced'").fetchall()
    finally:
        conn.close()
    assert rows == {
        "s-0": "edge-gateway",
        "s-1": "edge-gateway",
        "s-2": "edge-gateway",
        "s-host": "db-9",
    }  # a document's own host still wins
    assert pino == [("edge-gateway",)]
    check_store(db)


@pytest.mark.parametrize("value", ["", "x" * 256])
def test_serve_source_out_of_range_is_a_usage_error(tmp_path: Path, value: str) -> None:
    result = subprocess.run(
        logagg_cmd("serve", "--db", str(tmp_path / "s.db"), "--port", "1", "--source", value),
        capture_output=True,
        text=True,
        timeout=WAIT,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "--source: expected 1 to 255" in result.stderr
