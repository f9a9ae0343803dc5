"""From uploads to answers: decoding off the event loop, and batching forward passes.

:class:`Classifier` is what the routes call. For each upload it

1. decodes and normalises the image in a thread pool (JPEGs decoded at reduced scale by
   the shared normalisation), refusing what is not an image (415), is empty, corrupt or
   truncated (422), or declares more pixels, or would take more memory to decode, than
   allowed (422, without decoding it). A request decodes at most ``decodes_per_request``
   images at a time, so a big batch shares the pool with the requests beside it;
2. hands the pixels to the :class:`Batcher`, which gathers images from concurrent
   requests into one forward pass (at most ``batch_size`` images; it waits up to
   ``batch_wait`` for more only while other requests are still being decoded, so a lone
   request never waits) and runs it on a single inference thread.

Everything is bounded: at most ``max_queued`` images are admitted at once (past it,
:class:`Busy`: a 503), a request waits at most ``timeout_s`` for its forward pass
(:class:`InferenceTimeout`: a 504), and the images of a request that timed out or was
cancelled (its client left) are dropped before they run. The batcher is supervised: a
crash fails the batch it was running, is counted, and the batcher restarts after a pause
during which :meth:`Batcher.problem` (and so ``/ready``) says it is down; a forward pass
running past ``timeout_s`` is reported the same way, and new work is refused meanwhile.

A request runs entirely on the version it started with: it takes the holder's current
model once, and a batch only ever mixes images meant for the same model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from marketplace_models.imaging import ImageTooCostly, ImageTooLarge
from serve.loader import ServedModel
from serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0  # the batcher's first pause after a crash, doubling while it crashes
MAX_RESTART_DELAY_S = 30.0


class UploadError(Exception):
    """An upload the service refuses: an HTTP status and a message a person can act on."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def has_image_signature(data: bytes) -> bool:
    """Whether ``data`` starts like a format Pillow knows (its plugins' own magic checks)."""
    Image.init()
    prefix = data[:16]
    for factory_and_accept in Image.OPEN.values():
        accept = factory_and_accept[1]
        try:
            if accept is not None and accept(prefix):
                return True
        except Exception:  # an accept check that chokes on a short prefix says no
            continue
    return False


class Busy(Exception):
    """The service cannot take this work now (queue full, engine stuck, batcher down): 503."""


class BatcherCrashed(Busy):
    """The batcher crashed while this image's batch ran (it restarts): a 503 to retry."""


class InferenceTimeout(Exception):
    """A request's forward pass did not come back within the inference timeout: 504."""


def decode_upload(
    model: ServedModel, data: bytes, max_decode_bytes: int | None = None
) -> np.ndarray:
    """The upload as the model's uint8 input, or :class:`UploadError`."""
    if not data:
        raise UploadError(422, "the upload is empty: send a photo (JPEG, PNG, WebP, ...)")
    try:
        return model.preprocess(data, max_decode_bytes)
    except ImageTooCostly as exc:
        raise UploadError(
            422, f"{exc}: send a smaller photo (SERVE_MAX_DECODE_BYTES sets the limit)"
        ) from None
    except ImageTooLarge as exc:
        raise UploadError(
            422, f"{exc}: send a smaller photo (SERVE_MAX_IMAGE_PIXELS sets the limit)"
        ) from None
    except Image.DecompressionBombError as exc:
        raise UploadError(422, f"the image declares too many pixels ({exc})") from None
    except UnidentifiedImageError:
        if not has_image_signature(data):
            raise UploadError(
                415,
                "the upload is not an image: send a photo as JPEG, PNG, WebP, GIF, BMP or TIFF",
            ) from None
        raise UploadError(
            422, "the image cannot be read (its header is corrupt or cut short): send it again"
        ) from None
    except Exception as exc:  # truncated or corrupt data: Pillow's errors vary by format
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UploadError(
            422, f"the image cannot be read (corrupt or truncated: {reason}): send it again"
        ) from None


@dataclass
class _Item:
    model: ServedModel
    pixels: np.ndarray
    future: asyncio.Future


