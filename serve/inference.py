"""From uploads to answers: decoding off the event loop, and batching forward passes.

:class:`Classifier` is what the routes call. For each upload it

1. decodes and normalises the image in a thread pool (JPEGs decoded at reduced scale by
   the shared normalisation), refusing what is not an image (415), is empty, corrupt or
   truncated (422), or declares more pixels than allowed (422, without decoding it);
2. hands the pixels to the :class:`Batcher`, which gathers images from concurrent
   requests into one forward pass (at most ``batch_size`` images; it waits up to
   ``batch_wait`` for more only while other requests are still being decoded, so a lone
   request never waits) and runs it on a single inference thread.

A request runs entirely on the version it started with: it takes the holder's current
model once, and a batch only ever mixes images meant for the same model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from marketplace_models.imaging import ImageTooLarge
from serve.loader import ServedModel
from serve.metrics import ServiceMetrics

log = logging.getLogger(__name__)


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


def decode_upload(model: ServedModel, data: bytes) -> np.ndarray:
    """The upload as the model's uint8 input, or :class:`UploadError`."""
    if not data:
        raise UploadError(422, "the upload is empty: send a photo (JPEG, PNG, WebP, ...)")
    try:
        return model.preprocess(data)
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
    """Gathers images from concurrent requests into batched forward passes."""

    def __init__(self, batch_size: int, batch_wait_s: float, metrics: ServiceMetrics) -> None:
        self.batch_size = batch_size
        self.batch_wait_s = batch_wait_s
        self.metrics = metrics
        self.decoding = 0  # images still being decoded; the batch waits only for these
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inference")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=False, cancel_futures=True)

    def submit(self, model: ServedModel, pixels: np.ndarray) -> asyncio.Future:
        """Queue one image; the future resolves to ``(probabilities, embedding)`` rows."""
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

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._gather()
            groups: dict[int, list[_Item]] = {}
            for item in batch:
                groups.setdefault(id(item.model), []).append(item)
            for items in groups.values():
                live = [item for item in items if not item.future.done()]
                if not live:
                    continue
                try:
                    probabilities, embeddings = await loop.run_in_executor(
                        self._executor, self._forward, live
                    )
                except Exception as exc:
                    log.exception("forward pass failed for %d image(s)", len(live))
                    for item in live:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                for row, item in enumerate(live):
                    if not item.future.done():
                        item.future.set_result((probabilities[row], embeddings[row]))

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

    def __init__(self, batcher: Batcher, decode_workers: int, metrics: ServiceMetrics) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self._pool = ThreadPoolExecutor(max_workers=decode_workers, thread_name_prefix="decode")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def classify(
        self, model: ServedModel, uploads: Sequence[bytes]
    ) -> list[ImageResult | UploadError]:
        """One result per upload, in order: an :class:`ImageResult` or the upload's error."""
        loop = asyncio.get_running_loop()
        self.batcher.decoding += len(uploads)
        pending = len(uploads)
        try:
            decoded = [
                loop.run_in_executor(self._pool, decode_upload, model, data) for data in uploads
            ]
            futures: list[asyncio.Future | UploadError] = []
            for task in decoded:
                try:
                    pixels = await task
                except UploadError as exc:
                    futures.append(exc)
                else:
                    futures.append(self.batcher.submit(model, pixels))
                finally:
                    pending -= 1
                    self.batcher.decoding -= 1
        finally:
            self.batcher.decoding -= pending
        results: list[ImageResult | UploadError] = []
        for future in futures:
            if isinstance(future, UploadError):
                results.append(future)
                continue
            probabilities, embedding = await future
            results.append(ImageResult(np.asarray(probabilities), np.asarray(embedding)))
            best = int(np.argmax(probabilities))
            self.metrics.predictions.labels(model.categories[best]).inc()
        return results
