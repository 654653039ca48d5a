"""Keys of the request-scope state (`scope["state"]`) that the middleware and the routes share, and the paths that
are probes and scrapes rather than work."""

PROBES = frozenset({"/health/live", "/health/ready", "/v2/health/live", "/v2/health/ready"})  # open without a key
METRICS = "/metrics"
NOT_WORK = PROBES | {METRICS}  # no in-flight count (the autoscaling signal), no drain refusal

STARTED_KEY = "perceiver_started"  # time.monotonic() when the request arrived
TIMEOUT_KEY = "perceiver_timeout_s"  # seconds, capped: set by the admission middleware from X-Request-Timeout
MODEL_KEY = "perceiver_model"  # the configured model that served the request (metrics label)
CALL_KEY = "perceiver_call"  # the engine call that served the request (its outcomes: the access log's timings)
KEY_DIGEST_KEY = "perceiver_key_digest"  # SHA-256 (hex) of the request's API key: the owner of the jobs it submits
