"""Versioned schema migrations (models/schema.py, models/migrations/) on the
test database engine (BATON_TEST_DATABASE): fresh databases get exactly the
models' schema, a database made by the unversioned init_schema() of commit
dadd7ee (tests/fixtures/schema/) is adopted and upgraded with its rows, a second
run changes nothing, concurrent runs apply each migration once, and the
queries the new indexes exist for use them."""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import peewee
import pytest

from models import ALL_MODELS, Contact, Conversation, Message
from models.base import make_database
from models.message import is_unsent
from models.schema import HISTORY_TABLE, MigrationError, MigrationRunner, migrate, migration_status
from tests.support import throwaway_postgres_database, using_postgres

ROOT = Path(__file__).resolve().parent.parent
SNAPSHOTS = Path(__file__).resolve().parent / "fixtures" / "schema"
POSTGRES = using_postgres()

MIGRATIONS = ["0001_initial", "0002_outbound_queue_index", "0003_conversation_timer_indexes",
              "0004_wider_customer_ids", "0005_message_error_details", "0006_message_seq",
              "0007_contact_user_id", "0008_unsent_outbound_index", "0009_media",
              "0010_bot_turn_deadline", "0011_agent_deactivation",
              "0012_dead_letters"]
VERSIONS = [int(name[:4]) for name in MIGRATIONS]
# What migrations add beyond the models' own indexes, for queries (see 0002, 0003).
QUERY_INDEXES = {
    "message": {"message_queued_by_conversation"},
    "conversation": {"conversation_state_offer_expires_at", "conversation_state_pending_since",
                     "conversation_state_awaiting_agent_since", "conversation_held_by_id",
                     "conversation_open_by_id"},
}
_names = itertools.count(1)


@contextmanager
def scratch_database(tmp_dir: Path):
    """A new empty database on the test engine, configured as Baton configures
    one (make_database), dropped afterwards. Yields (database, url)."""
    if not POSTGRES:
        url = f"sqlite:///{tmp_dir / f'scratch{next(_names)}.db'}"
        database = make_database(url)
        try:
            yield database, url
        finally:
            database.close()
        return
    with throwaway_postgres_database(f"baton_mig_{os.getpid()}_{next(_names)}") as url:
        database = make_database(url, pool_size=2)
        try:
            yield database, url
        finally:
            database.close_all()


@pytest.fixture
def new_database(tmp_path):
    """Call for another scratch database; all are dropped after the test."""
    with ExitStack() as stack:
        yield lambda: stack.enter_context(scratch_database(tmp_path))[0]


# -- what a database holds ----------------------------------------------------


def _on_delete(database, table: str) -> list[tuple]:
    if isinstance(database, peewee.SqliteDatabase):
        rows = database.execute_sql(f'PRAGMA foreign_key_list("{table}")').fetchall()
        return sorted((row[3], row[2], row[4], row[6]) for row in rows)
    rows = database.execute_sql(
        "SELECT a.attname, c.confrelid::regclass::text, af.attname, c.confdeltype "
        "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
        "JOIN pg_attribute af ON af.attrelid = c.confrelid AND af.attnum = c.confkey[1] "
        "WHERE c.contype = 'f' AND c.conrelid = %s::regclass", (f'"{table}"',)).fetchall()
    actions = {"c": "CASCADE", "a": "NO ACTION", "r": "RESTRICT", "n": "SET NULL", "d": "SET DEFAULT"}
    return sorted((column, dest.strip('"'), dest_column, actions[kind]) for column, dest, dest_column, kind in rows)


def _where(sql: str | None) -> str | None:
    """The predicate of a partial index, without quoting, casts or spacing."""
    if not sql or " WHERE " not in sql.upper():
        return None
    predicate = sql[sql.upper().rindex(" WHERE ") + 7:]
    for noise in ('"', "(", ")", " ", "::charactervarying", "::text", "[]"):
        predicate = predicate.replace(noise, "")
    predicate = re.sub(r"=ANYARRAY\[(.*?)\]", r"IN\1", predicate, flags=re.IGNORECASE)   # PostgreSQL's IN
    return predicate.lower().replace("!=", "<>")


