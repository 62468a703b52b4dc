"""The benchmark harness: one subprocess per configuration, rows, limit search."""
