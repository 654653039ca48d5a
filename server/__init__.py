"""perceiver-serve: the HTTP serving layer over model_core. Entry points: `server.app.build_app`, `server.cli.main`."""
