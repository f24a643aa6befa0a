"""Chart 0.2.0: events (generation), the rollback fence (fence_epoch, take_epoch,
take_seq), Idempotency-Keys in the history, longer order ids, and times stored as naive
UTC (hotdeal.schema.UtcDateTime) instead of TIMESTAMP WITH TIME ZONE.

Rows of 0.1.0 belong to event 1, the generation every product of 0.1.0 is then at.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def _event_column(table: str, name: str) -> None:
    # NOT NULL needs a value for the existing rows (event 1), and the default stays: the
    # 0.1.0 pods still running during the rollout insert rows without it.
    op.add_column(table, sa.Column(name, sa.Integer, nullable=False, server_default=sa.text("1")))


def _to_naive_utc(table: str, column: str, *, nullable: bool) -> None:
    """TIMESTAMP WITH TIME ZONE -> TIMESTAMP holding the same instant in UTC."""
    if op.get_context().dialect.name == "oracle":
        # Oracle changes a column's type only while it is empty (ORA-01439): copy it.
        staged = f"{column}_utc"
        op.add_column(table, sa.Column(staged, sa.TIMESTAMP(timezone=False)))
        op.execute(f"UPDATE {table} SET {staged} = SYS_EXTRACT_UTC({column})")
        op.drop_column(table, column)
        op.alter_column(table, staged, new_column_name=column, existing_type=sa.TIMESTAMP())
        if not nullable:
            op.alter_column(table, column, nullable=False, existing_type=sa.TIMESTAMP())
        return
    op.alter_column(
        table,
        column,
        type_=sa.TIMESTAMP(timezone=False),
        existing_type=sa.TIMESTAMP(timezone=True),
        existing_nullable=nullable,
        postgresql_using=f"{column} AT TIME ZONE 'UTC'",
    )


def upgrade() -> None:
    _event_column("hotdeal_list", "generation")
    _event_column("hotdeal_list", "fence_epoch")
    _to_naive_utc("hotdeal_list", "opens_at", nullable=True)
    _event_column("hotdeal_slot", "generation")
    op.alter_column(
        "order_history",
        "order_id",
        type_=sa.String(48),
        existing_type=sa.String(36),
        existing_nullable=False,
    )
    _event_column("order_history", "generation")
    _to_naive_utc("order_history", "ordered_at", nullable=False)
    op.add_column("order_history", sa.Column("take_epoch", sa.Integer, nullable=True))
    op.add_column("order_history", sa.Column("take_seq", sa.BigInteger, nullable=True))
    op.add_column("order_history", sa.Column("idempotency_key", sa.String(128), nullable=True))
    op.create_index(
        "ix_order_history_prod_gen", "order_history", ["prod_id", "generation", "take_seq"]
    )
