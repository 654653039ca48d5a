"""Typed settings: defaults < TOML file < PERCEIVER_SERVE_* environment < command line.

Invalid or unsafe values are refused at start-up with a `SettingsError` naming the key.
"""

from __future__ import annotations

import os
import re
import tomllib
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, get_origin

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from server.models.catalog import catalog_models

CONFIG_ENV = "PERCEIVER_SERVE_CONFIG"
ENV_PREFIX = "PERCEIVER_SERVE_"


class Task(StrEnum):
    FILL_MASK = "fill-mask"
    TEXT_CLASSIFICATION = "text-classification"
    IMAGE_CLASSIFICATION = "image-classification"
    OPTICAL_FLOW = "optical-flow"
    VIDEO_AUTOENCODING = "video-autoencoding"


class SettingsError(ValueError):
    """The configuration cannot be served; the message says which key and why."""


Device = Annotated[str, StringConstraints(pattern=r"^(auto|cpu|cuda(:\d{1,2})?)$")]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")]
# A hub id (`owner/name`) or a filesystem path; no whitespace or control characters.
Source = Annotated[str, StringConstraints(pattern=r"^[^\s\x00-\x1f]{1,1024}$")]
# Formats Pillow may open a request's image as (its format ids); anything else is 415 before decoding.
ImageFormat = Literal["PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF"]
# Containers a video upload may be (each names one FFmpeg demuxer family: mp4 = mov/mp4, webm = matroska/webm).
VideoContainer = Literal["mp4", "webm", "avi"]
AudioFormat = Literal["WAV", "FLAC", "OGG"]  # libsndfile's major formats a request's audio may be
API_KEY = re.compile(r"[\x21-\x7e]{16,256}")  # printable ASCII, no spaces: it travels in a header
JOBS_URL = re.compile(r"rediss?://[^\s/?#]+(/\d{1,5})?/?(\?[^\s#]*)?")
SECRET_FIELDS = ("api_keys", "jobs_url")  # their values are never echoed in an error


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


Seconds = Annotated[float, Field(gt=0, le=3600)]
DEFAULT_TIMEOUT_CAP_S = 600.0  # X-Request-Timeout's cap unless max_request_timeout_s says otherwise


class DeviceTimeouts(_Strict):
    """A model's default deadline by the kind of device it lands on (`{cpu = 300, cuda = 60}`); a kind left out
    gets the server's request_timeout_s."""

    cpu: Seconds | None = None
    cuda: Seconds | None = None


class ModelSpec(_Strict):
    """One `[models.NAME]` table."""

    name: Name
    task: Task
    source: Source
    max_batch_size: int = Field(32, ge=1, le=1024)
    max_delay_ms: float = Field(5.0, ge=0, le=1000)
    max_queue: int = Field(256, ge=1, le=100_000)
    device: Device | None = None
    dtype: Dtype | None = None
    default: bool = False
    aliases: list[Name] = []
    random_weights: bool = False
    # The deadline of a request that asks for none (default: the server's request_timeout_s): seconds, or seconds
    # by device kind, at most the X-Request-Timeout cap. The header still shortens or lengthens it, within the cap.
    request_timeout_s: Seconds | DeviceTimeouts | None = None

    def timeout_s(self, device_kind: str) -> float | None:
        """This model's default deadline on a device of `device_kind` (cpu, cuda), if it has one."""
        if isinstance(self.request_timeout_s, DeviceTimeouts):
            return getattr(self.request_timeout_s, device_kind, None)
        return self.request_timeout_s


