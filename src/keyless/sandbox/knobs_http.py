"""How a front applies its knobs to a request, and the `/_sandbox/...` routes every front serves for them."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from keyless.sandbox.knobs import Call, Knobs, Refusal, Verdict, parse_settings

__all__ = ["Dialect", "knob_routes", "serve_call"]

Sleep = Callable[[float], Awaitable[None]]


class _NoRoute(Exception):
    """Not one of the knob routes: the front answers it (or 404s it) itself."""


class Dialect(Protocol):
    """How one cloud says what the knobs decided."""

    def refuse(self, refusal: Refusal, call: Call) -> web.StreamResponse:
        """The answer to a throttled, failed or denied call, in the cloud's words."""
        ...

    def lost(self, call: Call) -> web.StreamResponse:
        """The 5xx a client sees when the call did its work but its answer was lost."""
        ...

    def decorate(self, response: web.StreamResponse, verdict: Verdict) -> None:
        """Add what the cloud sends on a served call (ARM's x-ms-ratelimit-remaining-* headers)."""
        ...


async def serve_call(knobs: Knobs, request: web.BaseRequest, call: Call, dialect: Dialect,
                     handler: Callable[[], Awaitable[web.StreamResponse]], sleep: Sleep = asyncio.sleep
                     ) -> web.StreamResponse:
    """Wait the call's latency, then refuse it or serve it; a lost answer is lost only after the work is done."""
    verdict = knobs.admit(call)
    if verdict.delay > 0:
        await sleep(verdict.delay)
    if verdict.refusal is not None:
        return dialect.refuse(verdict.refusal, call)
    response = await handler()
    if response.prepared or response.status >= 400:  # a stream already answered, or nothing was done to lose
        return response
    lost = verdict.lose or knobs.take_lost(call)
    if lost == "drop" and request.transport is not None:
        request.transport.abort()  # the work is done; the client only sees its connection die
    if lost is not None:
        return dialect.lost(call)
    dialect.decorate(response, verdict)
    return response


def _answer(body: Any, status: int = 200) -> web.Response:
    return web.json_response(body, status=status)


def _filters(body: Mapping[str, Any]) -> tuple[str, ...]:
    match = body.get("match", [])
    if isinstance(match, str):
        return (match,)
    if isinstance(match, list) and all(isinstance(m, str) for m in match):
        return tuple(match)
    raise ValueError("match must be a string or a list of strings")


def _count(body: Mapping[str, Any]) -> int:
    count = body.get("count", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError("count must be a non-negative integer")
    return count


def _seconds(body: Mapping[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"{key} must be a non-negative number of seconds")
    return float(value)


def _apply(knobs: Knobs, route: str, body: Mapping[str, Any]) -> Any:
    """Run one POST route; ValueError for a bad body."""
    if route == "knobs":
        settings = parse_settings(body, knobs.settings)
        if "timeScale" in body:
            scale = body["timeScale"]
            if isinstance(scale, bool) or not isinstance(scale, int | float):
                raise ValueError("timeScale must be a number")
            knobs.time.factor = float(scale)
        knobs.configure(settings)
        return knobs.to_json()
    if route == "calls/reset":
        knobs.reset_calls()
        return {"operations": {}, "methods": {}, "total": 0}
    if route == "faults/throttle":
        knobs.throttle_next(_count(body), retry_after=_seconds(body, "retryAfter") or 1.0, match=_filters(body))
    elif route == "faults/fail":
        status = body.get("status", 500)
        if not isinstance(status, int):
            raise ValueError("status must be an integer")
        knobs.fail_next(_count(body), status=status, match=_filters(body), retry_after=_seconds(body, "retryAfter"))
    elif route == "faults/lose":
        knobs.lose_next(_count(body), mode=body.get("mode", "error"), match=_filters(body))
    elif route == "faults/deny":
        actions = body.get("actions", [])
        if not isinstance(actions, list) or not all(isinstance(a, str) for a in actions):
            raise ValueError("actions must be a list of strings")
        knobs.deny(actions)
    elif route == "faults/reset":
        knobs.reset_faults()
    else:
        raise _NoRoute(route)
    return knobs.faults().to_json()


def calls_json(knobs: Knobs) -> dict[str, Any]:
    operations = knobs.calls()
    return {"operations": dict(sorted(operations.items())), "methods": knobs.calls_by_method(),
            "total": sum(operations.values())}


async def knob_routes(knobs: Knobs, request: web.BaseRequest, segments: Sequence[str]) -> web.Response | None:
    """Serve `/_sandbox/{knobs,calls,faults...}` (segments after `_sandbox`); None for a route not among them."""
    route = "/".join(segments)
    if request.method == "GET":
        if route == "knobs":
            return _answer(knobs.to_json())
        if route == "calls":
            return _answer(calls_json(knobs))
        if route == "faults":
            return _answer(knobs.faults().to_json())
        return None
    if request.method == "DELETE" and route == "calls":
        route = "calls/reset"
    elif request.method != "POST":
        return None
    raw = await request.read()
    try:
        body = json.loads(raw) if raw.strip() else {}
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return _answer(_apply(knobs, route, body))
    except _NoRoute:
        return None
    except ValueError as exc:
        return _answer({"message": str(exc)}, 400)
