"""Rollback fencing: Redis's books may never go backwards behind what was answered or
persisted, and they are rebuilt from the database when they did.

Every take gets the next number (epoch, seq) in Redis's books (`seq` counts takes,
`epoch` is bumped by every reset and repair). It travels with the order into
order_history (take_epoch, take_seq). Redis only moves forward, so while its books are
intact:
- every server that answered 201 for take (e, s) finds the books at >= (e, s): the
  take script compares with what the caller passes (hotdeal_order_redis.seen, shared by
  the server's workers) and pauses the product otherwise;
- every order in order_history of the current generation is at <= the books' (epoch,
  seq), and its units are <= `sold` + `released` (the writer checks after each batch and every few
  seconds, see `check`).
If Redis came back older (a restart from an older AOF, a failover to a lagging replica,
a restore, a hand edit) one of these fails first, the product is paused (503 `paused`,
`hotdeal_sales_paused`), and `repair` rebuilds the books from the database: stock,
sold, buyers, the order index and Idempotency-Keys, with a new epoch. A unit the
database holds is therefore never sold again.

A server that answered none of the forgotten takes can't see the first case, so the
books also carry the run_id of the Redis server they were last checked on
(`validated`). A restart, a restore and a failover all bring another run_id, and the
take script sells nothing on books checked elsewhere (503 `paused`, "validating")
until `validate` has compared them with the database on this server: whichever pod
takes the next order, and before the first sale. A Redis that came back without a
product's books is restored from `hotdeal_list` and `order_history` the same way.

Dead-lettered orders were answered 201 and took their units: they count as sold here
(repair rebuilds them into the books) as they do in reconcile.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from importlib.resources import files
from typing import Any

import redis
from sqlalchemy import Engine, func, select, update

from hotdeal.designs import Design
from hotdeal.inline import InlineTakes
from hotdeal.model import keys, product
from hotdeal.model.records import HoldState, Sale, StreamEntry, at_ms, change_entry
from hotdeal.redis_client import Client, is_cluster, node_client, primaries
from hotdeal.schema import hotdeal_list, order_history

ROLLBACK = "rollback: "
# Books a script found at odds with themselves (hold.lua: a hold left half-settled by an
# error): rebuilt from the database like a rollback.
BROKEN = "broken: "
REPAIRABLE = (ROLLBACK, BROKEN)
_SCRIPT = files(__package__).joinpath("fence.lua").read_text()


class RepairError(RuntimeError):
    """The books can't be repaired right now; the message says why."""


@dataclass(frozen=True)
class DatabaseMarks:
    generation: int
    units: int
    epoch: int  # highest take_epoch persisted (0: none)
    seq: int  # highest take_seq within that epoch


def database_marks(engine: Engine, pid: int, generation: int) -> DatabaseMarks:
    """What order_history holds of Redis's sales in this event (legacy sales are not):
    the units ever taken (released holds' too: Redis counts them in `released`) and the
    newest take or change."""
    rows = order_history.c
    ours = (rows.prod_id == pid, rows.generation == generation, rows.source == Design.REDIS)
    with engine.connect() as conn:
        units = conn.execute(
            select(func.coalesce(func.sum(rows.quantity), 0)).where(*ours)
        ).scalar_one()
        newest = (0, 0)
        for epoch_column, seq_column in (
            (rows.take_epoch, rows.take_seq),
            (rows.change_epoch, rows.change_seq),
        ):
            epoch = conn.execute(select(func.max(epoch_column)).where(*ours)).scalar_one()
            if epoch is not None:
                seq = conn.execute(
                    select(func.max(seq_column)).where(*ours, epoch_column == epoch)
                ).scalar_one()
                newest = max(newest, (int(epoch), int(seq or 0)))
    return DatabaseMarks(generation, int(units), *newest)


def _fence(client: Client, pid: int, *args: object) -> object:
    """fence.lua on the product's server."""
    instance = keys.instance_placeholder(pid) if is_cluster(client) else keys.INSTANCE
    node = node_client(client, keys.books(pid))
    return node.eval(_SCRIPT, 2, keys.books(pid), instance, *args)


def run_id(client: Client, pid: int) -> str:
    """The run_id of the server holding `pid`'s books (new at every start)."""
    return str(_fence(client, pid, "whoami"))


