"""The tables chart 0.1.0 created (metadata.create_all, before migrations).

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    op.create_table(
        "hotdeal_list",
        sa.Column("prod_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
        sa.Column("initial_quantity", sa.BigInteger, nullable=False),
        sa.Column("opens_at", sa.TIMESTAMP(timezone=True), nullable=True),
    )
    op.create_table(
        "hotdeal_slot",
        sa.Column("prod_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("slot", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("quantity", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "order_history",
        sa.Column("order_id", sa.String(36), primary_key=True),
        sa.Column("seq", sa.BigInteger, sa.Identity(), nullable=False),
        sa.Column("prod_id", sa.Integer, nullable=False),
        sa.Column("user_id", sa.String(64), nullable=False),
        sa.Column("quantity", sa.Integer, nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("ordered_at", sa.TIMESTAMP(timezone=True), nullable=False),
    )
    op.create_index("ix_order_history_prod_user", "order_history", ["prod_id", "user_id"])