def describe(database) -> dict:
    """Every table's columns (in order, with type, nullability, key and
    default), indexes (columns, uniqueness, partial predicate) and foreign keys."""
    schema = {}
    for table in sorted(database.get_tables()):
        schema[table] = {
            "columns": [(c.name, c.data_type.lower(), c.null, c.primary_key, c.default)
                        for c in database.get_columns(table)],
            "indexes": {i.name: (tuple(i.columns), bool(i.unique), _where(i.sql))
                        for i in database.get_indexes(table)
                        if not i.name.startswith("sqlite_autoindex_") and not i.name.endswith("_pkey")},
            "foreign_keys": _on_delete(database, table),
        }
    return schema


def without_query_indexes(schema: dict) -> dict:
    out = {table: dict(spec) for table, spec in schema.items() if table != HISTORY_TABLE}
    for table, names in QUERY_INDEXES.items():
        out[table]["indexes"] = {n: v for n, v in out[table]["indexes"].items() if n not in names}
    return out


def load_snapshot(database) -> None:
    """Today's schema, as the unversioned init_schema() made it."""
    ddl = (SNAPSHOTS / ("postgres.sql" if POSTGRES else "sqlite.sql")).read_text()
    database.connect(reuse_if_open=True)
    if isinstance(database, peewee.SqliteDatabase):
        database.connection().executescript(ddl)
    else:
        database.execute_sql(ddl)


def insert(database, table: str, rows: list[dict]) -> None:
    rows = numbered(database, table, rows)
    for start in range(0, len(rows), 500):
        batch = rows[start:start + 500]
        peewee.Table(table, columns=list(batch[0])).bind(database).insert(batch).execute()


NOW = datetime(2026, 6, 1, 12, 0, 0)


def numbered(database, table: str, rows: list[dict]) -> list[dict]:
    """Rows for a database migrated to 0006 or later get the numbering it requires:
    messages a `seq` per conversation in the order given, conversations a counter."""
    columns = {column.name for column in database.get_columns(table)}
    if table == "message" and "seq" in columns:
        taken: dict[str, int] = {}
        out = []
        for row in rows:
            taken[row["conversation_id"]] = taken.get(row["conversation_id"], 0) + 1
            out.append({"seq": taken[row["conversation_id"]], **row})
        return out
    if table == "conversation" and "message_seq" in columns:
        return [{"message_seq": 0, **row} for row in rows]
    return rows


def conversation_row(i: int, state: str, **deadlines) -> dict:
    return {"id": f"c{i:05d}", "channel_id": "ch1", "contact_id": f"ct{i:05d}", "state": state, "version": 1,
            "control_epoch": 1, "cooldown_remaining": 0, "bot_failures": 0, "offers_lapsed": "[]",
            "metadata": "{}", "created_at": NOW, "updated_at": NOW, **deadlines}


def message_row(i: int, conversation: int, direction: str, status: str | None, received_at=NOW) -> dict:
    return {"id": f"m{i:06d}", "conversation_id": f"c{conversation:05d}", "channel_id": "ch1",
            "direction": direction, "sender": "bot" if direction == "out" else "user", "type": "text",
            "text": f"text {i}", "provider_message_id": f"wamid.{i}", "sent_at": NOW, "received_at": received_at,
            "routed_to": "bot" if direction == "in" else None, "status": status, "attempts": 0}


def some_rows(database, conversations: int = 3) -> None:
    """A channel, contacts, conversations, messages (one queued), an agent."""
    with database.atomic():
        insert(database, "channel", [{"id": "ch1", "provider": "sandbox", "phone_number_id": "pn1",
                                      "created_at": NOW}])
        insert(database, "contact", [{"id": f"ct{i:05d}", "channel_id": "ch1", "wa_id": f"1555000{i:04d}",
                                      "created_at": NOW} for i in range(conversations)])
        insert(database, "conversation", [conversation_row(i, "BOT_CONTROLLED") for i in range(conversations)])
        insert(database, "message", [message_row(0, 0, "in", None), message_row(1, 0, "out", "queued"),
                                     message_row(2, 1, "out", "sent")])
        insert(database, "agent", [{"id": "a1", "name": "Ana", "role": "agent", "groups": '["support"]',
                                    "max_concurrent": 5, "status": "online", "created_at": NOW}])