class Batcher:
    """Gathers images from concurrent requests into batched forward passes (supervised)."""

    def __init__(
        self,
        batch_size: int,
        batch_wait_s: float,
        metrics: ServiceMetrics,
        *,
        max_queued: int = 256,
        timeout_s: float = 30.0,
    ) -> None:
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.metrics = metrics
        self.max_queued = max_queued
        self.timeout_s = timeout_s
        self.decoding = 0  # images still being decoded; the batch waits only for these
        self.admitted = 0  # images of requests in flight: decoding, queued or running
        self.down: str | None = None  # why the batcher is not running (between restarts)
        self._running_since: float | None = None  # when the forward pass in progress began
        self._current: list[_Item] = []  # the batch being run, failed if the batcher crashes
        self._crashes = 0  # crashes in a row (no batch answered in between)
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._supervise(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def problem(self) -> str | None:
        """Why inference cannot answer now (batcher down, engine stuck), or None."""
        if self._task is not None and self._task.done():
            return "the batcher has stopped: restart the service"
        if self.down is not None:
            return self.down
        if self._running_since is not None:
            running = time.monotonic() - self._running_since
            if running > self.timeout_s:
                return (
                    f"the inference engine looks stuck: a forward pass has run for "
                    f"{running:.0f} s, longer than SERVE_INFERENCE_TIMEOUT "
                    f"({self.timeout_s:g} s); {self._queue.qsize()} image(s) wait"
                )
        return None

    @contextlib.contextmanager
    def admit(self, count: int) -> Iterator[None]:
        """Hold room for ``count`` images while a request runs, or raise :class:`Busy`."""
        problem = self.problem()
        if problem is not None:
            raise Busy(problem)
        if self.admitted + count > self.max_queued:
            raise Busy(
                f"the service is busy: {self.admitted} image(s) are waiting for inference "
                f"(SERVE_MAX_QUEUED_IMAGES is {self.max_queued}): try again shortly"
            )
        self.admitted += count
        try:
            yield
        finally:
            self.admitted -= count

    def submit(self, model: ServedModel, pixels: np.ndarray) -> asyncio.Future:
        """Queue one image; the future resolves to ``(probabilities, embedding)`` rows.

        Cancelling the future (its request timed out or was cancelled) drops the image
        before it runs.
        """
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Item(model, pixels, future))
        return future

    async def _gather(self) -> list[_Item]:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while len(batch) < self.batch_size:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if self.decoding == 0 or remaining <= 0:
                break
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self._queue.get())
            except TimeoutError:
                break
        return batch

    async def _supervise(self) -> None:
        """Run the batch loop; after a crash fail its batch, count it, pause, restart."""
        while True:
            try:
                await self._run()
            except Exception as exc:
                self._crashes += 1
                delay = min(RESTART_DELAY_S * 2 ** (self._crashes - 1), MAX_RESTART_DELAY_S)
                log.exception("the batcher crashed; restarting it in %.1f s", delay)
                self.metrics.batcher_restarts.inc()
                crashed = BatcherCrashed(
                    f"the batcher crashed while running this image ({type(exc).__name__}) "
                    f"and restarts in {delay:g} s: try again shortly"
                )
                for item in self._current:
                    if not item.future.done():
                        item.future.set_exception(crashed)
                self._current = []
                self._running_since = None
                self.down = (
                    f"the batcher crashed ({type(exc).__name__}: {str(exc)[:200]}) and "
                    f"restarts in {delay:g} s"
                )
                await asyncio.sleep(delay)
                self.down = None

    async def _run(self) -> None:
        while True:
            batch = await self._gather()
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                await self._run_group(items)

    async def _run_group(self, items: list[_Item]) -> None:
        """One forward pass for the images of one model whose requests still wait."""
        live = [item for item in items if not item.future.done()]
        if len(live) < len(items):
            self.metrics.dropped_images.inc(len(items) - len(live))
        if not live:
            return
        self._current = live
        self._running_since = time.monotonic()
        try:
            probabilities, embeddings = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._forward, live
            )
        except Exception as exc:
            log.exception("forward pass failed for %d image(s)", len(live))
            for item in live:
                if not item.future.done():
                    item.future.set_exception(exc)
            return
        finally:
            self._running_since = None
        for row, item in enumerate(live):
            if not item.future.done():
                item.future.set_result((probabilities[row], embeddings[row]))
        self._current = []
        self._crashes = 0

    def _forward(self, items: list[_Item]) -> tuple[np.ndarray, np.ndarray]:
        started = time.perf_counter()
        pixels = np.stack([item.pixels for item in items])  # (B, S, S, 3)
        result = items[0].model.forward(pixels)
        self.metrics.inference.observe(time.perf_counter() - started)
        self.metrics.batch_size.observe(len(items))
        return result


