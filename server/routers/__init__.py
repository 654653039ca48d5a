"""One router per route group; each endpoint is thin and calls the serving object."""
