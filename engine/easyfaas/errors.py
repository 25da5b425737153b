"""The engine's errors: one small hierarchy, mapped to HTTP in one place (``http_status``).

Platform errors reach API clients in the EasyFaaS shape
``{"Code": "<X>Exception", "Message", "Cause", "Status", "Type": "User"|"Server"}``.
Across the internal sockets they travel as ``{"type": <class name>, "message", ...detail}`` and
are rebuilt with ``from_wire`` so each component raises the same class the other side did.
"""

from __future__ import annotations

from typing import Any


class EasyFaaSError(Exception):
    """Base of every error the engine reports on purpose."""

    status = 500
    code = "ServiceException"
    kind = "Server"

    def __init__(self, message: str, **detail: Any):
        super().__init__(message)
        self.detail = detail

    def to_api(self, cause: str = "") -> dict[str, Any]:
        return {
            "Code": self.code,
            "Message": str(self),
            "Cause": cause or self.detail.get("cause", ""),
            "Status": self.status,
            "Type": self.kind,
        }


class ConfigError(EasyFaaSError):
    """Bad engine configuration: names the file and the key."""


class InvalidParameter(EasyFaaSError):
    status, code, kind = 400, "InvalidParameterValueException", "User"


class InvalidRequestContent(EasyFaaSError):
    status, code, kind = 400, "InvalidRequestContentException", "User"


class ManifestError(InvalidParameter):
    """A bundle that cannot be deployed: names the file and, for a manifest, the key."""


class Unauthorized(EasyFaaSError):
    status, code, kind = 403, "AccessDeniedException", "User"


class FunctionNotFound(EasyFaaSError):
    status, code, kind = 404, "ResourceNotFoundException", "User"


class InvocationNotFound(FunctionNotFound):
    pass


class TooManyRequests(EasyFaaSError):
    status, code, kind = 429, "TooManyRequestsException", "User"


class SandboxError(EasyFaaSError):
    """A sandbox could not be created, or died under the engine (not the function's fault)."""

    code = "SandboxException"


class RuntimeNotReady(EasyFaaSError):
    status, code = 502, "RuntimeNotReadyException"


class ServiceUnavailable(EasyFaaSError):
    status, code = 503, "ServiceUnavailableException"


_BY_NAME = {
    cls.__name__: cls
    for cls in (
        EasyFaaSError,
        ConfigError,
        InvalidParameter,
        InvalidRequestContent,
        ManifestError,
        Unauthorized,
        FunctionNotFound,
        InvocationNotFound,
        TooManyRequests,
        SandboxError,
        RuntimeNotReady,
        ServiceUnavailable,
    )
}


def from_wire(error: dict[str, Any]) -> EasyFaaSError:
    """Rebuild an error sent by another component (see ``wire.error_dict``)."""
    cls = _BY_NAME.get(str(error.get("type")), EasyFaaSError)
    detail = {k: v for k, v in error.items() if k not in ("type", "message")}
    return cls(str(error.get("message", "unknown error")), **detail)


def http_status(e: BaseException) -> int:
    return e.status if isinstance(e, EasyFaaSError) else 500