def pause(
    client: Client, pid: int, reason: str, *, judged: Mapping[str, str] | None = None
) -> bool:
    """Stop selling `pid` (the first reason is kept). False if the product has no books,
    or, with `judged` (the books the reason was found in), if the books are no longer
    of that generation and epoch: a repair, reset or check made new ones meanwhile, and
    pausing them for the old ones' fault would stop a healthy sale (with auto-repair
    off, until an operator came). Works on a full Redis too (fence.lua is allowed past
    maxmemory)."""
    marks: tuple[object, ...] = ()
    if judged is not None:
        marks = (judged.get(keys.GENERATION, 0), judged.get(keys.EPOCH, 0))
    return _fence(client, pid, "pause", reason, *marks) == 1


def stamp(client: Client, pid: int, server: str, generation: int, epoch: int) -> bool:
    """The books of `generation` are checked on server `server` and sell from `epoch`
    on (refused if it is not the server any more, or the books moved meanwhile)."""
    return _fence(client, pid, "stamp", server, generation, epoch) == 1


def _next_epoch(engine: Engine, pid: int, books_epoch: int) -> int:
    """A new epoch past the books' and the database's, recorded in the database first:
    books anywhere that are still below it were made before this check."""
    with engine.begin() as conn:
        fence_epoch = conn.execute(
            select(hotdeal_list.c.fence_epoch)
            .where(hotdeal_list.c.prod_id == pid)
            .with_for_update()
        ).scalar_one()
        epoch = max(books_epoch, int(fence_epoch)) + 1
        conn.execute(
            update(hotdeal_list).where(hotdeal_list.c.prod_id == pid).values(fence_epoch=epoch)
        )
    return epoch


def behind(books: dict[str, str], marks: DatabaseMarks) -> str | None:
    """Why Redis's books are behind the database's (None: they are not)."""
    epoch, seq, sold, released = (
        int(books.get(k, 0)) for k in (keys.EPOCH, keys.SEQ, keys.SOLD, keys.RELEASED)
    )
    sold += released  # ever taken: grows as the database's rows do
    if (marks.epoch, marks.seq) > (epoch, seq):
        return (
            f"{ROLLBACK}books at {epoch}/{seq} but order_history holds take "
            f"{marks.epoch}/{marks.seq}"
        )
    if marks.units > sold:
        return f"{ROLLBACK}books sold {sold} but order_history holds {marks.units} units"
    return None


def check(engine: Engine, client: Client, pid: int) -> str | None:
    """Pause `pid` if Redis's books are behind the database; returns the reason.

    The database is read first, Redis second: Redis only moves forward, so books read
    later must cover every order read before (the other order would see orders taken
    between the two reads and pause a healthy product)."""
    with engine.connect() as conn:
        generation = conn.execute(
            select(hotdeal_list.c.generation).where(hotdeal_list.c.prod_id == pid)
        ).scalar()
    if generation is None:
        return None
    marks = database_marks(engine, pid, generation)
    books = client.hgetall(keys.books(pid))
    if not books or keys.PAUSED in books:
        return books.get(keys.PAUSED) if books else None
    if int(books.get(keys.GENERATION, 0)) != generation:
        return None  # a reset is under way
    reason = behind(books, marks)
    if reason and pause(client, pid, reason, judged=books):
        return reason
    return None