class ServerSettings(_Strict):
    """The `[server]` table."""

    host: str = Field("127.0.0.1", min_length=1, max_length=255)
    port: int = Field(8000, ge=1, le=65535)
    grpc_port: int | None = Field(None, ge=1, le=65535)  # the Open Inference Protocol over gRPC; off when unset
    device: Device = "auto"
    dtype: Dtype = "auto"
    log_level: Literal["debug", "info", "warning", "error", "critical"] = "info"
    log_format: Literal["text", "json"] | None = None  # default: text on a terminal, json otherwise
    access_log: bool = True  # one line per request (logger server.access; probes and /metrics at debug)
    memory_budget_mb: int | None = Field(None, gt=0, le=16_777_216)
    request_timeout_s: float = Field(30.0, gt=0, le=3600)
    # X-Request-Timeout cap (default: 600 s, or request_timeout_s if larger): a client may ask for more than the default
    max_request_timeout_s: float | None = Field(None, gt=0, le=3600)
    max_body_mb: float = Field(32.0, gt=0, le=1024)
    max_inputs: int = Field(64, ge=1, le=4096)
    max_text_bytes: int = Field(65_536, ge=1, le=2**26)  # one text input, UTF-8; checked before tokenizing
    max_image_pixels: int = Field(64_000_000, ge=1, le=2**30)  # from the image header, before decoding
    image_formats: list[ImageFormat] = Field(["PNG", "JPEG", "WEBP", "GIF", "BMP"], min_length=1)
    max_json_depth: int = Field(32, ge=2, le=1000)  # nesting of a JSON body, checked before parsing
    max_video_frames: int = Field(256, ge=1, le=100_000)  # frames of one clip, from its header or as decoded
    max_audio_seconds: float = Field(600.0, gt=0, le=86_400)  # an audio part's duration, from its header
    max_video_frame_pixels: int = Field(3840 * 2160, ge=1, le=2**28)  # one frame's width x height, from its header
    max_array_mb: float = Field(256.0, gt=0, le=16_384)  # an uploaded .npy/.npz array, as its header declares it
    video_containers: list[VideoContainer] = Field(["mp4", "webm", "avi"], min_length=1)  # demuxers FFmpeg may use
    audio_formats: list[AudioFormat] = Field(["WAV", "FLAC", "OGG"], min_length=1)
    max_audio_sample_rate: int = Field(192_000, ge=8_000, le=768_000)  # from the header; 1 kHz is the floor
    max_audio_channels: int = Field(8, ge=1, le=256)
    # Answers: bounded by what a request may ask, checked before any work (413 naming the limit).
    max_masks_per_text: int = Field(256, ge=1, le=65_536)  # [MASK]s (or mask token ids) in one fill-mask text
    max_candidates: int = Field(8192, ge=1, le=10_000_000)  # ranked entries in one answer: top_k x masks x inputs
    max_response_mb: float = Field(128.0, gt=0, le=16_384)  # one answer's size, estimated from the request
    max_flow_side: int = Field(4096, ge=64, le=16_384)  # optical flow: a frame's side, as sent and as run
    decode_budget_mb: float = Field(512.0, gt=0, le=65_536)  # video decode: activations of one pass, all items
    flow_budget_mb: float = Field(1024.0, gt=0, le=65_536)  # optical flow: activations of one pass, all its tiles
    # Background jobs: running (per process) and waiting at once, then 429; results kept, and for how long.
    max_running_jobs: int = Field(2, ge=1, le=1024)
    max_queued_jobs: int = Field(16, ge=0, le=100_000)  # with jobs_url: across every replica
    job_result_ttl_s: float = Field(900.0, gt=0, le=7 * 86_400)
    max_job_results_mb: float = Field(512.0, gt=0, le=1_048_576)
    job_unit_timeout_s: float = Field(600.0, gt=0, le=86_400)  # a job's unit of work may wait this long to run
    # Jobs shared by replicas: a Redis (or Valkey) URL, redis:// or rediss:// (default: jobs live in the process).
    jobs_url: SecretStr | None = None  # may hold a password: never echoed
    jobs_password_file: Path | None = None  # the Redis password, when the URL has none (a mounted Secret)
    jobs_required: bool = False  # readiness 503 while the job store cannot be reached
    job_heartbeat_s: float = Field(30.0, ge=1, le=3600)  # a runner silent this long has its job run elsewhere
    max_job_inputs_mb: float = Field(1024.0, gt=0, le=1_048_576)  # with jobs_url: inputs of unsettled jobs
    # Connections (enforced by the HTTP protocol, before the app sees a request).
    max_connections: int = Field(1000, ge=1, le=1_000_000)  # open at once; past it the slowest header reader goes
    header_timeout_s: float = Field(15.0, gt=0, le=300)  # from a request's first byte to the end of its headers
    body_timeout_s: float = Field(120.0, gt=0, le=3600)  # from the end of the headers to the end of the body
    keep_alive_s: float = Field(5.0, gt=0, le=3600)  # an idle keep-alive connection is closed after this
    max_header_kb: int = Field(32, ge=1, le=1024)  # request line + headers of one request
    api_keys: list[SecretStr] = []  # when any (here or in api_keys_file): every route but /health/* needs one
    api_keys_file: Path | None = None  # one key per line; blank lines and # comments ignored
    public_metrics: bool = True  # with api keys, /metrics stays open unless this is false
    load_retry_s: float = Field(30.0, ge=0, le=86_400)
    drain_seconds: float = Field(0.0, ge=0, le=600)
    stall_seconds: float = Field(300.0, ge=1, le=86_400)  # a batch running longer fails /health/live
    cpu_threads: int | None = Field(None, ge=1, le=1024)  # torch intra-op threads (default: see devices.py)
    max_concurrent_decodes: int | None = Field(None, ge=1, le=1024)  # media decodes at once (default: cores)
    preload: list[Name] = []
    catalog: bool | None = None
    admin_api: bool = False
    demo: bool = False
    demo_dir: Path = Path("~/.cache/perceiver-serve/demo")

    @field_validator("api_keys")
    @classmethod
    def _strong_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        if not all(API_KEY.fullmatch(k.get_secret_value()) for k in keys):
            raise ValueError("each API key must be 16 to 256 printable ASCII characters without spaces")
        return keys

    @field_validator("jobs_url", mode="before")
    @classmethod
    def _no_empty_url(cls, url: Any) -> Any:
        return None if url == "" else url  # an empty environment variable (compose's ${VAR:-}) means none

    @field_validator("jobs_url")
    @classmethod
    def _redis_url(cls, url: SecretStr | None) -> SecretStr | None:
        if url is not None and not JOBS_URL.fullmatch(url.get_secret_value()):
            raise ValueError("jobs_url must be redis://[user:password@]host[:port][/db] or rediss://...")
        return url

    @model_validator(mode="after")
    def _jobs_required_needs_a_store(self) -> ServerSettings:
        if self.jobs_required and self.jobs_url is None:
            raise ValueError("jobs_required needs jobs_url (the in-process job store is always reachable)")
        return self

    @property
    def request_timeout_cap_s(self) -> float:
        """The longest deadline a request may ask for (X-Request-Timeout)."""
        return self.max_request_timeout_s or max(DEFAULT_TIMEOUT_CAP_S, self.request_timeout_s)

    @property
    def shutdown_grace_s(self) -> float:
        """How long a graceful shutdown waits for requests in flight: the cap when one is set, else the default
        deadline (a longer deadline, asked for or a model's, may be cut short by a shutdown: 503)."""
        return (self.max_request_timeout_s or self.request_timeout_s) + 5