def history(database) -> list[tuple]:
    return database.execute_sql(
        f'SELECT version, name, applied_at FROM "{HISTORY_TABLE}" ORDER BY version').fetchall()


# -- (a) a fresh database is exactly what the models describe -------------------


def test_fresh_migrate_yields_exactly_the_models_schema_plus_the_query_indexes(new_database):
    migrated, reference = new_database(), new_database()
    assert migrate(migrated) == [f"applied {name}" for name in MIGRATIONS]
    with reference.bind_ctx(ALL_MODELS):
        reference.create_tables(ALL_MODELS)

    got, want = describe(migrated), describe(reference)
    assert without_query_indexes(got) == want
    for table, names in QUERY_INDEXES.items():
        assert names <= set(got[table]["indexes"]), table
    assert [c[0] for c in got[HISTORY_TABLE]["columns"]] == ["version", "name", "applied_at"]
    assert [(v, n) for v, n, _ in history(migrated)] == list(zip(VERSIONS, MIGRATIONS))


def test_the_query_indexes_are_partial_where_only_few_rows_qualify(new_database):
    database = new_database()
    migrate(database)
    indexes = describe(database)
    assert indexes["message"]["indexes"]["message_queued_by_conversation"] == (
        ("conversation_id", "id"), False, "statusin'queued','unknown'")
    assert indexes["conversation"]["indexes"]["conversation_held_by_id"] == (
        ("id", "typing_until"), False, "held_sinceisnotnull")
    assert indexes["conversation"]["indexes"]["conversation_open_by_id"] == (
        ("id", "last_activity_at"), False, "state<>'closed'")
    assert indexes["conversation"]["indexes"]["conversation_state_offer_expires_at"] == (
        ("state", "offer_expires_at"), False, None)


# -- (b) upgrading a database made by today's unversioned init_schema() --------


def test_a_database_from_before_migrations_is_adopted_upgraded_and_keeps_its_rows(new_database):
    old, fresh = new_database(), new_database()
    load_snapshot(old)
    some_rows(old)
    # Before 0007 a customer without a phone number was keyed on the BSUID in wa_id.
    insert(old, "contact", [{"id": "ct_bsuid", "channel_id": "ch1", "wa_id": "US.7710042003518822461",
                             "created_at": NOW}])
    assert HISTORY_TABLE not in old.get_tables()

    assert migrate(old) == ["adopted the existing schema as 0001_initial",
                            *(f"applied {name}" for name in MIGRATIONS[1:])]

    migrate(fresh)
    assert describe(old) == describe(fresh)
    assert [(v, n) for v, n, _ in history(old)] == list(zip(VERSIONS, MIGRATIONS))
    with old.bind_ctx(ALL_MODELS):
        assert Conversation.select().count() == 3
        assert [(m.id, m.status, m.text) for m in Message.select().order_by(Message.id)] == [
            ("m000000", None, "text 0"), ("m000001", "queued", "text 1"), ("m000002", "sent", "text 2")]
        assert Message.get_by_id("m000000").received_at == NOW
        # 0006: messages numbered in id order per conversation; each counter holds its last number.
        assert [(m.id, m.seq) for m in Message.select().order_by(Message.id)] == [
            ("m000000", 1), ("m000001", 2), ("m000002", 1)]
        assert [(c.id, c.message_seq) for c in Conversation.select().order_by(Conversation.id)] == [
            ("c00000", 2), ("c00001", 1), ("c00002", 0)]
        # 0004: a customer known only by the longest business-scoped user id fits.
        bsuid = "US." + "7Q" * 64
        contact = Contact.get(Contact.id == "ct00000")
        Contact.update(user_id=bsuid).where(Contact.id == contact.id).execute()
        assert Contact.get_by_id(contact.id).user_id == bsuid
        # 0007: the BSUID moved to user_id; phone numbers stayed where they were.
        assert [(c.id, c.wa_id, c.user_id) for c in Contact.select().order_by(Contact.id)] == [
            ("ct00000", "15550000000", bsuid), ("ct00001", "15550000001", None),
            ("ct00002", "15550000002", None), ("ct_bsuid", None, "US.7710042003518822461")]


