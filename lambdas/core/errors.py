"""Error types. Adapters raise these; handlers map them to HTTP status codes."""

from __future__ import annotations


class AutoretrainError(Exception):
    """Base of every error this project raises on purpose."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, **details: object) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, object]:
        return {"error": self.code, "message": self.message, **self.details}


class BadRequest(AutoretrainError):
    """The request cannot be understood: not JSON, wrong top-level type, empty."""

    status = 400
    code = "bad_request"


class ValidationError(BadRequest):
    """A field of one item is missing, mistyped or out of range."""

    code = "invalid_sample"

    def __init__(self, message: str, *, index: int | None, field: str | None) -> None:
        super().__init__(message, index=index, field=field)
        self.index = index
        self.field = field


class PayloadTooLarge(AutoretrainError):
    status = 413
    code = "payload_too_large"


class Forbidden(AutoretrainError):
    """The caller is not allowed: no authenticated client, or a revoked one."""

    status = 403
    code = "forbidden"


class NotFound(AutoretrainError):
    status = 404
    code = "not_found"


class Conflict(AutoretrainError):
    status = 409
    code = "conflict"


class Unavailable(AutoretrainError):
    """A dependency could not do its part in time (throttling, no model yet)."""

    status = 503
    code = "unavailable"


class ConfigError(AutoretrainError):
    """A required setting is missing or malformed. Raised at start-up, never per request."""

    code = "config_error"
