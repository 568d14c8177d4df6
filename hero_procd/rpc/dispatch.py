"""From a request's bytes to a response's bytes, through jsonrpcserver.

We parse with orjson and check the request's structure ourselves (cheap and
precise), then let jsonrpcserver route it to the method; its jsonschema
validator cost ~80 us a call, our check costs about 1 us.

Bounds (README "Limits"): a batch holds at most `max_batch` requests (over it,
one -32600 naming the bound), and at most `max_inflight` of its calls run at
once. A batch's answer is produced window by window (`Dispatcher.stream`), so
the server can write and forget each window instead of holding them all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from jsonrpcserver import Error, Success, async_dispatch_to_serializable
from jsonrpcserver.result import Result
from jsonrpcserver.sentinels import NODATA

from hero_procd import gcpause
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

# A float id (a fraction, an exponent, or an integer past 64 bits, which orjson
# reads as a float) is replaced by an orjson.Fragment of its source text before
# dispatch, so the answer carries the number exactly as the client wrote it.
_ID_TYPES = (str, int, float, orjson.Fragment, type(None))
# Frames larger than this are parsed off the event loop thread, so other
# connections keep being served meanwhile.
_PARSE_IN_THREAD_BYTES = 1 << 20
# Frames larger than this are handled with the garbage collector paused (~5,000 jobs).
_PAUSE_GC_BYTES = 128 << 10


class _RawNumber(str):
    """The source text of a JSON number, as the stdlib parser saw it."""


def _raw_number(text: str) -> _RawNumber:
    return _RawNumber(text)


def _as_float(text: str) -> float:
    # Past the double range: ±inf, which every check of a number refuses as not finite. Not
    # its text (a str): that passed for a string, ["echo", 1E400] ran `echo 1E400`.
    return float(text)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _source_ids(payload: bytes | str) -> Any:
    """The frame re-read with every number kept as its source text (only ids are used)."""
    return json.loads(payload, parse_float=_raw_number, parse_int=_raw_number)


def _parse_fallback(payload: bytes | str) -> Any:
    """Read a frame orjson refused for a number past the double range (1E400 is valid JSON).

    Such numbers become infinities: an id is then read again from the source and echoed as
    written (`_has_float_id`); a param value is refused as a number that is not finite, or
    as not a string, by the param's type check.
    """
    doc = json.loads(payload, parse_float=_as_float, parse_constant=_reject_constant)
    orjson.dumps(doc)  # what orjson could not hold (lone surrogates, say) stays a parse error
    return doc


def _has_float_id(req: Any) -> bool:
    return isinstance(req, dict) and isinstance(req.get("id"), float | _RawNumber)


def _exact_id(value: Any) -> Any:
    return orjson.Fragment(str(value).encode()) if isinstance(value, _RawNumber) else value


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
        return 'member "id" must be a string, a number or null'
    return None


def _identity(x: Any) -> Any:
    return x


def _accept(x: Any) -> Any:
    return x


class Dispatcher:
    """Routes JSON-RPC payloads to the registered methods."""

    def __init__(self, app: App, handlers: dict[str, Handler]) -> None:
        self.app = app
        self.max_batch = app.config.max_batch
        self.max_inflight = app.config.max_inflight
        self.methods: dict[str, Callable[..., Any]] = {
            name: self._wrap(name, fn) for name, fn in handlers.items()
        }

    def _wrap(self, name: str, fn: Handler) -> Callable[..., Any]:
        app = self.app
        fn = app.observed(name, fn)  # metrics (calls, latency) and the dashboard's change feed

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
        pieces = [piece async for piece in self.stream(payload)]
        return b"".join(pieces) if pieces else None

    async def stream(self, payload: bytes | str) -> AsyncIterator[bytes]:
        """Answer one frame in pieces whose concatenation is the response (none: no answer).

        A batch runs `max_inflight` calls at a time and yields each window's
        answers as soon as they are serialized.
        """
        self.app.stats.requests += 1
        # A big frame is parsed, checked, written and answered with the garbage collector
        # paused (hero_procd/gcpause.py), and its objects die before the pause ends; no
        # `yield` in the block, so an answer never left unread can hold the pause.
        answer: bytes | None = None
        with gcpause.paused(len(payload) > _PAUSE_GC_BYTES):
            doc = await self._parse(payload)
            if not isinstance(doc, bytes | list):
                if _has_float_id(doc):
                    doc["id"] = (await self._source_ids(payload)).get("id")
                one = await self._one(doc)
                doc = None
                if one is not None:
                    answer = orjson.dumps(one)
                del one
        if isinstance(doc, bytes):
            yield doc  # a parse error, already serialized
            return
        if isinstance(doc, list):
            async for piece in self._batch(payload, doc):
                yield piece
            return
        if answer is not None:
            yield answer

    async def _parse(self, payload: bytes | str) -> Any:
        big = len(payload) > _PARSE_IN_THREAD_BYTES
        try:
            return await asyncio.to_thread(orjson.loads, payload) if big else orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            error = exc
        if "infinity" in str(error):
            try:
                return _parse_fallback(payload)
            except (ValueError, TypeError, orjson.JSONEncodeError):
                pass
        return orjson.dumps(error_response(PARSE_ERROR, "Parse error", {"problem": str(error)}))

    async def _source_ids(self, payload: bytes | str) -> Any:
        if len(payload) > _PARSE_IN_THREAD_BYTES:
            return await asyncio.to_thread(_source_ids, payload)
        return _source_ids(payload)

    async def _batch(self, payload: bytes | str, doc: list[Any]) -> AsyncIterator[bytes]:
        if not doc:
            yield orjson.dumps(
                error_response(INVALID_REQUEST, "Invalid Request", {"problem": "empty batch"})
            )
            return
        if len(doc) > self.max_batch:
            problem = (
                f"a batch of {len(doc)} requests is over the bound of {self.max_batch}"
                " requests per batch (max_batch, HERO_PROC_MAX_BATCH)"
            )
            data = {"problem": problem, "bound": "max_batch", "limit": self.max_batch}
            yield orjson.dumps(error_response(INVALID_REQUEST, "Invalid Request", data))
            return
        if any(_has_float_id(item) for item in doc):
            source = await self._source_ids(payload)
            for item, raw in zip(doc, source, strict=True):
                if _has_float_id(item):
                    item["id"] = raw.get("id")
        # Each window's answers are held until the next window has run, so the
        # last piece can carry the closing bracket: a batch of one window is one piece.
        held: bytes | None = None
        for start in range(0, len(doc), self.max_inflight):
            window = doc[start : start + self.max_inflight]
            answers = await asyncio.gather(*(self._one(item) for item in window))
            out = b",".join(orjson.dumps(a) for a in answers if a is not None)
            del window, answers  # this window's objects can go before the next one runs
            if not out:
                continue
            if held is None:
                held = b"[" + out
            else:
                yield held
                held = b"," + out
        if held is not None:
            yield held + b"]"

    async def _one(self, req: Any) -> dict[str, Any] | None:
        problem = _structure_problem(req)
        if problem is not None:
            req_id = req.get("id") if isinstance(req, dict) else None
            if not isinstance(req_id, _ID_TYPES) or isinstance(req_id, bool):
                req_id = None
            return error_response(
                INVALID_REQUEST, "Invalid Request", {"problem": problem}, _exact_id(req_id)
            )
        if isinstance(req.get("id"), _RawNumber):
            req["id"] = _exact_id(req["id"])
        answer = await async_dispatch_to_serializable(
            req, self.methods, deserializer=_identity, validator=_accept
        )
        assert not isinstance(answer, list)  # one request object, one answer
        return answer