class Settings(_Strict):
    server: ServerSettings = ServerSettings()
    models: dict[Name, ModelSpec] = {}

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for task in Task:
            specs = [m for m in self.models.values() if m.task == task]
            defaults = [m.name for m in specs if m.default]
            if len(defaults) > 1:
                raise ValueError(f"task {task.value} has several default models: {', '.join(defaults)}")
            names = [n for m in specs for n in (m.name, *m.aliases)]
            if len(names) != len(set(names)):
                raise ValueError(f"task {task.value}: a model name or alias is used twice")
        unknown = sorted(set(self.server.preload) - set(self.models) - {"all"})
        if unknown:
            raise ValueError(f"preload names unknown models: {', '.join(unknown)}")
        if self.server.grpc_port is not None and self.server.grpc_port == self.server.port:
            raise ValueError(f"grpc_port ({self.server.grpc_port}) is the HTTP port; give gRPC a port of its own")
        cap = self.server.max_request_timeout_s
        if cap is not None and cap < self.server.request_timeout_s:
            raise ValueError(
                f"max_request_timeout_s ({cap:g}) is below request_timeout_s ({self.server.request_timeout_s:g})"
            )
        check_dtype(self.server.dtype, on_cpu=self.server.device == "cpu", where="[server]", error=ValueError)
        return self

    def default_model(self, task: Task) -> ModelSpec | None:
        specs = [m for m in self.models.values() if m.task == task]
        return next((m for m in specs if m.default), specs[0] if specs else None)

    def find_model(self, task: Task, name: str) -> ModelSpec | None:
        """A model of `task` by name, alias or source."""
        specs = [m for m in self.models.values() if m.task == task]
        return next((m for m in specs if name == m.name or name in m.aliases or name == m.source), None)


