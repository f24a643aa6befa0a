"""The ops job: schema, reset between runs, reconciliation of stock against orders."""
