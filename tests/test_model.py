"""The Redis order model has one owner (hotdeal.model): the take script's records are
what its codecs read and rebuild, and every refusal the script returns is an outcome."""

from __future__ import annotations

import re
from importlib.resources import files

from hotdeal import errors
from hotdeal.model import keys
from hotdeal.model.records import Sale, StreamEntry, parse_index_record
from hotdeal.redis_client import make_redis
from hotdeal.validation import OrderRequest
from hotdeal_order_redis.stock import REFUSALS, RedisStock

TAKE = files("hotdeal_order_redis").joinpath("take_stock.lua").read_text()


def test_every_refusal_of_the_take_script_is_an_outcome():
    statuses = set(re.findall(r'return \{"([a-z_]+)"', TAKE))
    assert statuses - {"ok", "replay"} == set(REFUSALS)
    order = OrderRequest(1, "u", 1)
    for status, refusal in REFUSALS.items():
        answer = refusal(["1700000000000", "1 2"], order, 2)
        assert answer.code in errors.OUTCOMES, status
        assert answer.status == errors.OUTCOMES[answer.code].status, status


def test_the_take_scripts_records_are_the_models(event):
    ev = event(stock=5)
    stock = RedisStock(make_redis(ev.env["HOTDEAL_REDIS_URL"]), write="stream")
    order = OrderRequest(1, "buyer-1", 2)
    taken = stock.take(order, limit=4, idempotency_key="k-1")
    client = ev.client()

    ((_, fields),) = client.xrange(keys.orders_stream(1))
    entry = StreamEntry.parse(fields)
    assert (entry.order_id, entry.user_id, entry.quantity) == (taken.order_id, "buyer-1", 2)
    books = client.hgetall(keys.books(1))
    assert (entry.epoch, entry.seq) == (int(books[keys.EPOCH]), int(books[keys.SEQ]))
    assert entry.idempotency_key == "k-1" and entry.at_ms == int(taken.ordered_at_ms)
    row = entry.row()
    assert row.ordered_at == taken.ordered_at and row.take_seq == entry.seq

    sale = entry.sale()
    indexed = client.hget(keys.orders(1), taken.order_id)
    assert indexed == sale.index_record()
    assert parse_index_record(taken.order_id, indexed) == Sale(
        taken.order_id, "buyer-1", 2, entry.at_ms, None
    )
    record = client.hgetall(keys.idempotency(1, "buyer-1", "k-1"))
    rebuilt = {k: str(v) for k, v in sale.idempotency_record(remaining=3).items()}
    assert rebuilt.items() <= record.items()  # the take's record also carries its epoch
    assert client.hget(keys.buyer_orders(1), "buyer-1") == taken.order_id


def test_the_scripts_pause_reasons_are_the_fences():
    """The writer repairs books paused for a reason it knows (hotdeal.fence.REPAIRABLE):
    the scripts' reasons start with those prefixes, written out in Lua."""
    from hotdeal import fence

    scripts = files("hotdeal_order_redis")
    for name in ("take_stock.lua", "hold.lua"):
        text = scripts.joinpath(name).read_text()
        reasons = re.findall(r'(?:local reason = |"paused", )"([a-z]+: )', text)
        assert reasons and set(reasons) <= set(fence.REPAIRABLE), (name, reasons)
