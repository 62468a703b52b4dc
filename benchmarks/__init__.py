"""The benchmark harness, in parts: config (defaults, flags, `Config`, the row schema),
runner (one worker subprocess per configuration, rows), analysis (slopes, the limit
search), report (JSON, CSV, plot, markdown); worker is the subprocess itself."""
