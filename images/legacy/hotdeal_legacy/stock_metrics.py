"""hotdeal_stock_remaining / hotdeal_stock_initial of the legacy designs, read from the
database (the store of record) at scrape time."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import Metric
from sqlalchemy import Engine, func, select

from hotdeal.metrics import stock_families
from hotdeal.schema import hotdeal_list, hotdeal_slot


def read_stock(engine: Engine, service: str, slots: int) -> Iterable[Metric]:
    remaining, initial = stock_families()
    with engine.connect() as conn:
        heads = conn.execute(
            select(hotdeal_list.c.prod_id, hotdeal_list.c.quantity, hotdeal_list.c.initial_quantity)
        ).all()
        spread = {}
        if slots > 1:
            spread = dict(
                conn.execute(
                    select(hotdeal_slot.c.prod_id, func.sum(hotdeal_slot.c.quantity)).group_by(
                        hotdeal_slot.c.prod_id
                    )
                ).tuples()
            )
    for prod_id, quantity, first in heads:
        left = spread.get(prod_id, quantity) if slots > 1 else quantity
        remaining.add_metric([service, str(prod_id)], float(left))
        initial.add_metric([service, str(prod_id)], float(first))
    yield from (remaining, initial)
