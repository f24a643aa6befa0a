"""Shared code of the hotdeal services: settings, schema, stores, validation, web glue."""
