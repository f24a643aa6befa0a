"""Alembic's environment: hotdeal_ops.migrate hands over a connection (init-db), or
asks for SQL text only (`init-db --sql`, for a DBA who runs DDL by hand)."""

from alembic import context

from hotdeal.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    context.configure(
        url=context.config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        # Without a primary key the Oracle dialect renders the version row's INSERT
        # without "RETURNING ... INTO :ret_0", which SQL*Plus can't run.
        version_table_pk=False,
    )
else:
    context.configure(connection=connection, target_metadata=metadata)
with context.begin_transaction():
    context.run_migrations()
