"""Observability: metrics, the pool dashboard, health checks, leak detection, logs."""
