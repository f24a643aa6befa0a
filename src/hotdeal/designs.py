"""The one vocabulary for the designs: order_history.source, the `design` metric label,
reconcile's report and the docs all use these names."""

from __future__ import annotations

from enum import StrEnum


class Design(StrEnum):
    LEGACY = "legacy"  # the workshop's hot row
    LEGACY_SLOTS = "legacy-slots"  # the DBA's remedy: the stock over N rows
    REDIS = "redis"  # order-redis: the stock in Redis (stream or inline writes)
    # Not an order: the id of an inline take whose row never came, stored so that the
    # row never can (hotdeal.inline); quantity 0, counted by no design.
    VOID = "void"

    @classmethod
    def of_legacy(cls, slots: int) -> Design:
        return cls.LEGACY if slots == 1 else cls.LEGACY_SLOTS