def test_an_older_unversioned_database_gets_the_tables_and_columns_it_lacked(new_database):
    old, fresh = new_database(), new_database()
    load_snapshot(old)
    some_rows(old)
    old.execute_sql('DROP TABLE "callback_request"')
    old.execute_sql('ALTER TABLE "conversation" DROP COLUMN "held_since"')
    old.execute_sql('ALTER TABLE "conversation" DROP COLUMN "offers_lapsed"')

    changes = migrate(old)

    assert changes[0] == "adopted the existing schema as 0001_initial"
    assert {"added column conversation.held_since", "added column conversation.offers_lapsed",
            "created table callback_request"} <= set(changes)
    assert changes[-len(MIGRATIONS) + 1:] == [f"applied {name}" for name in MIGRATIONS[1:]]
    migrate(fresh)
    got, want = describe(old), describe(fresh)
    # Added columns come last, as ALTER TABLE adds them; otherwise the same.
    assert ({t: sorted(spec["columns"]) for t, spec in got.items()}
            == {t: sorted(spec["columns"]) for t, spec in want.items()})
    assert {t: (s["indexes"], s["foreign_keys"]) for t, s in got.items()} == {
        t: (s["indexes"], s["foreign_keys"]) for t, s in want.items()}
    rows = old.execute_sql('SELECT "offers_lapsed" FROM "conversation" ORDER BY "id"').fetchall()
    assert rows == [("[]",)] * 3      # the not-null column was filled with its default


# -- (c) running again changes nothing ------------------------------------------


def test_migrating_again_is_a_no_op(new_database):
    database = new_database()
    migrate(database)
    some_rows(database)
    before, recorded = describe(database), history(database)

    assert migrate(database) == []
    assert migrate(database) == []
    assert describe(database) == before
    assert history(database) == recorded
    assert [m.name for m in migration_status(database) if m.applied is None] == []


_RACER = """
import json, sys, time
from models.base import make_database
from models.schema import migrate
database = make_database(sys.argv[1], pool_size=1)
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
print(json.dumps(migrate(database)))
"""


def test_processes_starting_at_once_apply_each_migration_exactly_once(tmp_path):
    with scratch_database(tmp_path) as (database, url):
        # Only the migrations race: a brand-new SQLite file is switched to WAL
        # first, which concurrent first connections can fail (models/base.py).
        database.connect()
        database.close()
        start_at = str(time.time() + 1.5)      # after every interpreter has imported Baton
        racers = [subprocess.Popen([sys.executable, "-c", _RACER, url, start_at], cwd=ROOT,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env={**os.environ, "PYTHONPATH": str(ROOT)}) for _ in range(3)]
        outputs = [racer.communicate(timeout=60) for racer in racers]
        assert [racer.returncode for racer in racers] == [0, 0, 0], [err for _, err in outputs]
        applied = sorted(line for out, _ in outputs for line in json.loads(out))
        assert applied == [f"applied {name}" for name in MIGRATIONS]
        assert [v for v, _, _ in history(database)] == VERSIONS


def test_a_failing_migration_leaves_nothing_behind_and_applies_once_fixed(new_database, tmp_path):
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_initial.py").write_text((ROOT / "models/migrations/0001_initial.py").read_text())
    broken = directory / "0002_broken.py"
    broken.write_text("def up(migrator, db):\n"
                      "    migrator.migrate(migrator.add_index('message', ('sent_at',), name='message_by_sent_at'))\n"
                      "    db.execute_sql('SELECT * FROM no_such_table')\n")
    database = new_database()

    with pytest.raises(peewee.DatabaseError):
        MigrationRunner(database, str(directory)).up()
    assert "message_by_sent_at" not in {i.name for i in database.get_indexes("message")}
    assert [v for v, _, _ in history(database)] == [1]

    broken.write_text(broken.read_text().replace("    db.execute_sql('SELECT * FROM no_such_table')\n", ""))
    assert MigrationRunner(database, str(directory)).up() == ["applied 0002_broken"]
    assert "message_by_sent_at" in {i.name for i in database.get_indexes("message")}


