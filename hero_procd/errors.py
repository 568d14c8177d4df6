"""One exception root and the table of stable JSON-RPC error codes.

The daemon raises these; the RPC layer turns them into JSON-RPC errors; the
client turns the codes back into the same classes. Import-light on purpose:
the CLI imports this module.
"""

from __future__ import annotations

from typing import Any

# Standard JSON-RPC 2.0 codes.
PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

# Application codes: stable, documented in rpc_schema/openrpc.json.
NOT_FOUND = -32001
CONFLICT = -32002
BUSY = -32003
INVALID_STATE = -32004
STORAGE_ERROR = -32005


class HeroError(Exception):
    """Something went wrong in hero-procd."""

    code = INTERNAL_ERROR

    def __init__(self, message: str | None = None, data: dict[str, Any] | None = None) -> None:
        self.message = message or (self.__doc__ or "error").strip().splitlines()[0]
        self.data = data
        super().__init__(self.message)

    def __str__(self) -> str:
        if self.data:
            details = ", ".join(f"{k}={v}" for k, v in self.data.items())
            return f"{self.message} ({details})"
        return self.message


class InvalidParams(HeroError):
    """Invalid params."""

    code = INVALID_PARAMS

    def __init__(self, field: str | None, problem: str) -> None:
        super().__init__("Invalid params", {"field": field, "problem": problem})
        self.field = field
        self.problem = problem

    def __str__(self) -> str:
        where = f"{self.field}: " if self.field else ""
        return f"invalid params: {where}{self.problem}"


class NotFound(HeroError):
    """Not found."""

    code = NOT_FOUND


class Conflict(HeroError):
    """Conflict with the current state."""

    code = CONFLICT


class Busy(HeroError):
    """The daemon is busy; try again."""

    code = BUSY


class InvalidState(HeroError):
    """The object is not in a state that allows this."""

    code = INVALID_STATE


class StorageError(HeroError):
    """The database refused the write (disk full, read-only, corrupt)."""

    code = STORAGE_ERROR


class RemoteError(HeroError):
    """An error answered by the daemon that has no class of its own here."""

    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message, data if isinstance(data, dict) else None)
        self.code = code
        self.raw_data = data


# code -> (name, class). The client maps codes back through this table.
ERROR_CODES: dict[int, tuple[str, type[HeroError]]] = {
    INVALID_PARAMS: ("invalid_params", InvalidParams),
    NOT_FOUND: ("not_found", NotFound),
    CONFLICT: ("conflict", Conflict),
    BUSY: ("busy", Busy),
    INVALID_STATE: ("invalid_state", InvalidState),
    STORAGE_ERROR: ("storage_error", StorageError),
}


def from_wire(code: int, message: str, data: Any = None) -> HeroError:
    """Rebuild the exception the daemon raised from a JSON-RPC error object."""
    entry = ERROR_CODES.get(code)
    if entry is None:
        return RemoteError(code, message, data)
    cls = entry[1]
    if cls is InvalidParams:
        field = data.get("field") if isinstance(data, dict) else None
        problem = data.get("problem", message) if isinstance(data, dict) else message
        return InvalidParams(field, str(problem))
    err = cls(message, data if isinstance(data, dict) else None)
    return err
