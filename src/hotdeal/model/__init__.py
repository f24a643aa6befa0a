"""The Redis order model, owned here: everything the services, the writer and the ops
jobs keep in Redis per product, and how it is made, read, rebuilt and audited.

- `keys`: the layout (every key of a product, the books' fields);
- `records`: the codecs of what the take script writes (the order index, the
  Idempotency-Key record, the stream entry, the inline take) and of a sale rebuilt from
  the database;
- `product`: new books (reset), books rebuilt from sales (repair), what a rebuild
  deletes, and the consistent picture reconcile audits.

The Lua scripts beside the services write the same layout atomically; tests/test_model.py
holds their records to these codecs.
"""
