"""The model holder: which version is served, and following the alias as it moves.

A background task resolves ``MODEL_URI`` (``models:/marketplace-classifier@production``)
every ``SERVE_RELOAD_INTERVAL`` seconds. When it names another version, that version is
loaded in a worker thread, warmed and checked (``serve.loader``), and only then swapped
in, by replacing one reference: requests in flight keep the version they started with.

- Until a first version is served (the tracking server is down, no version holds the
  alias, or the version does not load) the holder retries with backoff (1 s, doubling, at
  most the reload interval) and ``/ready`` says why.
- A version that fails to load or to answer is not swapped in: the old one keeps serving
  (or, before a first one, ``/ready`` stays 503), the failure is logged, counted and shown
  by ``/model`` and ``/ready`` (the error, the attempts, the next retry), and the same
  version is tried again with capped exponential backoff (``SERVE_LOAD_RETRY_INITIAL``,
  doubling, at most ``SERVE_LOAD_RETRY_MAX``): a store that was briefly unreachable heals
  by itself. The alias moving and ``POST /admin/reload`` try at once.
- A text search that fails to load beside its index is retried the same way.
- A tracking server that goes down later changes nothing for requests: the loaded
  version keeps serving, and ``/model`` shows the last failed check.
- Loads run on a daemon thread of the holder's own and download into ``downloads``, a
  folder the service owns: :meth:`ModelHolder.stop` asks a load in progress to give up,
  waits a moment (``SERVE_SHUTDOWN_LOAD_WAIT``) and leaves the folder to the service to
  remove, so a download cut short by a stop is never left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal, TypeVar

from cli import UserError
from marketplace_models.kinds import IMAGE, IMAGE_TEXT, RANKING, TEXT
from registry.kinds import training_command
from registry.resolve import ResolvedModel, resolve_model
from registry.store import connect
from registry.versions import NoSuchModel
from serve.loader import (
    LoadCancelled,
    LoadError,
    ServedModel,
    load_search_index,
    load_served_model,
    load_served_ranker,
    load_served_text_model,
    load_text_search,
)
from serve.metrics import ServiceMetrics
from serve.settings import Settings, variable_name

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0
SHORTEST_SLEEP_S = 0.05
T = TypeVar("T")
# The setting that names each slot's model.
URI_SETTING = {
    IMAGE: "model_uri",
    TEXT: "text_model_uri",
    IMAGE_TEXT: "listing_model_uri",
    RANKING: "ranker_uri",
}

Outcome = Literal["loaded", "unchanged", "failed", "skipped", "unreachable"]


@dataclass(frozen=True)
class CheckResult:
    """What one check of the model URI did."""

    outcome: Outcome
    detail: str
    version: int | None = None


@dataclass
class Backoff:
    """When to try again something that keeps failing: ``initial`` s, doubling, at most ``cap``."""

    initial: float
    cap: float
    attempts: int = 0  # failed attempts in a row
    due_at: float | None = None  # time.monotonic() of the next try; None: nothing pending
    next_retry: datetime | None = None  # the same on the wall clock, for /model and /ready

    def failed(self) -> float:
        """Count a failure; returns the seconds until the next try."""
        self.attempts += 1
        wait = min(self.initial * 2 ** min(self.attempts - 1, 30), self.cap)
        self.due_at = time.monotonic() + wait
        self.next_retry = datetime.now(UTC) + timedelta(seconds=wait)
        return wait

    def due(self) -> bool:
        return self.due_at is None or time.monotonic() >= self.due_at

    def seconds_left(self) -> float | None:
        return None if self.due_at is None else max(0.0, self.due_at - time.monotonic())

    def reset(self) -> None:
        self.attempts, self.due_at, self.next_retry = 0, None, None


class DaemonWorker:
    """One daemon thread that runs a holder's blocking steps (resolve, load, index fetch).

    Unlike ``asyncio.to_thread``, a thread stuck in a download does not keep the process
    alive past shutdown: the holder waits for it a moment, and then the process may exit.
    One long-lived thread per holder, not one per load, so that what a load allocates is
    reused by the next instead of each new thread growing a malloc arena of its own.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the worker thread, awaited."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._serve, name=self.name, daemon=True)
            self._thread.start()
        self._jobs.put((loop, future, function, args))
        return await future

    def _serve(self) -> None:
        while True:
            loop, future, function, args = self._jobs.get()
            try:
                result, error = function(*args), None
            except BaseException as exc:  # handed to the awaiting task, never lost
                result, error = None, exc
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits anymore
                loop.call_soon_threadsafe(_settle, future, result, error)
            del loop, future, function, args, result, error  # hold nothing between jobs


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class ModelHolder:
    """Holds the served :class:`ServedModel` and keeps it in step with the registry."""

    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        index_cache: Path | None = None,
        *,
        kind: str = IMAGE,
        model_uri: str | None = None,
        downloads: Path | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.index_cache = index_cache
        self.kind = kind  # what the versions it serves take (registry.kinds)
        self.model_uri = model_uri or settings.model_uri
        self.current: ServedModel | None = None
        self.reason = "starting: the first model is being looked up"
        self.last_error: str | None = None
        self.last_check: datetime | None = None
        self.last_check_error: str | None = None
        self.downloads = downloads  # where loads download (the service removes it)
        self.retry = Backoff(settings.load_retry_initial, settings.load_retry_max)
        self.text_search_retry = Backoff(settings.load_retry_initial, settings.load_retry_max)
        self.rejected_indexes: dict[str, str] = {}  # index run id -> why it cannot serve
        self._failed_key: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._stopping = threading.Event()
        self._loading: asyncio.Future | None = None
        self._worker = DaemonWorker(f"model-load-{kind}")
        metrics.slot(kind)

    # -- lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="model-holder")

    async def stop(self) -> None:
        """Stop following; ask a load in progress to give up and wait for it a moment."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        loading = self._loading
        if loading is not None and not loading.done():
            log.info("waiting for the %s load in progress to stop", self.kind)
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(
                    asyncio.shield(loading), timeout=self.settings.shutdown_load_wait
                )

    def _cancelled(self) -> bool:
        return self._stopping.is_set()

    async def _in_thread(self, function: Callable[..., T], *args: Any) -> T:
        """Run a blocking step (a load, an index fetch) where :meth:`stop` can wait for it."""
        self._loading = asyncio.ensure_future(self._worker.run(function, *args))
        return await asyncio.shield(self._loading)

    @property
    def follows_alias(self) -> bool:
        """Whether the URI can move (an alias or a stage), as opposed to one fixed version."""
        uri = self.model_uri.strip()
        if not uri.startswith("models:/"):
            return False
        if "@" in uri:
            return True
        suffix = uri.rstrip("/").rsplit("/", 1)[-1]
        return uri.count("/") >= 2 and not suffix.split(".")[0].isdigit()

    async def _follow(self) -> None:
        delay = FIRST_RETRY_S
        interval = self.settings.reload_interval
        while True:
            try:
                await self.check()
            except Exception:  # never let the follower die: log and try again later
                log.exception("checking %s failed", self.model_uri)
            if self.current is None:
                pause = min(delay, interval)
                delay = min(delay * 2, interval)
            else:
                delay = FIRST_RETRY_S
                pause = interval
            for backoff in (self.retry, self.text_search_retry):
                left = backoff.seconds_left()
                if left is not None:  # a retry falls due before the next poll
                    pause = min(pause, left)
            await asyncio.sleep(max(pause, SHORTEST_SLEEP_S))

    # -- one check
    def _resolve(self) -> ResolvedModel:
        client = connect(self.settings.tracking_uri)
        return resolve_model(self.model_uri, client)

    def _load(self, resolved: ResolvedModel) -> ServedModel:
        client = None
        if resolved.name is not None:
            with contextlib.suppress(UserError):
                client = connect(self.settings.tracking_uri)
        if self.kind == RANKING:
            return load_served_ranker(
                resolved,
                tracking_uri=self.settings.tracking_uri,
                client=client,
                ui_url=self.settings.ui_url,
                downloads=self.downloads,
                cancelled=self._cancelled,
            )
        if self.kind == TEXT:
            return load_served_text_model(
                resolved,
                tracking_uri=self.settings.tracking_uri,
                max_pixels=self.settings.max_image_pixels,
                client=client,
                ui_url=self.settings.ui_url,
                downloads=self.downloads,
                cancelled=self._cancelled,
            )
        return _with_ranking_catalogue(
            load_served_model(
                resolved,
                kind=self.kind,
                tracking_uri=self.settings.tracking_uri,
                engine=self.settings.engine,
                max_pixels=self.settings.max_image_pixels,
                batch_size=self.settings.batch_size,
                client=client,
                ui_url=self.settings.ui_url,
                index_cache=self.index_cache,
                downloads=self.downloads,
                cancelled=self._cancelled,
                rejected_indexes=self.rejected_indexes,
            )
        )

    def _find_index(self, current: ServedModel, resolved: ResolvedModel) -> ServedModel | None:
        """``current`` with its search index, if one was built since it loaded."""
        client = connect(self.settings.tracking_uri)
        index, problem = load_search_index(
            resolved, client, self.index_cache, current.embedding_dim, self.rejected_indexes
        )
        if index is None:
            current.index_problem = problem
            return None
        text_search, text_problem = load_text_search(resolved, client, self.index_cache)
        return _with_ranking_catalogue(
            dataclasses.replace(
                current,
                index=index,
                index_problem=None,
                text_search=text_search,
                text_search_problem=text_problem,
            )
        )

    def _retry_text_search(self, current: ServedModel, resolved: ResolvedModel) -> ServedModel:
        """``current`` with its text search loaded again (it failed to load before)."""
        client = connect(self.settings.tracking_uri)
        text_search, problem = load_text_search(resolved, client, self.index_cache)
        return _with_ranking_catalogue(
            dataclasses.replace(current, text_search=text_search, text_search_problem=problem)
        )

    async def _complete(self, current: ServedModel, resolved: ResolvedModel) -> CheckResult:
        """The served version again: fetch its index if one was built since, retry its text
        search if that failed to load."""
        version = resolved.version
        if current.index is None and self.index_cache is not None:
            with_index = await self._in_thread(self._find_index, current, resolved)
            if with_index is None:
                return CheckResult("unchanged", "already serving it", version)
            self._swap_search(with_index)
            log.info("search index of %s loaded", current.details.label)
            return CheckResult("loaded", "search index loaded", version)
        if current.text_search_problem is not None and self.text_search_retry.due():
            retried = await self._in_thread(self._retry_text_search, current, resolved)
            self._swap_search(retried)
            if retried.text_search is not None:
                log.info("text search of %s loaded", current.details.label)
                return CheckResult("loaded", "text search loaded", version)
        return CheckResult("unchanged", "already serving it", version)

    def _swap_search(self, model: ServedModel) -> None:
        """Serve ``model`` (the same version with more of its search); count a text search
        that still failed, for its backoff."""
        self.current = model
        if model.text_search_problem is None:
            self.text_search_retry.reset()
        else:
            wait = self.text_search_retry.failed()
            log.warning("%s; trying again in %.0f s", model.text_search_problem, wait)

    async def check(self, force: bool = False) -> CheckResult:
        """Resolve the URI; load and swap in the version it names if that is new.

        A version that failed before is tried again once its backoff is over, at once when
        the alias names another version, and at once with ``force``.
        """
        async with self._lock:
            self.last_check = datetime.now(UTC)
            try:
                resolved = await self._worker.run(self._resolve)
            except Exception as exc:
                return self._unreachable(exc)
            self.last_check_error = None
            key = resolved.load_uri
            current = self.current
            if current is not None and current.key == key:
                self._failed_key = None  # the alias came back: nothing left to retry
                self.retry.reset()
                return await self._complete(current, resolved)
            if key != self._failed_key:
                self.retry.reset()  # another version: its own attempts, starting now
            elif not force and not self.retry.due():
                return CheckResult("skipped", self.last_error or "", resolved.version)
            return await self._load_and_swap(resolved, current)

    def _unreachable(self, exc: Exception) -> CheckResult:
        detail = _missing_model(exc, self.kind) if isinstance(exc, NoSuchModel) else _one_line(exc)
        if self.last_check_error != detail:
            log.warning("cannot resolve %s: %s", self.model_uri, detail)
        self.last_check_error = detail
        if self.current is None:
            self.reason = f"no model yet: {detail}"
        return CheckResult("unreachable", detail)

    async def _load_and_swap(
        self, resolved: ResolvedModel, current: ServedModel | None
    ) -> CheckResult:
        key = resolved.load_uri
        log.info("loading %s (%s)", key, self.model_uri)
        try:
            model = await self._in_thread(self._load, resolved)
        except LoadCancelled as exc:
            return CheckResult("failed", str(exc), resolved.version)
        except LoadError as exc:
            return self._failed(exc, key, current, resolved.version)
        self.current = model  # the swap: one reference, requests in flight keep theirs
        self._failed_key = None
        self.retry.reset()
        self.text_search_retry.reset()
        if model.text_search_problem is not None:
            self.text_search_retry.failed()
        self.last_error = None
        self.reason = ""
        details = model.details
        self.metrics.served(self.kind, details.name, details.label, details.engine)
        previous = f" (was {current.details.label})" if current is not None else ""
        log.info("now serving %s%s", model.details.label, previous)
        return CheckResult("loaded", f"now serving {model.details.label}", resolved.version)

    def _failed(
        self, exc: LoadError, key: str, current: ServedModel | None, version: int | None
    ) -> CheckResult:
        self._failed_key = key
        self.last_error = str(exc)
        wait = self.retry.failed()
        self.metrics.failed(self.kind)
        again = f"attempt {self.retry.attempts} failed, trying again in {wait:.0f} s"
        if current is None:
            self.reason = f"no model yet: {exc}"
            log.error("%s; %s", exc, again)
        else:
            log.error("%s; still serving %s; %s", exc, current.details.label, again)
        return CheckResult("failed", str(exc), version)

    def status(self) -> dict[str, Any]:
        """What /model and /ready say about this slot: what it serves, its last error, the
        failed attempts in a row and when it tries again."""
        current = self.current
        return {
            "kind": self.kind,
            "uri": self.model_uri,
            "version": current.details.version if current is not None else None,
            "loaded": current is not None,
            "reason": self.reason or None,
            "last_error": self.last_error,
            "attempts": self.retry.attempts,
            "next_retry": self.retry.next_retry,
            "last_check": self.last_check,
            "last_check_error": self.last_check_error,
        }


def _with_ranking_catalogue(model: ServedModel) -> ServedModel:
    """``model`` with the catalogue of its learned ranking built (when it has an index and
    a text search), on the load's thread rather than in its first ranked search; a failure
    only leaves the ranked searches to the blend (logged)."""
    try:
        model.ranking_catalogue()
    except Exception:
        log.exception("cannot build the ranking catalogue of %s", model.details.label)
    return model


def _missing_model(exc: NoSuchModel, kind: str) -> str:
    """What to do about a registered model that does not exist, in the service's terms:
    the entry point that trains one of the slot's kind, and the setting that names it."""
    command = training_command(kind)  # registry.kinds: the entry point of each kind
    return (
        f"{exc.missing}: train and register one with `{command}`, or point "
        f"{variable_name(URI_SETTING[kind])} at another model"
    )


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
