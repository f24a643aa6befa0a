"""Schema migrations (Alembic): what `init-db` runs, from any schema the chart shipped.

Chart 0.1.0 and 0.2.0 created their tables with metadata.create_all, which never adds a
column to a table that exists: such a database is recognised by its columns, stamped
with the revision it is at, and migrated from there. Several pods run init-db at once
(an initContainer of each): they take turns on a row lock of hotdeal_schema_lock, so
one migrates and the others then find the schema at head.

Never run against a live Oracle (none runs here): the migrations' Oracle SQL is pinned
by tests/test_migrations.py, and `init-db --sql oracle` prints it for a DBA to review or
run by hand.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from importlib.resources import files

import sqlalchemy.exc
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    Column,
    Connection,
    Engine,
    Integer,
    MetaData,
    Table,
    insert,
    inspect,
    select,
)

from hotdeal.schema import metadata

# One row; an init-db holds its lock while it migrates.
schema_lock = Table(
    "hotdeal_schema_lock",
    MetaData(),
    Column("id", Integer, primary_key=True, autoincrement=False),
)


class SchemaError(RuntimeError):
    """The schema can't be brought to head as it stands; the message says why (exit 2)."""


# A DDL statement refused for want of rights (PostgreSQL, Oracle), or because what it
# makes is there already: the tables are not what their revision says.
NO_RIGHTS = ("42501", "ORA-01031", "ORA-01950")
ALREADY_THERE = ("42P07", "42701", "42710", "ORA-00955", "ORA-01430", "ORA-01408")


def _refusal(exc: Exception, revision: str | None) -> SchemaError | None:
    orig = getattr(exc, "orig", None)
    said = f"{getattr(orig, 'sqlstate', '') or ''} {orig}"
    if any(code in said for code in NO_RIGHTS):
        return SchemaError(
            "the database user may not create or alter tables: give it the rights (CREATE "
            "on the schema; Oracle: CREATE TABLE and a quota), or run the DDL as another "
            "user (`init-db --sql ...`) and set database.initSchema.enabled=false"
        )
    if any(code in said for code in ALREADY_THERE):
        return SchemaError(
            f"the tables are not those of revision {revision or 'none'} (something a "
            "migration adds is there already: a migration interrupted on Oracle, whose DDL "
            "commits itself, or tables changed by hand); compare them with `init-db --sql` "
            "and fix the version in alembic_version"
        )
    return None


@dataclass(frozen=True)
class Migrated:
    was: str | None  # the revision found (None: an empty database)
    now: str


def _config(**attributes: object) -> Config:
    config = Config(output_buffer=attributes.pop("output", None))
    config.set_main_option("script_location", str(files("hotdeal_ops") / "migrations"))
    config.attributes.update(attributes)
    return config


def revisions() -> list[str]:
    """Every revision, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def head() -> str:
    return revisions()[-1]


def shipped_before_migrations(conn: Connection) -> str | None:
    """The revision a create_all'ed database is at, by its columns (None: no tables)."""
    inspector = inspect(conn)
    if not inspector.has_table("hotdeal_list"):
        return None
    columns = {c["name"] for c in inspector.get_columns("hotdeal_list")}
    return "0002" if "fence_epoch" in columns else "0001"  # 0003 came with migrations


def _revision(conn: Connection) -> str | None:
    current = MigrationContext.configure(conn).get_current_revision()
    return current if current is not None else shipped_before_migrations(conn)


def _ensure_lock(engine: Engine) -> None:
    """The lock's table and row; another pod may be creating them at the same moment."""
    for _ in range(3):
        try:
            with engine.begin() as conn:
                schema_lock.create(conn, checkfirst=True)
            with engine.begin() as conn:
                if conn.execute(select(schema_lock.c.id)).first() is None:
                    conn.execute(insert(schema_lock).values(id=1))
            return
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            if not created_meanwhile(exc):
                raise _refusal(exc, None) or exc from exc
    raise SchemaError("hotdeal_schema_lock kept changing while init-db created it")


def created_meanwhile(exc: Exception) -> bool:
    """Another pod created the lock's table (or row) between our check and our write."""
    orig = getattr(exc, "orig", None)
    return getattr(orig, "sqlstate", None) in ("42P07", "23505") or any(
        code in str(orig) for code in ("ORA-00955", "ORA-00001")
    )


def upgrade(engine: Engine) -> Migrated:
    """Bring the schema to head, whatever revision (or none) it is at."""
    _ensure_lock(engine)
    with engine.connect() as holder:
        holder.execute(select(schema_lock.c.id).with_for_update()).all()
        with engine.connect() as conn:
            was = _revision(conn)
            if was is not None and was not in revisions():
                raise SchemaError(
                    f"the database is at revision {was}, newer than this image's "
                    f"{head()}: an older image after a newer one (a rollback?) can't run it"
                )
            config = _config(connection=conn)
            try:
                if MigrationContext.configure(conn).get_current_revision() is None and was:
                    command.stamp(config, was)
                command.upgrade(config, "head")
            except sqlalchemy.exc.DBAPIError as exc:
                raise _refusal(exc, was) or exc from exc
            missing = set(metadata.tables) - set(inspect(conn).get_table_names())
            if missing:
                raise SchemaError(
                    f"alembic_version says {head()}, but tables are missing: "
                    f"{sorted(missing)} (dropped by hand?)"
                )
            conn.commit()
        holder.rollback()
    return Migrated(was, head())


def sql(url: str, start: str | None = None) -> str:
    """The DDL from `start` (None: an empty database) to head, as text (Alembic's
    offline mode), for a DBA who reviews or runs it by hand: a database made by an older
    chart has no version table, so the script makes one at `start` first."""
    out = io.StringIO()
    config = _config(output=out)
    config.set_main_option("sqlalchemy.url", url)
    if start:
        command.stamp(config, start, sql=True)
    command.upgrade(config, f"{start}:head" if start else "head", sql=True)
    if url.startswith("oracle"):
        out.write("COMMIT\n\n/\n\n")  # the version row (DML): Oracle's DDL commits itself
    return out.getvalue()
