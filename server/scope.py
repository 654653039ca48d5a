"""Keys of the request-scope state (`scope["state"]`) that the middleware and the serving layer share."""

STARTED_KEY = "perceiver_started"  # time.monotonic() when the request arrived
DEADLINE_KEY = "perceiver_deadline"  # set by the admission middleware from X-Request-Timeout
MODEL_KEY = "perceiver_model"  # the configured model that served the request (metrics label)
