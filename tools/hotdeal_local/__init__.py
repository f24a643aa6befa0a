"""Runs the whole stack as local processes: for `make up`, `make demo` and the tests."""
