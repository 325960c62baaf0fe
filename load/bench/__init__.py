"""Benchmarks that start their own servers (``tierkv-load bench NAME``).

Each module has ``main(argv: list[str] | None) -> int`` and parses its own options; it
prints one table and writes its JSON.
"""