def check_dtype(dtype: str, *, on_cpu: bool, where: str, error: type[Exception] = ValueError) -> None:
    """The one place float16 is refused on a CPU (no fast kernels, and no bfloat16-like range)."""
    if dtype == "float16" and on_cpu:
        raise error(f"{where}: dtype float16 is not supported on cpu; use float32 or bfloat16")


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"config file {path}: {exc}") from None


def _from_env(environ: dict[str, str]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for field, info in ServerSettings.model_fields.items():
        value = environ.get(ENV_PREFIX + field.upper())
        if value is not None and get_origin(info.annotation) is list:
            found[field] = [v.strip() for v in value.split(",") if v.strip()]
        elif value is not None:
            found[field] = value
    return found


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        secret = any(name in str(p) for p in err["loc"] for name in SECRET_FIELDS)  # never echo a key
        got = f" (got {err['input']!r})" if not isinstance(err.get("input"), dict) and not secret else ""
        lines.append(f"  {where}: {err['msg']}{got}")
    return "invalid configuration:\n" + "\n".join(lines)


def _catalog_under(models: dict[str, Any]) -> dict[str, Any]:
    """The catalog, minus its default mark for tasks where the configured models name a default."""
    taken = {t.get("task") for t in models.values() if isinstance(t, dict) and t.get("default")}
    return {
        name: {**e, "default": e.get("default", False) and e["task"] not in taken}
        for name, e in catalog_models().items()
    }


def build_settings(data: dict[str, Any]) -> Settings:
    """Validate a config dict (the TOML shape); model tables get their `name` from the key."""
    data = dict(data)
    unknown = sorted(set(data) - {"server", "models"})
    if unknown:
        raise SettingsError(
            f"invalid configuration: unknown table(s) {', '.join(unknown)}; expected [server] and [models.NAME]"
        )
    server, models = data.get("server") or {}, data.get("models") or {}
    if not isinstance(server, dict) or not isinstance(models, dict):
        raise SettingsError("invalid configuration: [server] and [models.NAME] must be tables")
    try:
        include_catalog = TypeAdapter(bool | None).validate_python(server.get("catalog"))
    except ValidationError:
        include_catalog = None  # reported with every other error below
    try:
        if include_catalog or (include_catalog is None and not models):
            models = {**_catalog_under(models), **models}
        specs = {name: {**table, "name": name} if isinstance(table, dict) else table for name, table in models.items()}
        return Settings.model_validate({"server": server, "models": specs})
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


def load_settings(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    models: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Settings from an optional TOML file, the environment and command-line `overrides` ([server] keys) and
    `models` ([models.NAME] tables, over the file's)."""
    environ = dict(os.environ if environ is None else environ)
    path = path or environ.get(CONFIG_ENV)
    data = _read_toml(Path(path).expanduser()) if path else {}
    if not isinstance(data.get("server") or {}, dict) or not isinstance(data.get("models") or {}, dict):
        raise SettingsError("invalid configuration: [server] and [models.NAME] must be tables")
    server = {**(data.get("server") or {}), **_from_env(environ)}
    server.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return build_settings({**data, "server": server, "models": {**(data.get("models") or {}), **(models or {})}})