def _head(engine: Engine, pid: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        head = conn.execute(
            select(
                hotdeal_list.c.initial_quantity,
                hotdeal_list.c.generation,
                hotdeal_list.c.fence_epoch,
                hotdeal_list.c.opens_at,
                hotdeal_list.c.payment_window_s,
            ).where(hotdeal_list.c.prod_id == pid)
        ).first()
    return head._asdict() if head else None


def _persisted(engine: Engine, pid: int, generation: int) -> list[Sale]:
    rows = order_history.c
    with engine.connect() as conn:
        found = conn.execute(
            select(
                rows.order_id,
                rows.user_id,
                rows.quantity,
                rows.ordered_at,
                rows.idempotency_key,
                rows.state,
                rows.expires_at,
                rows.take_epoch,
                rows.take_seq,
            )
            .where(
                rows.prod_id == pid,
                rows.generation == generation,
                rows.source == Design.REDIS,
            )
            .order_by(rows.seq)
        ).all()
    return [
        Sale(
            r.order_id,
            r.user_id,
            int(r.quantity),
            at_ms(r.ordered_at),
            r.idempotency_key,
            r.state,
            at_ms(r.expires_at) if r.expires_at is not None else None,
            (int(r.take_epoch or 0), int(r.take_seq or 0)),
        )
        for r in found
    ]


def dead_letters(client: Client, pid: int, generation: int) -> list[Sale]:
    """Orders of this event the writers set aside (answered, never stored), and the
    changes of holds they could not store, in the order they were made."""
    found = []
    for _, fields in client.xrange(keys.dead_letter(pid)):
        try:
            entry = StreamEntry.parse(fields)
        except (KeyError, ValueError):
            continue  # malformed: it never took stock through the take script
        if entry.generation == generation:
            found.append(entry.sale())
    return found


def _with_dead_letters(sales: list[Sale], dead: list[Sale]) -> list[Sale]:
    """The database's sales, and the dead letters': an order once, however often it
    was set aside, in the newest state known (a hold settles once: the settled state
    wins over "reserved")."""
    by_id = {s.order_id: s for s in sales}
    for sale in dead:
        known = by_id.get(sale.order_id)
        if known is None or (known.state == HoldState.RESERVED and sale.state != known.state):
            by_id[sale.order_id] = sale
    return list(by_id.values())


def repair(
    engine: Engine,
    client: Client,
    pid: int,
    *,
    idempotency_ttl_s: int = 86400,
    drain_timeout_s: float = 0,
) -> dict[str, Any]:
    """`rebuild`, again if another repairer (a writer's auto-repair, an operator)
    changed the books between its read and its transaction."""
    for attempt in (1, 2, 3):
        try:
            return _rebuild_books(engine, client, pid, idempotency_ttl_s, drain_timeout_s)
        except redis.WatchError:
            if attempt == 3:
                raise RepairError(
                    "the books kept changing while repairing: run repair again"
                ) from None
    raise AssertionError("unreachable")


def _rebuild_books(
    engine: Engine, client: Client, pid: int, idempotency_ttl_s: int, drain_timeout_s: float
) -> dict[str, Any]:
    """Rebuild Redis's books of `pid` from hotdeal_list, order_history and the
    dead-letter stream, and resume selling.

    Selling is paused first (books that are gone sell nothing already); then every
    order still in the stream must reach the database (a writer drains it; wait up to
    `drain_timeout_s`), so the database holds every order Redis still knows of. The
    books are rebuilt for the database's event, in one transaction that aborts if
    anything changed meanwhile, and marked checked on this server."""
    books_key = keys.books(pid)
    stream = keys.orders_stream(pid)
    head = _head(engine, pid)
    if head is None:
        raise RepairError(f"product {pid} is not in hotdeal_list (run reset)")
    server = run_id(client, pid)
    pause(client, pid, f"{ROLLBACK}repair requested")
    deadline = time.monotonic() + drain_timeout_s
    while waiting := _unsettled(engine, client, pid):
        if time.monotonic() >= deadline:
            raise RepairError(f"product {pid}: {waiting}; the books can't be rebuilt yet")
        time.sleep(0.2)
    books = client.hgetall(books_key)
    if int(books.get(keys.GENERATION, 0)) > head["generation"]:
        raise RepairError(
            f"Redis's books are of event {books[keys.GENERATION]}, the database's of "
            f"{head['generation']}: the database is behind Redis (restored?); run reset"
        )
    sales = _with_dead_letters(
        _persisted(engine, pid, head["generation"]),
        dead_letters(client, pid, head["generation"]),
    )
    initial = int(head["initial_quantity"])
    sales, lost = _released_in_lost_history(sales, initial)
    units = product.units_of(sales)
    marks = database_marks(engine, pid, head["generation"])
    epoch = max(int(books.get(keys.EPOCH, 0)), head["fence_epoch"], marks.epoch) + 1
    seq = max(int(books.get(keys.SEQ, 0)), marks.seq)
    with engine.begin() as conn:  # the database remembers the epoch: Redis may roll back
        conn.execute(
            update(hotdeal_list).where(hotdeal_list.c.prod_id == pid).values(fence_epoch=epoch)
        )
    # Never below zero: units sold beyond the stock stay visible in `sold` (and
    # reconcile reports them), but nothing more is sold (no hold is left to give any back).
    remaining = max(initial - units.taken, 0)
    _register(client, pid)
    # Keys of takes the database does not hold (an older event's, after a restore) must
    # not replay; the product sells nothing meanwhile, so none is made while we look.
    stale_keys = list(client.scan_iter(match=keys.idempotency_pattern(pid), count=1000))
    with client.pipeline(transaction=True) as pipe:
        pipe.watch(books_key, stream)
        if pipe.xlen(stream) or pipe.hget(books_key, keys.SEQ) != books.get(keys.SEQ):
            raise RepairError("the books changed while repairing: run repair again")
        pipe.multi()
        # The inline takes go too: the database holds what they settle into.
        pipe.delete(*product.derived(pid))
        for start in range(0, len(stale_keys), 500):
            pipe.delete(*stale_keys[start : start + 500])
        product.rebuild(pipe, pid, sales, remaining, idempotency_ttl_s)
        # Their releases, for the writers to store (the database holds them reserved).
        now_ms = int(time.time() * 1000)
        for sale in lost:
            seq += 1
            change = change_entry(sale, pid, head["generation"], (epoch, seq), now_ms)
            pipe.xadd(stream, change)
        fields = product.fresh(
            remaining=remaining,
            initial=initial,
            sold=units.taken,
            seq=seq,
            epoch=epoch,
            generation=head["generation"],
            opens_at=head["opens_at"],
            server=server,
            window_s=head["payment_window_s"],
            held=units.held,
            released=units.released,
        )
        pipe.hset(books_key, mapping=fields)
        pipe.hdel(books_key, keys.PAUSED)
        pipe.execute()
    return {
        "product_id": pid,
        "repaired": True,
        "was": books.get(keys.PAUSED) if books else "no books in Redis",
        "generation": head["generation"],
        "epoch": epoch,
        "seq": seq,
        "sold": units.taken,
        "remaining": remaining,
        "orders": len(sales),
        "oversold": max(units.taken - initial, 0),
    }


def _released_in_lost_history(sales: list[Sale], initial: int) -> tuple[list[Sale], list[Sale]]:
    """Holds the database still holds reserved although they were released: with
    several writers the database is not a prefix of Redis's history (one stored a later
    take of a unit while another had not yet stored the release that freed it), and a
    rollback may lose the release. Redis never took more than the stock, so while the
    holds and sales would take more, the oldest holds were released: they are released
    again (expired: a payment for one is refused) instead of being revived and sold
    twice (a helper's attack: a cancelled hold came back and was confirmed)."""
    excess = product.units_of(sales).taken - initial
    if excess <= 0:
        return sales, []
    holds = sorted(
        (s for s in sales if s.state == HoldState.RESERVED), key=lambda s: (s.at_ms, s.order_id)
    )
    lost: list[Sale] = []
    for hold in holds:
        if excess <= 0:
            break
        lost.append(replace(hold, state=HoldState.EXPIRED))
        excess -= hold.quantity
    released = {s.order_id: s for s in lost}
    return [released.get(s.order_id, s) for s in sales], lost


def _unsettled(engine: Engine, client: Client, pid: int) -> str | None:
    """What must settle before the books can be rebuilt from the database: orders still
    in the stream, and inline takes whose rows may still commit. Selling is paused, so
    every recorded inline take is decided now (hotdeal.inline: stored -> done, else its
    id is voided and its units go back; a helper's attack found a repair after a restart
    ignoring them, and their rows committed after the rebuild: sold twice). One whose
    transaction still holds its id waits."""
    backlog = client.xlen(keys.orders_stream(pid))
    if backlog:
        return f"{backlog} orders are not persisted yet (a writer must drain the stream)"
    still = InlineTakes(client).sweep(engine, pid, final_s=0)["open"]
    if still:
        return f"{still} inline takes' transactions are still open"
    return None


def _register(client: Client, pid: int) -> None:
    """The registries and the writers' group, as reset made them (a Redis that came
    back empty has neither)."""
    stream = keys.orders_stream(pid)
    try:
        client.sadd(keys.STREAMS, stream)
        client.sadd(keys.PRODUCTS, pid)
    except redis.exceptions.OutOfMemoryError:
        pass  # a full Redis: the rebuild below will say so; they come with the next one
    try:
        client.xgroup_create(stream, keys.WRITER_GROUP, id="0", mkstream=True)
    except redis.exceptions.OutOfMemoryError:
        pass  # refused even when it exists (a full Redis); the writers say NOGROUP
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def validate(
    engine: Engine,
    client: Client,
    pid: int,
    *,
    auto_repair: bool = True,
    idempotency_ttl_s: int = 86400,
) -> str:
    """Check `pid`'s books against the database on the server that holds them now, so
    that server may sell. Returns what it found: "valid" (checked already), "stamped",
    "repaired", "unknown" (not a database product), or the reason it paused.

    Books of an older event, or none at all, are rebuilt (nothing is lost: the database
    holds more than they do); books behind the database are paused and, with
    `auto_repair`, rebuilt once their stream is drained."""
    server = run_id(client, pid)
    books = client.hgetall(keys.books(pid))
    head = _head(engine, pid)
    if head is None:
        return "valid" if books.get(keys.VALIDATED) == server else "unknown"
    # Checked on this server, and no check or repair elsewhere since (each one moves the
    # database's fence epoch past the books it made): a server that was left and then
    # returned to (a failback) is not valid merely because it never restarted.
    fresh = int(books.get(keys.EPOCH, 0)) >= head["fence_epoch"]
    if books.get(keys.VALIDATED) == server and fresh:
        return "valid"
    generation = int(books.get(keys.GENERATION, 0))
    if books.get(keys.VALIDATED) == server and generation < head["generation"]:
        # A reset under way: the database has the new event, its own Redis step follows
        # (and writes checked books). Rebuilding them here would race it.
        return "valid"
    if generation > head["generation"]:
        reason = (
            f"{ROLLBACK}books of event {generation} but the database is at event "
            f"{head['generation']}: the database is behind Redis"
        )
        pause(client, pid, reason, judged=books)
        return reason
    reason = None
    if books and generation == head["generation"]:
        reason = behind(books, database_marks(engine, pid, generation))
        if reason is None:
            if books.get(keys.PAUSED):
                return books[keys.PAUSED]
            epoch = _next_epoch(engine, pid, int(books.get(keys.EPOCH, 0)))
            return "stamped" if stamp(client, pid, server, generation, epoch) else "changed"
        if not pause(client, pid, reason, judged=books):
            return "changed"
    if auto_repair or reason is None:
        try:
            repair(engine, client, pid, idempotency_ttl_s=idempotency_ttl_s)
            return "repaired"
        except RepairError as exc:
            return f"{ROLLBACK}not repaired yet: {exc}"
    return reason


def validate_all(
    engine: Engine, client: Client, *, auto_repair: bool = True, idempotency_ttl_s: int = 86400
) -> dict[int, str]:
    """`validate` for every product of the database; on one Redis, once every product
    is checked or paused, mark the server itself checked (a take that then finds no
    books answers "unknown product")."""
    servers = {id(node): run_id_of(node) for node in primaries(client)}
    with engine.connect() as conn:
        pids = conn.execute(select(hotdeal_list.c.prod_id).order_by(hotdeal_list.c.prod_id))
        pids = [int(p) for p in pids.scalars()]
    found = {
        pid: validate(
            engine, client, pid, auto_repair=auto_repair, idempotency_ttl_s=idempotency_ttl_s
        )
        for pid in pids
    }
    settled = all(
        result in ("valid", "stamped", "repaired", "unknown") or result.startswith(REPAIRABLE)
        for result in found.values()
    )
    if settled and not is_cluster(client):
        (server,) = servers.values()
        client.eval(_SCRIPT, 2, keys.INSTANCE, keys.INSTANCE, "instance", server)
    return found


def stale_products(engine: Engine, client: Client) -> list[int]:
    """Products whose books are below the database's fence epoch: checked or repaired
    elsewhere since these books were made (the server was left, and is back)."""
    with engine.connect() as conn:
        heads = conn.execute(select(hotdeal_list.c.prod_id, hotdeal_list.c.fence_epoch)).all()
    if not heads:
        return []
    pipe = client.pipeline(transaction=False)
    for pid, _ in heads:
        pipe.hget(keys.books(pid), keys.EPOCH)
    epochs = pipe.execute()
    return [
        int(pid)
        for (pid, fence_epoch), epoch in zip(heads, epochs, strict=True)
        if epoch is not None and int(epoch) < int(fence_epoch)
    ]


def run_id_of(node: redis.Redis) -> str:
    return str(node.info("server")["run_id"])


def instance_checked(client: Client) -> bool:
    """On one Redis: has every product been checked on the server we reach now?"""
    if is_cluster(client):
        return False
    return client.get(keys.INSTANCE) == run_id_of(client)
