"""Reservations: a product's payment window, and each order's hold state.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    op.add_column("hotdeal_list", sa.Column("payment_window_s", sa.Integer, nullable=True))
    op.add_column("order_history", sa.Column("state", sa.String(16), nullable=True))
    op.add_column("order_history", sa.Column("expires_at", sa.TIMESTAMP(), nullable=True))
    op.add_column("order_history", sa.Column("settled_at", sa.TIMESTAMP(), nullable=True))
    op.add_column("order_history", sa.Column("change_epoch", sa.Integer, nullable=True))
    op.add_column("order_history", sa.Column("change_seq", sa.BigInteger, nullable=True))
