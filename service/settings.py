"""Service configuration: every ``LRBNN_*`` environment variable, parsed and validated once at start-up.

Names are fixed by ``CONTRACT.md``; a bad value fails the start-up with the variable named, rather than
surfacing as a strange error on the first request.
"""

from __future__ import annotations

import ipaddress
from enum import Enum
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from model_core.checkpoint.manifest import SamplingMode
from service.reservations import new_key


class Device(str, Enum):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"


class BackendName(str, Enum):
    TORCH = "torch"
    ONNX = "onnx"


def _split_csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


class Settings(BaseSettings):
    """All knobs of the server; ``Settings()`` reads the environment, tests pass keyword arguments."""

    model_config = SettingsConfigDict(env_prefix="LRBNN_", extra="ignore", protected_namespaces=())

    model_repository: Path = Path("deploy/models")
    device: Device = Device.AUTO
    backend: BackendName = BackendName.TORCH
    max_batch_size: int = Field(default=64, ge=1, description="instances merged into one sampling call")
    max_batch_delay_ms: float = Field(default=2.0, ge=0.0, description="longest wait to fill a batch")
    max_batch_row_samples: int = Field(
        default=8192, ge=1, description="rows x samples merged into one sampling call (one request: any)"
    )
    """A batch stops growing at this many row-samples (a single request larger than it still runs
    whole: merging never splits a request). Why: past a few MiB of activations a bigger batch costs more
    per row-sample, it no longer amortises anything. Measured on the bundled ICU MLP (widest layer 128),
    one thread, S = 256, requests of 8 rows merged in one process-time run (``docs/reliability.md``):
    2.03 ns per row-sample at 2,048 and 4,096, 2.23 at 8,192, 3.10 at 16,384 (64 rows, the former
    ``max_batch_size`` bound alone); one-row requests at S = 100: 2.35 at 3,200, 2.87 at 6,400. So under
    overload at S = 256 the merged 64-row batches cost half as much again per answer as 8-row ones."""
    max_queue: int = Field(default=4096, ge=1, description="queued requests per model before 429")
    """A memory safety limit, not the admission policy: the queue is bounded by estimated work
    (``max_queue_wait_ms``). 4096 is far above what one second of work admits of ordinary requests on a
    CPU (a burst of 1,000 one-patient requests is about 1 s), so it refuses only where the estimate is
    wrong; a queued one-row request holds of the order of 10 kB, large ones are few by the time bound."""
    max_queue_wait_ms: float = Field(
        default=1000.0,
        description="estimated queueing delay per model before 429; <= 0: off (count bound only)",
    )
    """Admission by time: refuse (429 + Retry-After) a request whose estimated wait exceeds this.

    The estimate is the queued work times the measured seconds per row-sample (``service/admission.py``);
    a request finding the queue empty is always admitted. Default 1 s, a budget in human terms: a ward
    dashboard that refreshes ten patients at once must get ten answers, not refusals for work the server
    drains in tens of milliseconds (with the former 15 ms default a burst of 10 one-patient requests at
    S=100 got 3 refusals, one of 50 got 16). The peers refuse later still: Triton's default queue policy
    has no timeout and no size limit, TorchServe refuses only when its job queue (100 per model) is full,
    MLServer never refuses. A 1 s bound keeps what those lack, a latency a client can plan for (admitted
    p99 <= budget + unloaded p99 under sustained overload) and an early, honest 429 instead of a 504 at
    the 10 s request timeout. Lower it for a tighter latency SLO.
    """
    retry_share: float = Field(
        default=0.5,
        ge=0.0,
        le=1.0,
        description="share of a model's drain rate promised to retry reservations; 0: no reservations",
    )
    """Retry reservations (``service/reservations.py``): a client that sends ``Lrbnn-Retry-Token: request``
    and is refused for the queue gets a token and a ``Retry-After`` it can rely on. At most this share of
    the measured drain rate is booked per second of due time; under sustained overload the retries get
    that share of the capacity, in the order they were refused, the fresh requests the rest. 0.5: half
    for those who were already turned away once, half for newcomers, so neither starves."""
    retry_horizon_s: float = Field(
        default=10.0, ge=0.0, description="furthest due time of a retry reservation; < 1: no reservations"
    )
    """How far ahead the book promises. Beyond it a refusal carries the plain hint and no token. Every
    promise is work the server owes after an overload ends: with the horizon H and the share s the book
    holds at most H x s seconds of work, so the server is back to its unloaded latency within about H
    seconds after any overload (measured, 2x saturation for 60 s: healthy again 11 s after it ended with
    H = 10, 20+ s with H = 60, `docs/reliability.md`). 10 s is of the order of a dashboard's refresh."""
    retry_token_key: SecretStr = Field(default_factory=lambda: SecretStr(new_key()))
    """The key that signs retry tokens. Random per start by default, which every worker of one server
    shares (they get these settings); set the same secret on every replica behind one load balancer so
    that each honours the others' tokens."""
    max_samples: int = Field(default=1024, ge=1)
    default_samples: int | None = Field(default=None, ge=1, description="None: the manifest's default")
    batch_exact: bool = Field(
        default=True,
        description="bit-identical answers in merged batches (one pass per batch where the model's pass"
        " is batch invariant, else one network pass per request)",
    )
    max_instances: int = Field(default=1024, ge=1, description="instances per request before 413")
    request_timeout_s: float = Field(default=10.0, gt=0.0)
    keep_alive_s: float = Field(default=5.0, gt=0.0)
    """How long an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``; 5 s, its default).

    Behind a load balancer set it above the balancer's idle timeout (AWS ALB: 60 s), else the server
    closes a connection the balancer is about to reuse and the client gets a 502."""
    api_tokens: SecretStr = SecretStr("")
    api_tokens_file: Path | None = None
    admin_token: SecretStr | None = None
    allow_unauthenticated: bool = False
    """Serve without API tokens on an address other than loopback (``LRBNN_ALLOW_UNAUTHENTICATED=true``).

    Off by default: bound to all interfaces without tokens, anyone on the network could query the models
    and read what the outcome store keeps (TorchServe turned token auth on by default for the same
    reason). On loopback (``make serve``) the server stays open without it."""
    drift_window: int = Field(default=10_000, ge=10)
    max_body_bytes: int = Field(default=1 << 20, ge=1024)
    fhir_max_body_bytes: int = Field(default=16 << 20, ge=1024)
    """Body limit of the FHIR and CDS Hooks routes: FHIR JSON is verbose (a Bundle of 1,000 patients
    with 20 Observations each is ~6.5 MB), so they get their own, larger limit."""
    cds_warning_risk: float = Field(default=0.3, gt=0.0, lt=1.0)
    """CDS Hooks cards: a risk at or above this is a ``warning`` card (an OOD patient is one at least)."""
    cds_critical_risk: float = Field(default=0.6, gt=0.0, lt=1.0)
    """CDS Hooks cards: a risk at or above this is a ``critical`` card."""
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    """Open Inference Protocol gRPC (``inference.GRPCInferenceService``) on this port; 0 = off."""
    cors_origins: str = ""
    drain_timeout_s: float = Field(default=30.0, ge=0.0)
    sampling_mode: SamplingMode | None = None
    log_level: str = "INFO"
    workers: int = Field(default=1, ge=1, le=64, description="server processes sharing the port")
    """Server processes (``lrbnn serve --workers``). One process runs its HTTP parsing, validation,
    metrics and logging on one event-loop thread, about one core's worth, so set this to the cores the
    server may use. Each worker holds every model and its own batching queue and drift window; metrics
    are aggregated and hot reloads followed across workers (``service/workers.py``)."""

    state_dir: Path = Path("state")
    """Where the embedded prediction store lives (``predictions.sqlite``), relative to the working
    directory unless absolute; created on start. The container sets ``/tmp/lrbnn-state`` (mount a volume
    there to keep the store across containers)."""
    store_url: str = Field(
        default="", description="SQLAlchemy URL; '' = SQLite under state_dir; 'none' = off"
    )
    """The prediction store (``service/store``): ``""`` an SQLite file under ``state_dir`` (several workers
    on one host share it), any SQLAlchemy URL for scale-out (``postgresql+psycopg://user:pw@host/db``),
    or ``none`` to store nothing (predictions then carry ids, but feedback answers 503)."""
    store_retention_days: float = Field(default=90.0, gt=0.0)
    """Predictions (and their outcomes) older than this are deleted, at start and every hour."""
    store_features: bool = True
    """Store each prediction's preprocessed feature vector (scaled numbers and category codes, never
    raw identifiers; never for text models). Off: outputs and outcomes only."""
    store_queue: int = Field(default=100_000, ge=1, description="instances waiting to be stored before drop")
    performance_window: int = Field(
        default=1000, ge=10, description="latest outcomes / predictions per gauge"
    )

    @property
    def store_enabled(self) -> bool:
        return self.store_url.strip().lower() != "none"

    def resolved_store_url(self) -> str:
        from service.store.engine import default_url

        url = self.store_url.strip()
        return url if url else default_url(self.state_dir)

    @field_validator("sampling_mode", "default_samples", "api_tokens_file", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @property
    def cors_origin_list(self) -> list[str]:
        return _split_csv(self.cors_origins)

    def tokens(self) -> list[str]:
        """Predict tokens from ``LRBNN_API_TOKENS`` (comma-separated) plus the token file (one a line)."""
        tokens = _split_csv(self.api_tokens.get_secret_value())
        if self.api_tokens_file is not None:
            for line in self.api_tokens_file.read_text().splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    tokens.append(line)
        return tokens

    def admin(self) -> str | None:
        value = self.admin_token.get_secret_value() if self.admin_token is not None else ""
        return value or None

    def check_exposure(self, host: str) -> None:
        """Raise :class:`UnauthenticatedExposure` when ``host`` is reachable from other machines and no
        API token is configured, unless ``allow_unauthenticated`` says so explicitly."""
        if self.allow_unauthenticated or is_loopback(host) or self.tokens():
            return
        raise UnauthenticatedExposure(
            f"refusing to serve on {host!r} without authentication: set LRBNN_API_TOKENS (or "
            "LRBNN_API_TOKENS_FILE), bind to 127.0.0.1, or set LRBNN_ALLOW_UNAUTHENTICATED=true"
        )


class UnauthenticatedExposure(ValueError):
    """A non-loopback bind address without API tokens and without ``LRBNN_ALLOW_UNAUTHENTICATED``."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); any other name or address,
    including the wildcards ``0.0.0.0`` and ``::``, may be reachable from elsewhere."""
    if host.strip().lower() in {"localhost", "localhost."}:
        return True
    try:
        return ipaddress.ip_address(host.strip().strip("[]")).is_loopback
    except ValueError:
        return False
