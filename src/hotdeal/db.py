"""Engine construction shared by the services and the ops job."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from sqlalchemy import Connection, Engine, Table, create_engine, false, select
from sqlalchemy.engine import make_url

from hotdeal.config import Settings
from hotdeal.errors import CommitUnknown


def make_engine(url: str, *, pool_size: int = 5, connect_timeout_s: int = 2) -> Engine:
    """An engine that fails fast when the database is down instead of hanging a request."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "postgresql":
        connect_args["connect_timeout"] = connect_timeout_s
    elif backend == "oracle":
        connect_args["tcp_connect_timeout"] = connect_timeout_s
    return create_engine(
        parsed,
        pool_size=pool_size,
        max_overflow=pool_size,
        # A request waiting for a pooled connection longer than this answers 503.
        pool_timeout=connect_timeout_s * 2,
        # Detects connections killed by a database restart so the next request recovers.
        pool_pre_ping=True,
        # Errors and logs must not carry order parameters (user ids) into log files.
        hide_parameters=True,
        connect_args=connect_args,
    )


def engine_from_settings(settings: Settings, *, pool_size: int | None = None) -> Engine:
    """`pool_size`: what the process needs (one per gunicorn thread) unless
    HOTDEAL_DB_POOL_SIZE says otherwise."""
    return make_engine(
        settings.need_database(),
        pool_size=settings.db_pool_size or pool_size or 5,
        connect_timeout_s=settings.db_connect_timeout_s,
    )


def table_reachable(engine: Engine, table: Table) -> None:
    """Readiness: the database answers and our schema is there (reads no rows)."""
    with engine.connect() as conn:
        conn.execute(select(table.c[0]).where(false())).all()


@contextlib.contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """engine.begin(), except that a failed COMMIT raises CommitUnknown: it may have
    committed (the reply is what got lost), so the caller must not answer "nothing was
    sold" or undo anything before it knows. A failure before COMMIT rolls back."""
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        except BaseException:
            with contextlib.suppress(Exception):
                trans.rollback()
            raise
        try:
            trans.commit()
        except Exception as exc:
            raise CommitUnknown() from exc
