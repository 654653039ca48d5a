"""Serving engine: the serving object, dynamic batching, the model registry and loading, lifecycle, jobs, devices,
metrics. Nothing here knows HTTP."""
