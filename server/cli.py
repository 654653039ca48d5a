"""`perceiver-serve` (also `python -m server`): serve; `perceiver-serve download NAME...` to warm the HF cache;
`perceiver-serve finetune ...` to fine-tune a text classifier (the `finetune` package)."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import uvicorn

from server.observability import logs
from server.settings import CONFIG_ENV, Settings, SettingsError, Task, load_settings

log = logging.getLogger("server")


def _serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perceiver-serve",
        description=(
            "Serve Perceiver IO models over HTTP (and gRPC with --grpc-port). Subcommands: `perceiver-serve download "
            "NAME...` pre-fetches hub files; `perceiver-serve finetune --help` fine-tunes a text classifier."
        ),
    )
    p.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV})")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="serve the Open Inference Protocol over gRPC on this port too")
    p.add_argument(
        "--model",
        nargs=3,
        action="append",
        metavar=("NAME", "TASK", "SOURCE"),
        help="serve this model too: a name, its task, a hub id or a folder (repeatable; e.g. KServe's /mnt/models)",
    )
    p.add_argument("--preload", nargs="+", metavar="NAME", help="models to load at start-up ('all' for every one)")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--dtype", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error", "critical"])
    p.add_argument("--log-format", choices=["text", "json"], help="default: text on a terminal, json otherwise")
    p.add_argument(
        "--demo",
        action="store_true",
        default=None,
        help="serve small RANDOMLY INITIALISED checkpoints of every task (answers are meaningless)",
    )
    p.add_argument("--demo-dir", help="where --demo keeps its checkpoints (default ~/.cache/perceiver-serve/demo)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit (status 2) on problems found at start-up, such as a model's local source that does not exist, "
        "instead of logging a warning and serving the other models",
    )
    return p


def _download_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="perceiver-serve download",
        description="Fetch configured (or catalog) models' hub files into the HF cache.",
    )
    p.add_argument("names", nargs="+", metavar="NAME", help="configured model names, hub ids, or 'all'")
    p.add_argument("--config", help=f"TOML config file (default: ${CONFIG_ENV})")
    return p


def download(argv: Sequence[str]) -> int:
    from server.errors import ServeError
    from server.models.hub import Checkpoint, HubRepo, download_failure, is_hub_id, locate

    args = _download_parser().parse_args(argv)
    settings = load_settings(args.config)
    names = list(settings.models) if "all" in args.names else args.names
    by_source = {m.source: m for m in settings.models.values()}
    found = {
        n: settings.models.get(n) or by_source.get(n) or (HubRepo(n, n) if "/" in n and is_hub_id(n) else None)
        for n in names
    }
    unknown = [n for n, spec in found.items() if spec is None]
    if unknown:
        print(
            f"perceiver-serve: unknown model(s) {', '.join(unknown)}; give configured names "
            f"({', '.join(settings.models)}) or hub ids (owner/name)",
            file=sys.stderr,
        )
        return 2
    specs: dict[str, Checkpoint] = {n: spec for n, spec in found.items() if spec is not None}
    failed = 0
    for name, spec in specs.items():
        try:
            folder = locate(spec)  # the cache first; the hub for whatever is missing
        except ServeError as exc:  # what failed and what to change, not the advice to run this very command
            print(f"FAILED {name}: {download_failure(spec, exc)}", file=sys.stderr)
            failed += 1
            continue
        files = ", ".join(sorted(p.name for p in folder.iterdir() if p.is_file()))
        verb = "fetched" if is_hub_id(spec.source) else "local folder, nothing to fetch:"
        print(f"{verb} {name} ({spec.source}) -> {folder} [{files}]")
    return 1 if failed else 0


def serve_settings(argv: Sequence[str]) -> Settings:
    """The settings `perceiver-serve ARGV` serves with (before --demo swaps in its checkpoints)."""
    return _settings(_serve_parser().parse_args(argv))


def _settings(args: argparse.Namespace) -> Settings:
    overrides = {
        "host": args.host,
        "port": args.port,
        "grpc_port": args.grpc_port,
        "preload": args.preload,
        "device": args.device,
        "dtype": args.dtype,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "demo": args.demo,
        "demo_dir": args.demo_dir,
    }
    models = {name: {"task": task, "source": source} for name, task, source in args.model or []}
    return load_settings(args.config, overrides=overrides, models=models)


def serve(argv: Sequence[str]) -> int:
    args = _serve_parser().parse_args(argv)
    settings = _settings(args)
    logs.configure(settings.server.log_level, settings.server.log_format)
    _passive_openmp()
    from server.engine.devices import check_devices, configure_cpu_threads

    check_devices(settings)
    log.info("torch uses %d intra-op CPU thread(s)", configure_cpu_threads(settings))
    if settings.server.demo:
        from server.models.demo import demo_settings

        settings = demo_settings(settings)
        log.warning(
            "DEMO MODE: serving RANDOMLY INITIALISED checkpoints (%s); answers are meaningless",
            ", ".join(settings.models),
        )
    problems = _check_sources(settings)
    if problems and args.strict:
        print("perceiver-serve: " + "; ".join(problems) + " (--strict)", file=sys.stderr)
        return 2
    try:
        _run(settings)
    except KeyboardInterrupt:  # SIGINT, re-raised by uvicorn once it has shut down gracefully: a normal exit
        return 130
    return 0


def _passive_openmp() -> None:
    """OpenMP workers that sleep when idle instead of spinning (unless OMP_WAIT_POLICY says otherwise): with every
    core computing (devices.cpu_threads), spinning workers would take the cores the event loop needs. OpenMP reads
    it once, when torch loads it: torch must not be imported yet."""
    if "OMP_WAIT_POLICY" in os.environ:
        return
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    if "torch" in sys.modules:
        log.warning("torch was imported before start-up set OMP_WAIT_POLICY; set it in the environment instead")


def _check_sources(settings: Settings) -> list[str]:
    """Local sources that are no folder, each logged as a warning: their models answer 503 until they exist. And
    a video model without PyAV, whose container uploads would answer 415."""
    from server.media import pyav_available
    from server.models.hub import missing_folder

    problems = [p for spec in settings.models.values() if (p := missing_folder(spec)) is not None]
    for problem in problems:
        log.warning("%s; its requests answer 503 until a checkpoint folder is there", problem)
    if any(spec.task is Task.VIDEO_AUTOENCODING for spec in settings.models.values()) and not pyav_available():
        log.warning(
            "PyAV is not installed: mp4/webm/avi uploads and format=mp4 answer 415 (.npy/.npz clips work); "
            "install it with pip install 'perceiver-serve[video]' (scripts/serve does)"
        )
    return problems


def _run(settings: Settings) -> None:
    from server.app import build_app
    from server.http.connections import protocol_class
    from server.http.random_weights import RAW_HEADER, random_weights_only
    from server.limits import Limits

    app = build_app(settings)
    # What is alive now lives as long as the process: out of every later collection, whose full passes would
    # otherwise walk these few hundred thousand objects (torch, the app) and stall the event loop each time.
    gc.collect()
    gc.freeze()
    server = settings.server
    _make_room_for_connections(server.max_connections)
    # In-flight requests get the default deadline (or the cap, when one is set), plus a margin. No websocket
    # routes: an upgrade request is an ordinary request. The guard protocol bounds connections (connections.py).
    config = uvicorn.Config(
        app,
        host=server.host,
        port=server.port,
        log_level=server.log_level,
        http=protocol_class(
            Limits.of(server).connections, answer_headers=(RAW_HEADER,) if random_weights_only(settings) else ()
        ),
        ws="none",
        timeout_keep_alive=server.keep_alive_s,  # type: ignore[arg-type]
        timeout_graceful_shutdown=int(server.shutdown_grace_s),
        log_config=None,  # logs.configure has set up every logger, uvicorn's included
        access_log=False,  # the server's own access log (server.access) replaces uvicorn's
    )
    DrainingServer(config, on_drain=app.state.lifecycle.begin_drain, drain_s=server.drain_seconds).run()


FD_MARGIN = 64  # descriptors beyond the connections: listener, model files, logs, worker pipes


def _make_room_for_connections(max_connections: int) -> None:
    """Raise the open-file soft limit to fit `max_connections` (up to the hard limit), or say it cannot:
    past the limit, accept() fails and the connection cap never gets a say."""
    try:
        import resource
    except ImportError:  # not on this platform: nothing to adjust
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = max_connections + FD_MARGIN
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(target, soft), hard))
    except (ValueError, OSError):  # a sandbox may refuse: the limit stays as it was
        target = soft
    if target < needed:
        log.warning(
            "max_connections = %d needs about %d open files, but the limit is %d: lower max_connections "
            "or raise the limit (ulimit -n)",
            max_connections,
            needed,
            target,
        )


class DrainingServer(uvicorn.Server):
    """First SIGTERM/SIGINT: at once, readiness and new requests answer 503 (in-flight ones carry on); the
    listener stays open `drain_s` so load balancers see the 503s, then uvicorn's graceful shutdown closes it
    and waits for the in-flight requests. A repeated signal only skips the rest of the drain window: it never
    forces an exit, which would cut in-flight requests off without an answer."""

    def __init__(self, config: uvicorn.Config, *, on_drain: Callable[[], None], drain_s: float) -> None:
        super().__init__(config)
        self.on_drain, self.drain_s, self._window_opened = on_drain, drain_s, False

    @property
    def force_exit(self) -> bool:
        """Never: uvicorn would stop waiting for in-flight requests and skip the app's shutdown."""
        return False

    @force_exit.setter
    def force_exit(self, value: bool) -> None:
        pass

    def handle_exit(self, sig: int, frame: Any) -> None:
        self.on_drain()
        if self.should_exit:
            log.info("already shutting down: in-flight requests finish, or get a 503 when the grace period ends")
            return
        if not self._window_opened and self.drain_s > 0:
            self._window_opened = True
            log.info("draining for %.1fs before shutdown", self.drain_s)
            timer = threading.Timer(self.drain_s, self._shut_down, (sig, frame))
            timer.daemon = True
            timer.start()
            return
        self._shut_down(sig, frame)

    def _shut_down(self, sig: int, frame: Any) -> None:
        if not self.should_exit:
            super().handle_exit(sig, frame)


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["finetune"]:
            from finetune.cli import main as finetune

            code = finetune(argv[1:])
        else:
            code = download(argv[1:]) if argv[:1] == ["download"] else serve(argv)
    except SettingsError as exc:
        print(f"perceiver-serve: {exc}", file=sys.stderr)
        code = 2
    sys.exit(code)
