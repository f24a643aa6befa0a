"""The legacy order service: the stock is a row in the RDBMS, locked per order."""
