"""Every error the service answers deliberately, each with its HTTP status and a metric reason.

One place decides the status of each failure (``api/errors.py`` only renders these), so a client input
can never surface as a 500: anything a client sends that we refuse is one of these classes.
"""

from __future__ import annotations

from enum import Enum


class Reason(str, Enum):
    """Values of the ``reason`` label of ``lrbnn_requests_rejected_total`` (a closed set)."""

    INVALID = "invalid"
    TOO_LARGE = "too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    QUEUE_FULL = "queue_full"
    TIMEOUT = "timeout"
    DRAINING = "draining"
    NOT_READY = "not_ready"
    DISCONNECTED = "client_disconnected"
    MODEL_ERROR = "model_error"


class ServiceError(Exception):
    """Base: ``status`` for the answer, ``reason`` for the rejection metric, ``field`` when known."""

    status = 500
    reason: Reason | None = None

    def __init__(self, message: str, field: str | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.retry_after_s = retry_after_s


class InvalidInput(ServiceError):
    status = 422
    reason = Reason.INVALID


class BadRequest(ServiceError):
    """Malformed request (not JSON, wrong tensor shape/datatype): 400."""

    status = 400
    reason = Reason.INVALID


class PreconditionFailed(ServiceError):
    """A CDS Hooks request without the prefetch the service needs (the spec's 412)."""

    status = 412
    reason = Reason.INVALID


class PayloadTooLarge(ServiceError):
    status = 413
    reason = Reason.TOO_LARGE


class Unauthorized(ServiceError):
    status = 401
    reason = Reason.UNAUTHORIZED


class Forbidden(ServiceError):
    status = 403
    reason = Reason.FORBIDDEN


class ModelNotFound(ServiceError):
    status = 404


class QueueFull(ServiceError):
    """The queue cannot take the request now: 429 with ``Retry-After``, and the reservation's token
    (``Lrbnn-Retry-Token``) when its client asked for one and the book had room."""

    status = 429
    reason = Reason.QUEUE_FULL
    retry_token: str | None = None


class Draining(ServiceError):
    status = 503
    reason = Reason.DRAINING


class ModelNotReady(ServiceError):
    status = 503
    reason = Reason.NOT_READY


class ModelFailed(ServiceError):
    """The model's compute raised (a runtime fault, not the client's input): 503 for that model only."""

    status = 503
    reason = Reason.MODEL_ERROR


class InferenceTimeout(ServiceError):
    status = 504
    reason = Reason.TIMEOUT


class ClientDisconnected(ServiceError):
    """The client went away while its request waited; nobody reads the answer (nginx's 499)."""

    status = 499
    reason = Reason.DISCONNECTED


class ReloadFailed(ServiceError):
    """The new version did not validate; the old one keeps serving (409: the repository is at fault)."""

    status = 409
