"""The model holder: which version is served, and following the alias as it moves.

A background task resolves ``MODEL_URI`` (``models:/marketplace-classifier@production``)
every ``SERVE_RELOAD_INTERVAL`` seconds. When it names another version, that version is
loaded in a worker thread, warmed and checked (``serve.loader``), and only then swapped
in, by replacing one reference: requests in flight keep the version they started with.

- Until a first version is served (the tracking server is down, no version holds the
  alias, or the version does not load) the holder retries with backoff (1 s, doubling, at
  most the reload interval) and ``/ready`` says why.
- A version that fails to load or to answer is not swapped in: the old one keeps serving,
  the failure is logged, counted and shown by ``/model``, and the same version is tried
  again only when the alias moves again or on ``POST /admin/reload``.
- A tracking server that goes down later changes nothing for requests: the loaded
  version keeps serving, and ``/model`` shows the last failed check.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from cli import UserError
from marketplace_models.kinds import IMAGE, TEXT
from registry.resolve import ResolvedModel, resolve_model
from registry.store import connect
from serve.loader import (
    LoadError,
    ServedModel,
    load_search_index,
    load_served_model,
    load_served_text_model,
    load_text_search,
)
from serve.metrics import ServiceMetrics
from serve.settings import Settings

log = logging.getLogger(__name__)

FIRST_RETRY_S = 1.0

Outcome = Literal["loaded", "unchanged", "failed", "skipped", "unreachable"]


@dataclass(frozen=True)
class CheckResult:
    """What one check of the model URI did."""

    outcome: Outcome
    detail: str
    version: int | None = None


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
        self._failed_key: str | None = None
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None

    # -- lifecycle
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._follow(), name="model-holder")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

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
                await asyncio.sleep(min(delay, interval))
                delay = min(delay * 2, interval)
            else:
                delay = FIRST_RETRY_S
                await asyncio.sleep(interval)

    # -- one check
    def _resolve(self) -> ResolvedModel:
        client = connect(self.settings.tracking_uri)
        return resolve_model(self.model_uri, client)

    def _load(self, resolved: ResolvedModel) -> ServedModel:
        client = None
        if resolved.name is not None:
            with contextlib.suppress(UserError):
                client = connect(self.settings.tracking_uri)
        if self.kind == TEXT:
            return load_served_text_model(
                resolved,
                tracking_uri=self.settings.tracking_uri,
                max_pixels=self.settings.max_image_pixels,
                client=client,
                ui_url=self.settings.ui_url,
            )
        return load_served_model(
            resolved,
            kind=self.kind,
            tracking_uri=self.settings.tracking_uri,
            engine=self.settings.engine,
            max_pixels=self.settings.max_image_pixels,
            batch_size=self.settings.batch_size,
            client=client,
            ui_url=self.settings.ui_url,
            index_cache=self.index_cache,
        )

    def _find_index(self, current: ServedModel, resolved: ResolvedModel) -> ServedModel | None:
        """``current`` with its search index, if one was built since it loaded."""
        client = connect(self.settings.tracking_uri)
        index, problem = load_search_index(
            resolved, client, self.index_cache, current.embedding_dim
        )
        if index is None:
            current.index_problem = problem
            return None
        text_search = load_text_search(resolved, client, self.index_cache)
        return dataclasses.replace(
            current, index=index, index_problem=None, text_search=text_search
        )

    async def check(self, force: bool = False) -> CheckResult:
        """Resolve the URI; load and swap in the version it names if that is new.

        With ``force`` a version that failed before is tried again.
        """
        async with self._lock:
            self.last_check = datetime.now(UTC)
            try:
                resolved = await asyncio.to_thread(self._resolve)
            except Exception as exc:
                detail = _one_line(exc)
                if self.last_check_error != detail:
                    log.warning("cannot resolve %s: %s", self.model_uri, detail)
                self.last_check_error = detail
                if self.current is None:
                    self.reason = f"no model yet: {detail}"
                return CheckResult("unreachable", detail)
            self.last_check_error = None
            key = resolved.load_uri
            current = self.current
            if current is not None and current.key == key:
                if current.index is None and self.index_cache is not None:
                    with_index = await asyncio.to_thread(self._find_index, current, resolved)
                    if with_index is not None:
                        self.current = with_index
                        log.info("search index of %s loaded", current.details.label)
                        return CheckResult("loaded", "search index loaded", resolved.version)
                return CheckResult("unchanged", "already serving it", resolved.version)
            if key == self._failed_key and not force:
                return CheckResult("skipped", self.last_error or "", resolved.version)
            log.info("loading %s (%s)", key, self.model_uri)
            try:
                model = await asyncio.to_thread(self._load, resolved)
            except LoadError as exc:
                self._failed_key = key
                self.last_error = str(exc)
                self.metrics.reload_failures.inc()
                if current is None:
                    self.reason = f"no model yet: {exc}"
                    log.error("%s", exc)
                else:
                    log.error("%s; still serving %s", exc, current.details.label)
                return CheckResult("failed", str(exc), resolved.version)
            self.current = model  # the swap: one reference, requests in flight keep theirs
            self._failed_key = None
            self.last_error = None
            self.reason = ""
            self.metrics.reloads.inc()
            self.metrics.served(model.details.name, model.details.label, model.details.engine)
            previous = f" (was {current.details.label})" if current is not None else ""
            log.info("now serving %s%s", model.details.label, previous)
            return CheckResult("loaded", f"now serving {model.details.label}", resolved.version)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text if isinstance(exc, UserError) else f"{type(exc).__name__}: {text}"
