"""tests/adoption holds two apps with their own test suites: run them in subprocesses only."""

collect_ignore = ["original", "ported"]
