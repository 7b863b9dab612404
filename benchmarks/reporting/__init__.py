"""The benchmark report's tables, one module per kind (see ``benchmarks/README.md``); ``pages.py`` assembles them into
the generated pages, and ``benchmarks/report.py`` writes or checks those."""