@dataclass(frozen=True)
class ImageResult:
    """One image's answer: probabilities in category order and its embedding."""

    probabilities: np.ndarray
    embedding: np.ndarray


class Classifier:
    """Decodes uploads in a thread pool and classifies them through the batcher."""

    def __init__(
        self,
        batcher: Batcher,
        decode_workers: int,
        metrics: ServiceMetrics,
        *,
        decodes_per_request: int = 1,
        max_decode_bytes: int | None = None,
    ) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.decodes_per_request = decodes_per_request
        self.max_decode_bytes = max_decode_bytes
        self._pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def classify(
        self, model: ServedModel, uploads: Sequence[bytes]
    ) -> list[ImageResult | UploadError]:
        """One result per upload, in order: an :class:`ImageResult` or the upload's error.

        Raises :class:`Busy` when the batcher cannot take the images now and
        :class:`InferenceTimeout` when one of them waited too long for its forward pass.
        """
        with self.batcher.admit(len(uploads)):
            futures = await self._decode_and_submit(model, uploads)
            try:
                return await self._results(model, futures)
            finally:
                for entry in futures:  # timed out or cancelled: drop what has not run
                    if isinstance(entry, tuple) and not entry[0].done():
                        entry[0].cancel()

    async def _decode_and_submit(
        self, model: ServedModel, uploads: Sequence[bytes]
    ) -> list[tuple[asyncio.Future, float] | UploadError]:
        """Decode the uploads (``decodes_per_request`` at a time) and queue each as it is
        ready; each queued image comes with the deadline of its forward pass."""
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(self.decodes_per_request)

        async def decode(data: bytes) -> np.ndarray:
            async with gate:
                return await loop.run_in_executor(
                    self._pool, decode_upload, model, data, self.max_decode_bytes
                )

        self.batcher.decoding += len(uploads)
        pending = len(uploads)
        tasks = [asyncio.ensure_future(decode(data)) for data in uploads]
        queued: list[tuple[asyncio.Future, float] | UploadError] = []
        try:
            for task in tasks:
                try:
                    pixels = await task
                except UploadError as exc:
                    queued.append(exc)
                else:
                    deadline = loop.time() + self.batcher.timeout_s
                    queued.append((self.batcher.submit(model, pixels), deadline))
                finally:
                    pending -= 1
                    self.batcher.decoding -= 1
        except BaseException:
            for task in tasks:
                task.cancel()
            for entry in queued:
                if isinstance(entry, tuple):
                    entry[0].cancel()
            raise
        finally:
            self.batcher.decoding -= pending
        return queued

    async def _results(
        self, model: ServedModel, queued: list[tuple[asyncio.Future, float] | UploadError]
    ) -> list[ImageResult | UploadError]:
        results: list[ImageResult | UploadError] = []
        for entry in queued:
            if isinstance(entry, UploadError):
                results.append(entry)
                continue
            future, deadline = entry
            try:
                async with asyncio.timeout_at(deadline):
                    probabilities, embedding = await future
            except TimeoutError:
                raise InferenceTimeout(
                    f"no answer from the inference engine within {self.batcher.timeout_s:g} s "
                    "(SERVE_INFERENCE_TIMEOUT): try again shortly"
                ) from None
            results.append(ImageResult(np.asarray(probabilities), np.asarray(embedding)))
            best = int(np.argmax(probabilities))
            self.metrics.predictions.labels(model.categories[best]).inc()
        return results
