"""Log formats, the request context on every line, and which loggers `--log-level` reaches."""

from __future__ import annotations

import io
import json
import logging

import pytest

from server.observability import logs


def configured(level: str = "info", fmt: logs.LogFormat | None = "json") -> io.StringIO:
    stream = io.StringIO()
    logs.configure(level, fmt, stream=stream)
    return stream


def lines(stream: io.StringIO) -> list[str]:
    return [line for line in stream.getvalue().splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
def test_json_lines_carry_time_level_logger_message_and_extras() -> None:
    stream = configured()
    logging.getLogger("server.test").info("loaded %s", "m", extra={"model": "m", "duration_s": 1.5})
    (line,) = lines(stream)
    entry = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "server.test" and entry["message"] == "loaded m"
    assert entry["model"] == "m" and entry["duration_s"] == 1.5
    assert entry["time"].endswith("Z") and "T" in entry["time"]


@pytest.mark.usefixtures("restore_logging")
def test_json_keeps_a_traceback_in_one_line() -> None:
    stream = configured()
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("server.test").exception("failed")
    (line,) = lines(stream)
    entry = json.loads(line)
    assert "ValueError: boom" in entry["exception"] and entry["level"] == "error"


@pytest.mark.usefixtures("restore_logging")
def test_text_lines_append_fields_and_quote_spaces() -> None:
    stream = configured(fmt="text")
    logging.getLogger("server.test").warning("hello", extra={"model": "a b", "status": 503, "empty": ""})
    (line,) = lines(stream)
    assert " WARNING server.test: hello " in line
    assert 'model="a b"' in line and "status=503" in line and "empty" not in line


@pytest.mark.usefixtures("restore_logging")
def test_the_request_context_is_on_every_line_logged_for_it() -> None:
    stream = configured()
    token = logs.bind(logs.RequestContext("req-1"))
    try:
        logging.getLogger("server.test").info("before the model is known")
        context = logs.current()
        assert context is not None
        context.model = "mlm"
        logging.getLogger("uvicorn.error").info("a library's line")
    finally:
        logs.unbind(token)
    logging.getLogger("server.test").info("after")
    first, second, third = (json.loads(line) for line in lines(stream))
    assert first["request_id"] == "req-1" and "model" not in first
    assert second["request_id"] == "req-1" and second["model"] == "mlm"
    assert "request_id" not in third


@pytest.mark.usefixtures("restore_logging")
def test_log_level_reaches_the_server_and_uvicorn_but_not_chatty_libraries() -> None:
    stream = configured("debug")
    logging.getLogger("server.engine.registry").debug("server debug")
    logging.getLogger("model_core.checkpoint").debug("model debug")
    logging.getLogger("uvicorn.error").debug("uvicorn debug")
    logging.getLogger("PIL.PngImagePlugin").debug("STREAM b'IHDR'")
    logging.getLogger("uvicorn.access").info("uvicorn's own access line")
    messages = [json.loads(line)["message"] for line in lines(stream)]
    assert messages == ["server debug", "model debug", "uvicorn debug"]

    stream = configured("warning")
    logging.getLogger("server.x").info("quiet")
    logging.getLogger("uvicorn.error").info("quiet too")
    logging.getLogger("server.x").warning("loud")
    assert [json.loads(line)["message"] for line in lines(stream)] == ["loud"]


@pytest.mark.usefixtures("restore_logging")
def test_configuring_twice_leaves_one_handler() -> None:
    configured()
    stream = configured()
    logging.getLogger("server.test").info("once")
    assert len(lines(stream)) == 1
    assert sum(getattr(h, "perceiver", False) for h in logging.getLogger().handlers) == 1


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_default_format_is_text_on_a_terminal_and_json_otherwise() -> None:
    assert logs.default_format(Terminal()) == "text"
    assert logs.default_format(io.StringIO()) == "json"
