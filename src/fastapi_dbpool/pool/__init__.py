"""The pool: fair waiting, statistics, pre-ping and cleanup that survives cancellation."""
