"""Lock waits as the database itself reports them, read on every scrape.

Oracle (grants: SELECT on V_$SYSTEM_EVENT and V_$SESSION, e.g. via SELECT_CATALOG_ROLE):
- hotdeal_db_wait_events_total{event}, hotdeal_db_wait_seconds_total{event}: from
  v$system_event (total_waits, time_waited_micro), instance-wide since startup.
- hotdeal_db_lock_waiting_sessions{wait_event}: sessions waiting on those events now,
  from v$session.
PostgreSQL (grant: pg_monitor or pg_read_all_stats to see other roles' sessions):
- hotdeal_db_lock_waiting_sessions{wait_event}: sessions of this database waiting on a
  heavyweight lock now (wait_event_type 'Lock': transactionid, tuple, ...), from
  pg_stat_activity.
- hotdeal_db_locks_not_granted{locktype}: lock requests not granted now, from pg_locks.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, column, false, func, select, table

# The hot-row and hot-block events of the workshop.
ORACLE_EVENTS = ("enq: TX - row lock contention", "buffer busy waits")

v_system_event = table(
    "v$system_event", column("event"), column("total_waits"), column("time_waited_micro")
)
v_session = table("v$session", column("event"), column("state"))
pg_stat_activity = table(
    "pg_stat_activity", column("wait_event_type"), column("wait_event"), column("datname")
)
pg_locks = table("pg_locks", column("locktype"), column("granted"), column("database"))
pg_database = table("pg_database", column("oid"), column("datname"))


def oracle_system_events():  # noqa: ANN201 (SQLAlchemy Select)
    return select(
        v_system_event.c.event, v_system_event.c.total_waits, v_system_event.c.time_waited_micro
    ).where(v_system_event.c.event.in_(ORACLE_EVENTS))


def oracle_waiting_sessions():  # noqa: ANN201
    return (
        select(v_session.c.event, func.count())
        .where(v_session.c.state == "WAITING", v_session.c.event.in_(ORACLE_EVENTS))
        .group_by(v_session.c.event)
    )


def pg_waiting_sessions():  # noqa: ANN201
    return (
        select(pg_stat_activity.c.wait_event, func.count())
        .where(
            pg_stat_activity.c.wait_event_type == "Lock",
            pg_stat_activity.c.datname == func.current_database(),
        )
        .group_by(pg_stat_activity.c.wait_event)
    )


def pg_locks_not_granted():  # noqa: ANN201
    ours = select(pg_database.c.oid).where(pg_database.c.datname == func.current_database())
    return (
        select(pg_locks.c.locktype, func.count())
        .where(pg_locks.c.granted == false(), pg_locks.c.database.in_(ours.scalar_subquery()))
        .group_by(pg_locks.c.locktype)
    )


def read_db_waits(engine: Engine) -> Iterable[Metric]:
    waiting = GaugeMetricFamily(
        "hotdeal_db_lock_waiting_sessions",
        "Database sessions waiting on a lock now, by wait event (from the database).",
        labels=["wait_event"],
    )
    backend = engine.dialect.name
    with engine.connect() as conn:
        if backend == "oracle":
            events = CounterMetricFamily(
                "hotdeal_db_wait_events",
                "Waits since instance start (v$system_event).",
                labels=["event"],
            )
            seconds = CounterMetricFamily(
                "hotdeal_db_wait_seconds",
                "Seconds waited since instance start (v$system_event).",
                labels=["event"],
            )
            for event, waits, micros in conn.execute(oracle_system_events()):
                events.add_metric([event], float(waits))
                seconds.add_metric([event], float(micros) / 1e6)
            found = dict(conn.execute(oracle_waiting_sessions()).tuples().all())
            for event in ORACLE_EVENTS:
                waiting.add_metric([event], float(found.get(event, 0)))
            yield from (events, seconds, waiting)
        elif backend == "postgresql":
            found = dict(conn.execute(pg_waiting_sessions()).tuples().all())
            for event in sorted({"transactionid", "tuple", *found}):
                waiting.add_metric([event], float(found.get(event, 0)))
            locks = GaugeMetricFamily(
                "hotdeal_db_locks_not_granted",
                "Lock requests not granted now, by lock type (pg_locks).",
                labels=["locktype"],
            )
            for locktype, n in conn.execute(pg_locks_not_granted()).tuples():
                locks.add_metric([locktype], float(n))
            yield from (waiting, locks)
