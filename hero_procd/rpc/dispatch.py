"""From a request's bytes to a response's bytes, through jsonrpcserver.

We parse with orjson and check the request's structure ourselves (cheap and
precise), then let jsonrpcserver route it to the method; its jsonschema
validator cost ~80 us a call, our check costs about 1 us.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
from jsonrpcserver import Error, Success, async_dispatch_to_serializable
from jsonrpcserver.result import Result
from jsonrpcserver.sentinels import NODATA

from hero_procd.app import App
from hero_procd.errors import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    PARSE_ERROR,
    HeroError,
)
from hero_procd.params import Params
from hero_procd.rpc.registry import Handler

log = logging.getLogger(__name__)

_ID_TYPES = (str, int, type(None))


def error_response(code: int, message: str, data: Any = None, req_id: Any = None) -> dict[str, Any]:
    """A JSON-RPC error response object."""
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "error": err, "id": req_id}


def _structure_problem(req: Any) -> str | None:
    """What makes `req` not a JSON-RPC 2.0 request object, or None if it is one."""
    if not isinstance(req, dict):
        return "a request must be an object"
    if req.get("jsonrpc") != "2.0":
        return 'member "jsonrpc" must be exactly "2.0"'
    method = req.get("method")
    if not isinstance(method, str):
        return 'member "method" must be a string'
    if "params" in req and not isinstance(req["params"], dict | list):
        return 'member "params" must be an object or an array'
    if "id" in req and (isinstance(req["id"], bool) or not isinstance(req["id"], _ID_TYPES)):
        return 'member "id" must be a string, an integer or null'
    return None


def _identity(x: Any) -> Any:
    return x


def _accept(x: Any) -> Any:
    return x


class Dispatcher:
    """Routes JSON-RPC payloads to the registered methods."""

    def __init__(self, app: App, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.methods: dict[str, Callable[..., Any]] = {
            name: self._wrap(name, fn) for name, fn in handlers.items()
        }

    def _wrap(self, name: str, fn: Handler) -> Callable[..., Any]:
        app = self.app

        async def entry(*args: Any, **kwargs: Any) -> Result:
            if args:
                return Error(
                    INVALID_PARAMS,
                    "Invalid params",
                    {"field": None, "problem": "params must be an object (by name), not an array"},
                )
            try:
                return Success(await fn(app, Params(kwargs)))
            except HeroError as exc:
                return Error(exc.code, exc.message, exc.data if exc.data is not None else NODATA)
            except Exception as exc:
                log.exception("rpc method failed", extra={"method": name})
                return Error(
                    INTERNAL_ERROR, "Internal error", {"detail": f"{type(exc).__name__}: {exc}"}
                )

        entry.__name__ = name
        return entry

    async def handle(self, payload: bytes | str) -> bytes | None:
        """Answer one frame (a request or a batch); None when nothing is to be sent back."""
        self.app.stats.requests += 1
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            return orjson.dumps(error_response(PARSE_ERROR, "Parse error", {"problem": str(exc)}))
        if isinstance(doc, list):
            if not doc:
                return orjson.dumps(
                    error_response(INVALID_REQUEST, "Invalid Request", {"problem": "empty batch"})
                )
            answers = await asyncio.gather(*(self._one(item) for item in doc))
            out = [a for a in answers if a is not None]
            return orjson.dumps(out) if out else None
        answer = await self._one(doc)
        return None if answer is None else orjson.dumps(answer)

    async def _one(self, req: Any) -> dict[str, Any] | None:
        problem = _structure_problem(req)
        if problem is not None:
            req_id = req.get("id") if isinstance(req, dict) else None
            if not isinstance(req_id, _ID_TYPES) or isinstance(req_id, bool):
                req_id = None
            return error_response(INVALID_REQUEST, "Invalid Request", {"problem": problem}, req_id)
        answer = await async_dispatch_to_serializable(
            req, self.methods, deserializer=_identity, validator=_accept
        )
        assert not isinstance(answer, list)  # one request object, one answer
        return answer
