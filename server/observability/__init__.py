"""What the server tells its operators: logs (every logger in one format, per-request context) and traces
(OpenTelemetry, optional). Metrics live with the engine (server/engine/metrics.py)."""