@pytest.mark.parametrize("files, refusal", [
    ({"0002_a.py": "def up(migrator, db):\n    pass\n", "0002_b.py": "def up(migrator, db):\n    pass\n"},
     "two migration files share version 0002"),
    ({"0002_outside.py": "atomic = False\n\n\ndef up(migrator, db):\n    pass\n"},
     "every Baton migration runs in one transaction"),
])
def test_ambiguous_or_untransacted_migrations_are_refused_before_they_run(new_database, tmp_path, files, refusal):
    directory = tmp_path / "migrations"
    directory.mkdir()
    (directory / "0001_initial.py").write_text((ROOT / "models/migrations/0001_initial.py").read_text())
    for name, text in files.items():
        (directory / name).write_text(text)
    database = new_database()
    with pytest.raises(MigrationError, match=refusal):
        MigrationRunner(database, str(directory)).up()
    assert [v for v, _, _ in history(database)] == ([] if "share" in refusal else [1])


# -- (d) the queries the indexes are for use them --------------------------------


@pytest.fixture(scope="module")
def busy_database(tmp_path_factory):
    """A migrated database shaped like a live one: most conversations closed,
    a few waiting or held, thousands of messages of which a handful queued.
    PostgreSQL plans from statistics (autovacuum gathers them), so it is
    analysed; Baton never analyses SQLite, so neither does this."""
    with scratch_database(tmp_path_factory.mktemp("plans")) as (database, _):
        migrate(database)
        conversations = 3000
        with database.atomic():
            insert(database, "channel", [{"id": "ch1", "provider": "sandbox", "phone_number_id": "pn1",
                                          "created_at": NOW}])
            insert(database, "contact", [{"id": f"ct{i:05d}", "channel_id": "ch1", "wa_id": str(i),
                                          "created_at": NOW} for i in range(conversations)])
            rows = []
            for i in range(conversations):
                kind = i % 100
                if kind < 90:
                    rows.append(conversation_row(i, "CLOSED", last_activity_at=NOW - timedelta(days=30)))
                elif kind < 97:
                    held = i % 500 == 91
                    rows.append(conversation_row(i, "BOT_CONTROLLED", last_activity_at=NOW - timedelta(minutes=kind),
                                                 held_since=NOW if held else None,
                                                 typing_until=NOW + timedelta(seconds=5) if held else None))
                elif kind < 98:
                    rows.append(conversation_row(i, "PENDING_AGENT", last_activity_at=NOW,
                                                 pending_since=NOW - timedelta(seconds=30),
                                                 offer_expires_at=NOW + timedelta(seconds=30)))
                else:
                    rows.append(conversation_row(i, "AGENT_CONTROLLED", last_activity_at=NOW, assigned_agent_id="a1",
                                                 awaiting_agent_since=NOW - timedelta(seconds=10)))
            insert(database, "conversation", rows)
            insert(database, "message", [
                message_row(i, i % conversations, "out" if i % 2 else "in",
                            ("queued" if i % 997 == 1 else "sent") if i % 2 else None,
                            received_at=NOW - timedelta(minutes=i % 60)) for i in range(4 * conversations)])
        if POSTGRES:
            database.execute_sql("ANALYZE")
        yield database


def plan(database, sql: str, params) -> str:
    prefix = "EXPLAIN " if POSTGRES else "EXPLAIN QUERY PLAN "
    return "\n".join(str(row[-1]) for row in database.execute_sql(prefix + sql, params).fetchall())


