"""The states of an order under reservations (hotdeal.model)."""


class HoldState:
    """An order's state under reservations (None: an outright sale). A hold is RESERVED
    until its deadline; then exactly one of the others, for good."""

    RESERVED = "reserved"
    CONFIRMED = "confirmed"
    EXPIRED = "expired"  # not confirmed by its deadline: the units went back
    CANCELLED = "cancelled"  # released by the buyer or a service: the units went back
    RELEASED = frozenset({EXPIRED, CANCELLED})
    ALL = (RESERVED, CONFIRMED, EXPIRED, CANCELLED)
