"""Errors that cross the wire, one code per class.

    InclError                 internal
    ├── DecodeError           decode_error       a message that is not what its subject carries
    ├── VersionMismatch       version_mismatch   the sender speaks another protocol version
    ├── Unavailable           unavailable        no controller answered
    │   └── NoResponders      no_responders      NATS says nothing serves the subject (no controller runs)
    ├── BadRequest            bad_request
    │   ├── SpecInvalid       spec_invalid       the job spec is refused; `field` names the path
    │   └── Unschedulable     unschedulable      no agent or provider could ever fit the job
    ├── NotFound              not_found          unknown job or agent id
    ├── Conflict              conflict           e.g. cancelling a job that has already finished
    └── NotAllowed            not_allowed        the caller may not do this (the server's permissions, or a request
                                                 that names another identity than its subject)

Receivers match on the class (or `code`), never on the message text.
"""

from __future__ import annotations


class InclError(Exception):
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __str__(self) -> str:
        return f"{self.field}: {self.message}" if self.field else self.message


class DecodeError(InclError):
    code = "decode_error"


class VersionMismatch(InclError):
    code = "version_mismatch"


class Unavailable(InclError):
    code = "unavailable"


class NoResponders(Unavailable):
    code = "no_responders"


class BadRequest(InclError):
    code = "bad_request"


class SpecInvalid(BadRequest):
    code = "spec_invalid"


class Unschedulable(BadRequest):
    code = "unschedulable"


class NotFound(InclError):
    code = "not_found"


class Conflict(InclError):
    code = "conflict"


class NotAllowed(InclError):
    code = "not_allowed"


def _all_subclasses(cls: type[InclError]) -> list[type[InclError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_subclasses(sub))
    return out


BY_CODE: dict[str, type[InclError]] = {cls.code: cls for cls in _all_subclasses(InclError)}
assert len(BY_CODE) == len(_all_subclasses(InclError)), "error codes must be unique"


def from_code(code: str, message: str, field: str | None = None) -> InclError:
    """The exception for a code received on the wire; unknown codes become a plain InclError."""
    return BY_CODE.get(code, InclError)(message, field=field)