@contextmanager
def captured_sql():
    """The (sql, params) of every statement peewee runs meanwhile."""
    statements = []

    class Capture(logging.Handler):
        def emit(self, record):
            if isinstance(record.msg, tuple):
                statements.append(record.msg)

    logger, handler = logging.getLogger("peewee"), Capture(logging.DEBUG)
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield statements
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _queued_queries():
    """The queued-message queries as jobs/send.py (the lane's next message),
    jobs/timers.py (the sweep) and blueprints/ops.py (/metrics) build them."""
    cutoff = NOW
    yield "next queued", (Message.select()
                          .where((Message.conversation == "c00001") & (Message.direction == "out")
                                 & is_unsent())
                          .order_by(Message.id).limit(1))
    yield "sweep", (Message.select(Message.conversation).distinct()
                    .where((Message.direction == "out") & is_unsent()
                           & (Message.received_at < cutoff)
                           & (Message.next_attempt_at.is_null() | (Message.next_attempt_at < cutoff)))
                    .limit(500))


def test_the_queued_message_queries_use_the_partial_index(busy_database):
    with busy_database.bind_ctx(ALL_MODELS):
        queries = dict(_queued_queries())
        with captured_sql() as statements:
            (Message.select(Message.status, peewee.fn.COUNT(Message.id))          # /metrics' gauge
             .where(is_unsent()).group_by(Message.status).tuples()[:])
        queries["metrics"] = statements[-1]
        for label, query in queries.items():
            sql, params = query.sql() if isinstance(query, peewee.Query) else query
            assert "message_queued_by_conversation" in plan(busy_database, sql, params), label


@pytest.mark.parametrize("timer, index", [
    ("due_offers", "conversation_state_offer_expires_at"),
    ("due_pending_timeouts", "conversation_state_pending_since"),
    ("due_unresponsive", "conversation_state_awaiting_agent_since"),
    ("due_holds", "conversation_held_by_id"),
    ("due_idle", "conversation_open_by_id"),
])
def test_each_due_timer_query_uses_its_index(busy_database, timer, index):
    from routing import timeouts

    settings = SimpleNamespace(PENDING_TIMEOUT=300, AGENT_RESPONSE_TIMEOUT=300, IDLE_CLOSE_AFTER=86400)
    find_due = getattr(timeouts, timer)
    with busy_database.bind_ctx(ALL_MODELS), captured_sql() as statements:
        find_due(NOW) if timer in ("due_offers", "due_holds") else find_due(settings, NOW)
    sql, params = statements[-1]
    assert index in plan(busy_database, sql, params)


# -- the command line ------------------------------------------------------------


def test_init_db_prints_what_it_applies_and_migrations_lists_the_history(runner, app):
    from models import db

    db.execute_sql(f'DELETE FROM "{HISTORY_TABLE}" WHERE version = 3')
    for name in sorted(QUERY_INDEXES["conversation"]):
        db.execute_sql(f'DROP INDEX "{name}"')

    listed = runner.invoke(args=["baton", "migrations"]).output.splitlines()
    assert [line.split()[0] for line in listed] == MIGRATIONS
    assert [line.split()[1] for line in listed] == \
        ["applied", "applied", "pending"] + ["applied"] * (len(MIGRATIONS) - 3)

    result = runner.invoke(args=["baton", "init-db"])
    assert result.exit_code == 0
    assert result.output.splitlines() == ["applied 0003_conversation_timer_indexes", "1 change(s) applied"]
    assert QUERY_INDEXES["conversation"] <= {i.name for i in db.get_indexes("conversation")}
    listed = runner.invoke(args=["baton", "migrations"]).output.splitlines()
    assert [line.split()[1] for line in listed] == ["applied"] * len(MIGRATIONS)
    assert runner.invoke(args=["baton", "init-db"]).output.splitlines() == ["schema is up to date"]


def test_init_db_fails_naming_what_the_models_need_and_no_migration_created(runner, app):
    from models import db

    db.execute_sql('ALTER TABLE "delivery" DROP COLUMN "last_error"')
    try:
        result = runner.invoke(args=["baton", "init-db"])
    finally:
        db.execute_sql('ALTER TABLE "delivery" ADD COLUMN "last_error" VARCHAR(500)')
    assert result.exit_code == 1
    assert "schema is up to date" in result.output
    assert "the models need what no migration created: column delivery.last_error" in result.output
    assert runner.invoke(args=["baton", "init-db"]).exit_code == 0
