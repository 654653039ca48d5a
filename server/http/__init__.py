"""HTTP in front of the routes: middleware, authentication, admission, the connection guard, request bodies."""
