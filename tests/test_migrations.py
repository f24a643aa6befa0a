"""init-db migrates the schema (Alembic) from an empty database and from every schema a
chart shipped, on a real PostgreSQL; the Oracle DDL is pinned as text (no Oracle here)."""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import (
    TIMESTAMP,
    BigInteger,
    Column,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    insert,
    select,
    text,
)

from hotdeal.schema import hotdeal_list, metadata, order_history
from hotdeal_local.servers import RedisServer, ops
from hotdeal_ops import migrate

from .helpers import init_db_at_once, workdir

_names = itertools.count()
KST = timezone(timedelta(hours=9))
PRODUCT = 901  # no other test's: reset looks at its Redis keys first


def chart_0_1_0() -> MetaData:
    """The tables chart 0.1.0's init-db made (metadata.create_all of that version)."""
    old = MetaData()
    Table(
        "hotdeal_list",
        old,
        Column("prod_id", Integer, primary_key=True, autoincrement=False),
        Column("quantity", BigInteger, nullable=False),
        Column("initial_quantity", BigInteger, nullable=False),
        Column("opens_at", TIMESTAMP(timezone=True), nullable=True),
    )
    Table(
        "hotdeal_slot",
        old,
        Column("prod_id", Integer, primary_key=True, autoincrement=False),
        Column("slot", Integer, primary_key=True, autoincrement=False),
        Column("quantity", BigInteger, nullable=False),
    )
    Table(
        "order_history",
        old,
        Column("order_id", String(36), primary_key=True),
        Column("seq", BigInteger, Identity(), nullable=False),
        Column("prod_id", Integer, nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("quantity", Integer, nullable=False),
        Column("source", String(16), nullable=False),
        Column("ordered_at", TIMESTAMP(timezone=True), nullable=False),
        Index("ix_order_history_prod_user", "prod_id", "user_id"),
    )
    return old


def chart_0_2_0() -> MetaData:
    """The tables chart 0.2.0's init-db made (create_all, before migrations)."""
    old = MetaData()
    Table(
        "hotdeal_list",
        old,
        Column("prod_id", Integer, primary_key=True, autoincrement=False),
        Column("quantity", BigInteger, nullable=False),
        Column("initial_quantity", BigInteger, nullable=False),
        Column("opens_at", TIMESTAMP(), nullable=True),
        Column("generation", Integer, nullable=False),
        Column("fence_epoch", Integer, nullable=False),
    )
    Table(
        "hotdeal_slot",
        old,
        Column("prod_id", Integer, primary_key=True, autoincrement=False),
        Column("slot", Integer, primary_key=True, autoincrement=False),
        Column("quantity", BigInteger, nullable=False),
        Column("generation", Integer, nullable=False),
    )
    Table(
        "order_history",
        old,
        Column("order_id", String(48), primary_key=True),
        Column("seq", BigInteger, Identity(), nullable=False),
        Column("prod_id", Integer, nullable=False),
        Column("generation", Integer, nullable=False),
        Column("user_id", String(64), nullable=False),
        Column("quantity", Integer, nullable=False),
        Column("source", String(16), nullable=False),
        Column("ordered_at", TIMESTAMP(), nullable=False),
        Column("take_epoch", Integer, nullable=True),
        Column("take_seq", BigInteger, nullable=True),
        Column("idempotency_key", String(128), nullable=True),
        Index("ix_order_history_prod_user", "prod_id", "user_id"),
        Index("ix_order_history_prod_gen", "prod_id", "generation", "take_seq"),
    )
    return old


@pytest.fixture
def own_redis() -> Iterator[str]:
    """A Redis of the test's own: the products it makes must not show in the shared
    one's gauges (a stock of product 901 once did, in test_observability)."""
    server = RedisServer(workdir("migrate-redis")).start()
    try:
        yield server.url
    finally:
        server.stop(signal.SIGKILL)


@pytest.fixture
def database(pg_server) -> str:
    return pg_server.new_database(f"migrate_{os.getpid()}_{next(_names)}")


def init_db(url: str) -> dict:
    return json.loads(ops({"HOTDEAL_DATABASE_URL": url}, "init-db").stdout)


def schema_drift(url: str) -> list:
    """What differs between the database and hotdeal.schema (nothing, after init-db)."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), metadata)
            revision = MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
    assert revision == migrate.head()
    return [d for d in diff if not (d[0] == "remove_table" and d[1].name == "hotdeal_schema_lock")]


def test_an_empty_database_gets_this_schema(database):
    assert init_db(database)["schema"] == {"was": None, "now": migrate.head()}
    assert schema_drift(database) == []
    assert init_db(database)["schema"] == {"was": migrate.head(), "now": migrate.head()}


def test_a_chart_0_2_0_database_is_recognised_and_kept(database):
    """0.2.0 made its tables with create_all and no version table."""
    engine = create_engine(database)
    old = chart_0_2_0()
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(old.tables["hotdeal_list"]).values(
                prod_id=1, quantity=5, initial_quantity=5, generation=3, fence_epoch=7
            )
        )
    engine.dispose()
    assert init_db(database)["schema"]["was"] == "0002"
    assert schema_drift(database) == []
    engine = create_engine(database)
    with engine.connect() as conn:
        head = conn.execute(select(hotdeal_list)).one()
    engine.dispose()
    assert (head.generation, head.fence_epoch, head.payment_window_s) == (3, 7, None)


def test_a_chart_0_1_0_database_keeps_its_orders_in_event_1(database, own_redis):
    """create_all never added 0.2.0's columns to 0.1.0's tables: the services failed on
    them. The migration adds them, keeps every row (in event 1, the generation each
    product is then at) and every instant (stored with a zone, now as UTC)."""
    engine = create_engine(database)
    old = chart_0_1_0()
    old.create_all(engine)
    opens = datetime(2026, 12, 24, 20, 0, tzinfo=KST)
    ordered = datetime(2026, 12, 24, 20, 0, 1, 500000, tzinfo=KST)
    with engine.begin() as conn:
        conn.execute(
            insert(old.tables["hotdeal_list"]).values(
                prod_id=PRODUCT, quantity=9, initial_quantity=10, opens_at=opens
            )
        )
        conn.execute(
            insert(old.tables["order_history"]).values(
                order_id="901-0b5e",
                prod_id=PRODUCT,
                user_id="u1",
                quantity=1,
                source="redis",
                ordered_at=ordered,
            )
        )
    engine.dispose()
    assert init_db(database)["schema"] == {"was": "0001", "now": migrate.head()}
    assert schema_drift(database) == []
    engine = create_engine(database)
    with engine.connect() as conn:
        head = conn.execute(select(hotdeal_list)).one()
        row = conn.execute(select(order_history)).one()
    engine.dispose()
    assert (head.generation, head.fence_epoch, head.opens_at) == (1, 1, opens.astimezone(UTC))
    assert (row.generation, row.take_epoch, row.idempotency_key) == (1, None, None)
    assert row.ordered_at == ordered.astimezone(UTC)
    # The migrated orders are the current event's: a reset without --discard-orders
    # refuses to delete them.
    env = {"HOTDEAL_REDIS_URL": own_redis, "HOTDEAL_DATABASE_URL": database}
    refused = ops(env, "reset", "--product", str(PRODUCT), "--stock", "5", check=False)
    assert refused.returncode == 1 and "holds 1 orders" in refused.stderr


def test_several_pods_migrate_a_chart_0_1_0_database_at_once(database):
    engine = create_engine(database)
    chart_0_1_0().create_all(engine)
    engine.dispose()
    results = init_db_at_once({**os.environ, "HOTDEAL_DATABASE_URL": database}, 4)
    assert all(code == 0 for code, _ in results), results
    assert schema_drift(database) == []


def test_the_oracle_ddl_copies_zoned_times_to_utc_columns():
    """Oracle changes a column's type only while it is empty (ORA-01439), so 0.1.0's
    TIMESTAMP WITH TIME ZONE columns are copied; never run against a live Oracle."""
    ddl = " ".join(migrate.sql("oracle+oracledb://", "0001").split())
    assert "ALTER TABLE order_history ADD ordered_at_utc TIMESTAMP" in ddl
    assert "UPDATE order_history SET ordered_at_utc = SYS_EXTRACT_UTC(ordered_at)" in ddl
    assert "ALTER TABLE order_history RENAME COLUMN ordered_at_utc TO ordered_at" in ddl
    assert "ALTER TABLE order_history MODIFY ordered_at NOT NULL" in ddl
    assert "ALTER TABLE order_history MODIFY order_id VARCHAR2(48 CHAR)" in ddl
    assert "ALTER TABLE hotdeal_list ADD generation INTEGER DEFAULT 1 NOT NULL" in ddl
    assert "AT TIME ZONE" not in ddl and "USING" not in ddl
    fresh = " ".join(migrate.sql("oracle+oracledb://").split())
    assert "seq NUMBER(19) GENERATED BY DEFAULT AS IDENTITY" in fresh
    # A helper's review: the version row's INSERT carried "RETURNING ... INTO :ret_0"
    # (SQL*Plus can't run it), --from never made the version table 0.1.0 lacks, and the
    # last UPDATE was never committed.
    for script in (ddl, fresh):
        assert script.startswith("CREATE TABLE alembic_version")
        assert "RETURNING" not in script and script.rstrip(" /").endswith("COMMIT")
    assert "INSERT INTO alembic_version (version_num) VALUES ('0001')" in ddl


def test_init_db_prints_the_ddl_for_a_dba_without_a_database():
    oracle = ("init-db", "--sql", "oracle+oracledb")
    done = ops({"HOTDEAL_DATABASE_URL": ""}, *oracle, "--from", "0001")
    assert "SYS_EXTRACT_UTC" in done.stdout
    wrong = ops({}, *oracle, "--from", "0009", check=False)
    assert wrong.returncode == 2 and "no revision" in wrong.stderr


def test_tables_that_are_not_their_revisions_stop_init_db_with_a_reason(database):
    """A helper's find: "already exists" from a migration looped init-db forever at full
    CPU, silently (a 0.1.0 database with 0.2.0's index made by hand)."""
    engine = create_engine(database)
    chart_0_1_0().create_all(engine)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE order_history ADD COLUMN generation INTEGER"))
    engine.dispose()
    done = ops({"HOTDEAL_DATABASE_URL": database}, "init-db", check=False, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "not those of revision 0001" in done.stderr and "Traceback" not in done.stderr


def test_a_newer_revision_or_missing_rights_stop_init_db_with_a_reason(database):
    """Both were "internal error" (exit 4: "a bug, please report it")."""
    assert init_db(database)["schema"]["now"] == migrate.head()
    role = f"weak_{os.getpid()}_{next(_names)}"  # roles are the server's, not the database's
    engine = create_engine(database)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        conn.execute(text(f"CREATE ROLE {role} LOGIN"))
    engine.dispose()
    newer = ops({"HOTDEAL_DATABASE_URL": database}, "init-db", check=False)
    assert newer.returncode == 2 and "newer than this image's" in newer.stderr, newer.stderr
    weak = database.replace("postgres@", f"{role}@")
    refused = ops({"HOTDEAL_DATABASE_URL": weak}, "init-db", check=False)
    assert refused.returncode == 2 and "may not create" in refused.stderr, refused.stderr


def test_migrated_chart_0_1_0_orders_reconcile_clean(database, own_redis):
    """0.1.0's rows have no take numbers: reconcile took them all for one take "sold
    twice" (a helper's find)."""
    engine = create_engine(database)
    old = chart_0_1_0()
    old.create_all(engine)
    with engine.begin() as conn:
        conn.execute(
            insert(old.tables["hotdeal_list"]).values(
                prod_id=PRODUCT,
                quantity=10,
                initial_quantity=10,  # legacy sold none
            )
        )
        for n in range(2):
            conn.execute(
                insert(old.tables["order_history"]).values(
                    order_id=f"0b5e-{n}",
                    prod_id=PRODUCT,
                    user_id=f"u{n}",
                    quantity=1,
                    source="redis",
                    ordered_at=datetime.now(UTC),
                )
            )
    engine.dispose()
    init_db(database)
    env = {"HOTDEAL_REDIS_URL": own_redis, "HOTDEAL_DATABASE_URL": database}
    ops(env, "repair", "--product", str(PRODUCT))
    done = ops(env, "reconcile", "--product", str(PRODUCT), check=False)
    report = json.loads(done.stdout)
    assert done.returncode == 0, report["violations"]
    assert report["redis"]["persisted"] == 2


def test_a_writer_reads_past_chart_0_1_0s_stream_names(event):
    """A helper's find: 0.1.0's "prod-001-orders" in the streams registry stopped every
    books check of the writer (a ValueError on its name). It is left alone, loudly."""
    from hotdeal.model import keys
    from hotdeal_order_redis.writer import OrderWriter

    ev = event(stock=5)
    client = ev.client()
    client.sadd(keys.STREAMS, "prod-001-orders")
    client.xadd("prod-001-orders", {"user_id": "old", "quantity": "1"})
    engine = create_engine(ev.env["HOTDEAL_DATABASE_URL"])
    try:
        writer = OrderWriter(client, engine, consumer="upgrade", durability_mode="none")
        writer.check_s = 0  # check the books on every round
        assert writer.streams() == [keys.orders_stream(1)]
        for _ in range(2):  # each ends with the books' check (it raised on the name)
            writer.run_once()
    finally:
        engine.dispose()
    assert client.xlen("prod-001-orders") == 1  # its entries wait for that version's writer
