"""The service's ASGI middleware: request bounds, metrics and the X-Model-Version header."""

from __future__ import annotations

import asyncio
import logging
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.errors import internal_error
from serve.metrics import ServiceMetrics
from serve.settings import Settings

log = logging.getLogger(__name__)

MODEL_HEADER = "X-Model-Version"
NO_MODEL = "none"
BUSY_RETRY_S = 1
CLIENT_GONE = 499  # nginx's "client closed request", for the metrics: nobody gets it
UNBOUNDED_PATHS = frozenset({"/health", "/ready", "/metrics", "/healthcheck"})


class ServiceMiddleware:
    """Bounds what a request may cost, counts and times requests, adds X-Model-Version.

    - At most ``SERVE_MAX_CONCURRENT_REQUESTS`` requests are handled at once (the probes
      and ``/metrics`` aside): past it, 503 with ``Retry-After``, the body left unread.
    - A body is refused from its Content-Length before anything is read, or while it
      streams in (chunked uploads) as soon as it passes the limit: 413 with a JSON
      ``detail``. A client that has not sent its whole body within ``SERVE_BODY_TIMEOUT``
      is cut off: 408, and the connection closed.
    - Once the body is in, a client that goes away cancels its request (counted as 499):
      its images are dropped before they reach the engine.
    - An unexpected error is answered here too (500, logged), so that it carries the header.
    """

    def __init__(self, app: ASGIApp, settings: Settings, metrics: ServiceMetrics) -> None:
        self.app = app
        self.limit = settings.max_upload_bytes
        self.body_timeout = settings.body_timeout
        self.max_concurrent = settings.max_concurrent_requests
        self.in_flight = 0
        self.metrics = metrics

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"the upload is over the {self.limit:,}-byte limit: send a smaller photo "
            "(SERVE_MAX_UPLOAD_BYTES sets the limit)",
        )

    def _too_slow(self) -> HTTPException:
        return HTTPException(
            408,
            f"the request body did not arrive within {self.body_timeout:g} s: send it again "
            "(SERVE_BODY_TIMEOUT sets the limit)",
            headers={"Connection": "close"},
        )

    def _too_many(self) -> HTTPException:
        return HTTPException(
            503,
            f"the service is busy ({self.max_concurrent} requests in progress, "
            "SERVE_MAX_CONCURRENT_REQUESTS): try again shortly",
            headers={"Retry-After": str(BUSY_RETRY_S)},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
                headers = list(message.get("headers", []))
                headers.append((MODEL_HEADER.lower().encode(), _model_label(scope).encode()))
                message = {**message, "headers": headers}
            await send(message)

        counted = scope.get("path") not in UNBOUNDED_PATHS
        try:
            length = _content_length(scope)
            if length is not None and length > self.limit:
                await _send_problem(scope, send_with_header, self._too_large())
                return
            if counted and self.in_flight >= self.max_concurrent:
                await _send_problem(scope, send_with_header, self._too_many())
                return
            self.in_flight += counted
            try:
                await self._handle(scope, receive, send_with_header, status)
            finally:
                self.in_flight -= counted
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.requests.labels(route, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)

    async def _handle(self, scope: Scope, receive: Receive, send: Send, status: dict) -> None:
        """Run the app in a task of its own, which a client that leaves cancels."""
        body = _Body(receive, self.limit, self.body_timeout, self._too_large, self._too_slow)
        task = asyncio.ensure_future(self.app(scope, body.receive, send))
        left = False

        def client_left() -> None:  # once answered, the "disconnect" is just the end
            nonlocal left
            if not status["sent"]:
                left = True
                task.cancel()

        body.on_gone = client_left
        try:
            await task
        except HTTPException as exc:  # a limit, raised outside a route's handler
            if status["sent"] or exc.status_code not in (408, 413):
                raise
            await _send_problem(scope, send, exc)
        except asyncio.CancelledError:
            if not left:
                raise
            status["code"] = CLIENT_GONE  # nobody to answer
        except Exception as exc:
            if status["sent"]:
                raise
            log.exception("unexpected error on %s %s", scope["method"], scope["path"])
            await _send_problem(scope, send, internal_error(exc))
        finally:
            body.close()


class _Body:
    """The request's ``receive``, with the size limit and the body deadline applied.

    Once the whole body is in, a watcher reads on (all that can come is the client leaving)
    and calls ``on_gone`` when it does; a later ``receive`` from the app waits for that.
    """

    def __init__(self, receive: Receive, limit: int, timeout_s: float, too_large, too_slow):
        self._receive = receive
        self._limit = limit
        self._deadline = asyncio.get_running_loop().time() + timeout_s
        self._too_large = too_large
        self._too_slow = too_slow
        self._received = 0
        self._watcher: asyncio.Task | None = None
        self._left = asyncio.Event()
        self.on_gone = None

    async def receive(self) -> Message:
        if self._watcher is not None:
            await self._left.wait()
            return {"type": "http.disconnect"}
        try:
            async with asyncio.timeout_at(self._deadline):
                message = await self._receive()
        except TimeoutError:
            raise self._too_slow() from None
        if message["type"] == "http.request":
            self._received += len(message.get("body", b""))
            if self._received > self._limit:
                raise self._too_large()
            if not message.get("more_body", False):
                self._watcher = asyncio.ensure_future(self._watch())
        return message

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        self._left.set()
        if self.on_gone is not None:
            self.on_gone()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def _send_problem(scope: Scope, send: Send, exc: HTTPException) -> None:
    response = JSONResponse(
        {"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers
    )
    response.headers["Connection"] = "close"  # the rest of the body is not read

    async def no_body() -> Message:
        return {"type": "http.disconnect"}

    await response(scope, no_body, send)


def _model_label(scope: Scope) -> str:
    state = scope.get("state") or {}
    if "model_version" in state:
        return state["model_version"]
    app = scope.get("app")
    holder = getattr(getattr(app, "state", None), "holder", None)
    current = getattr(holder, "current", None)
    return current.details.label if current is not None else NO_MODEL
