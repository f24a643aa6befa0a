"""Order ids: version-4 UUIDs behind the product id, never repeated, not even by two
workers forked from one preloaded app."""

from __future__ import annotations

import os
import uuid

from hotdeal.history import new_order_id
from hotdeal.model.keys import product_of_order


def test_an_order_id_names_its_product_and_is_a_uuid4():
    order_id = new_order_id(12)
    assert product_of_order(order_id) == 12
    for _ in range(2000):  # every version and variant digit comes out right
        tail = new_order_id(12).split("-", 1)[1]
        parsed = uuid.UUID(tail)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, tail)


def test_forked_workers_never_hand_out_the_same_id():
    new_order_id(1)  # the parent has a block of random bytes before it forks
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.write(write, "\n".join(new_order_id(1) for _ in range(300)).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    with os.fdopen(read) as child:
        theirs = set(child.read().split("\n"))
    ours = {new_order_id(1) for _ in range(300)}
    assert len(theirs) == 300 and len(ours) == 300 and not ours & theirs
