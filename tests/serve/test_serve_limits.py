"""The service under hostile clients and faults: bounded costs, timeouts, a supervised batcher.

Through the HTTP API of a real service: ``python -m serve`` on a free loopback port (for
what a client alone can do: image bombs, stalled bodies, too many requests, the soak), or
the app under uvicorn in a thread of this process when a fault has to be injected into
the engine (a hung or crashing forward pass), with real registered versions from
``tests/helpers/served_versions.py``.
"""

from __future__ import annotations

import io
import random
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from cli.processes import LOOPBACK, free_port
from serve import inference, loader
from serve.app import MODEL_HEADER, create_app
from serve.settings import Settings
from tests.helpers.served_versions import (
    GOOD,
    NAME,
    PHOTOS,
    SECOND,
    running_service,
    settings_for,
    upload,
    wait_until,
)

MIB = 1024 * 1024


def sixteen_bit_png(width: int, height: int) -> bytes:
    """A 16-bit greyscale PNG (mode I;16): a few KB of upload for millions of pixels."""
    ramp = np.linspace(0, 65535, width, dtype=np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(np.broadcast_to(ramp, (height, width)).copy()).save(buffer, format="PNG")
    return buffer.getvalue()


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (Linux's VmHWM), else its current RSS."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return psutil.Process(pid).memory_info().rss


def wait_ready(url: str, version: int | None = None, timeout: float = 120.0) -> dict:
    def ready():
        reply = httpx.get(url + "/ready", timeout=30)
        if reply.status_code != 200:
            return None
        if version is not None and reply.json()["model"]["version"] != version:
            return None
        return reply.json()

    return wait_until(ready, timeout, f"the service serving version {version or 'any'}")


# ----------------------------------------------------------------------------- in-process


@contextmanager
def served_in_thread(settings: Settings) -> Iterator[tuple[str, object]]:
    """The app under uvicorn in a thread on a free loopback port: (base URL, app)."""
    import uvicorn

    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host=LOOPBACK, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://{LOOPBACK}:{port}"
    try:
        wait_until(lambda: server.started, 120, "uvicorn starting")
        yield url, app
    finally:
        holder = getattr(app.state, "holder", None)
        engine = getattr(getattr(holder, "current", None), "engine", None)
        if isinstance(engine, FaultyEngine):  # never leave an inference thread waiting
            engine.release.set()
        server.should_exit = True
        thread.join(timeout=60)


class FaultyEngine:
    """Wraps a served version's engine: counts images, and hangs or drops a row on demand."""

    def __init__(self, engine) -> None:
        self.engine = engine
        self.name = engine.name
        self.images = 0
        self.hang = threading.Event()  # set: every forward pass waits for ``release``
        self.release = threading.Event()
        self.short = threading.Event()  # set: one row fewer than images comes back
        self.entered = threading.Event()  # a forward pass has started while hanging

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.images += len(pixels)
        if self.hang.is_set():
            self.entered.set()
            self.release.wait(timeout=300)
        probabilities, embedding = self.engine.forward(pixels)
        if self.short.is_set():
            return probabilities[:-1], embedding[:-1]
        return probabilities, embedding


def faulty(app) -> FaultyEngine:
    """Put a :class:`FaultyEngine` around the engine of the version ``app`` serves."""
    model = app.state.holder.current
    model.engine = FaultyEngine(model.engine)
    return model.engine


def metric(url: str, line_start: str) -> float:
    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ----------------------------------------------------------------------------- decoding


def test_sixteen_bit_png_bombs_are_refused_and_cost_bounded_memory(production_store, tmp_path):
    """A few KB of 16-bit PNG declaring 6300 x 6300 pixels is a 422 from its header (it
    used to decode to float64 at full size: about 900 MB); a 16-bit image under the limit
    is shrunk before it becomes 8-bit; a batch of bombs leaves a normal request prompt."""
    bomb = sixteen_bit_png(6300, 6300)
    allowed = sixteen_bit_png(4000, 4000)  # 32 MB to decode: under the 64 MiB default
    assert len(bomb) < 200_000
    env = {"MLFLOW_TRACKING_URI": production_store, "SERVE_RELOAD_INTERVAL": "1"}
    with running_service(tmp_path / "service", env) as service:
        wait_ready(service.url)
        with httpx.Client(base_url=service.url, timeout=120) as http:
            assert http.post("/predict", files=upload(PHOTOS[0])).status_code == 200
            before = peak_rss(service.process.pid)
            reply = http.post("/predict", files=upload(bomb, "bomb.png"))
            assert reply.status_code == 422, reply.text
            assert "SERVE_MAX_DECODE_BYTES" in reply.json()["detail"]
            assert "6300 x 6300" in reply.json()["detail"]
            assert http.post("/predict", files=upload(allowed, "big.png")).status_code == 200

            answers: dict[str, httpx.Response] = {}

            def batch() -> None:
                files = [("images", (f"{i}.png", bomb, "image/png")) for i in range(4)]
                files += [("images", (f"ok{i}.png", allowed, "image/png")) for i in range(4)]
                with httpx.Client(base_url=service.url, timeout=120) as other:
                    answers["batch"] = other.post("/predict/batch", files=files)

            sender = threading.Thread(target=batch)
            sender.start()
            beside: list[tuple[int, float]] = []  # normal requests sent while the batch runs
            while sender.is_alive() or not beside:
                started = time.monotonic()
                status = http.post("/predict", files=upload(PHOTOS[1])).status_code
                beside.append((status, time.monotonic() - started))
            sender.join(timeout=120)
        grown = peak_rss(service.process.pid) - before
    assert {status for status, _ in beside} == {200}
    slowest = max(seconds for _, seconds in beside)
    assert slowest < 10, f"a normal request waited {slowest:.1f} s beside the batch"
    entries = answers["batch"].json()
    assert [e["error"]["status"] if e["error"] else 200 for e in entries] == [422] * 4 + [200] * 4
    # One 4000 x 4000 16-bit image at a time: its 32 MB decode and small copies, not a
    # full-size float64 image (128 MB) and its temporaries.
    assert grown < 250 * MIB, f"the service's peak memory grew by {grown / MIB:.0f} MiB"


# ----------------------------------------------------------------------------- bodies


def stalled_upload(url: str, declared: int = 1_000_000, sent: int = 4096) -> socket.socket:
    """A connection that sends the headers of a /predict and part of its body, then stalls."""
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=120)
    head = (
        "POST /predict HTTP/1.1\r\n"
        f"Host: {host}\r\n"
        "Content-Type: multipart/form-data; boundary=x\r\n"
        f"Content-Length: {declared}\r\n\r\n"
    )
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    sock.sendall(head.encode() + part + b"\x00" * sent)
    return sock


def sent_and_left(url: str, photo: bytes) -> None:
    """Send a whole /predict and leave without reading the answer."""
    host, port = url.removeprefix("http://").split(":")
    part = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    body = part + photo + b"\r\n--x--\r\n"
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}\r\n"
        f"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection((host, int(port)), timeout=120) as sock:
        sock.sendall(head.encode() + body)


def answer_or_close(sock: socket.socket, timeout: float) -> bytes:
    """What the server sends back before it closes (b'' if it just closes); raises
    ``TimeoutError`` if it does neither within ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_stalled_bodies_are_cut_off_and_concurrent_requests_are_bounded(production_store, tmp_path):
    env = {
        "MLFLOW_TRACKING_URI": production_store,
        "SERVE_RELOAD_INTERVAL": "1",
        "SERVE_BODY_TIMEOUT": "10",
        "SERVE_MAX_CONCURRENT_REQUESTS": "4",
    }
    with running_service(tmp_path / "service", env) as service:
        wait_ready(service.url)
        stalled = [stalled_upload(service.url) for _ in range(4)]
        opened = time.monotonic()
        try:

            def predict() -> httpx.Response:
                return httpx.post(service.url + "/predict", files=upload(PHOTOS[0]), timeout=60)

            busy = wait_until(
                lambda: (r := predict()).status_code == 503 and r,
                timeout=8,
                what="a 503 with four stalled uploads in progress",
            )
            assert int(busy.headers["Retry-After"]) >= 1
            assert "SERVE_MAX_CONCURRENT_REQUESTS" in busy.json()["detail"]
            ready = httpx.get(service.url + "/ready", timeout=60)
            assert ready.status_code == 200  # the probes still answer
            answers = [answer_or_close(sock, timeout=90) for sock in stalled]
        finally:
            for sock in stalled:
                sock.close()
        cut_after = time.monotonic() - opened
        for answer in answers:
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert b"SERVE_BODY_TIMEOUT" in answer
        assert cut_after < 90
        reply = httpx.post(service.url + "/predict", files=upload(PHOTOS[0]), timeout=60)
        assert reply.status_code == 200


# ----------------------------------------------------------------------------- inference


def test_a_hung_engine_turns_into_504s_and_ready_says_so(production_store):
    settings = settings_for(production_store, inference_timeout=2.0)
    with served_in_thread(settings) as (url, app):
        wait_ready(url)
        engine = faulty(app)
        engine.hang.set()
        with httpx.Client(base_url=url, timeout=60) as http:
            timed_out = http.post("/predict", files=upload(PHOTOS[0]))
            assert timed_out.status_code == 504, timed_out.text
            assert "SERVE_INFERENCE_TIMEOUT" in timed_out.json()["detail"]
            assert timed_out.headers[MODEL_HEADER] == str(GOOD)
            ready = wait_until(
                lambda: (r := http.get("/ready")).status_code == 503 and r,
                what="/ready turning 503 on the stuck engine",
            )
            assert "stuck" in ready.json()["detail"]
            refused = http.post("/predict", files=upload(PHOTOS[1]))
            assert refused.status_code == 503 and "stuck" in refused.json()["detail"]
            assert int(refused.headers["Retry-After"]) >= 1
            assert http.get("/health").status_code == 200
            engine.hang.clear()
            engine.release.set()
            wait_ready(url)
            assert http.post("/predict", files=upload(PHOTOS[2])).status_code == 200


def test_work_for_clients_that_left_is_dropped_and_the_queue_is_bounded(production_store):
    settings = settings_for(production_store, inference_timeout=120.0, max_queued_images=3)
    with served_in_thread(settings) as (url, app):
        wait_ready(url)
        engine = faulty(app)
        engine.hang.set()

        def give_up_after(seconds: float, photo: bytes) -> None:
            with suppress(httpx.TimeoutException):
                httpx.post(url + "/predict", files=upload(photo), timeout=seconds)

        first = threading.Thread(target=give_up_after, args=(1.0, PHOTOS[0]))
        first.start()
        assert engine.entered.wait(timeout=60), "the first request never reached the engine"
        second = threading.Thread(target=give_up_after, args=(1.0, PHOTOS[1]))
        second.start()
        first.join(timeout=60)
        second.join(timeout=60)
        gone = 'marketplace_requests_total{method="POST",route="/predict",status="499"}'
        wait_until(lambda: metric(url, gone) >= 2, what="both requests counted as gone")
        # While the engine hangs, a batch that would queue past the limit is refused.
        files = [("images", (f"{i}.jpg", PHOTOS[0], "image/jpeg")) for i in range(4)]
        busy = httpx.post(url + "/predict/batch", files=files, timeout=60)
        assert busy.status_code == 503 and "SERVE_MAX_QUEUED_IMAGES" in busy.json()["detail"]
        engine.hang.clear()
        engine.release.set()
        reply = httpx.post(url + "/predict", files=upload(PHOTOS[2]), timeout=60)
        assert reply.status_code == 200
        # The first image was running when its client left; the second never ran.
        assert engine.images == 2
        assert metric(url, "marketplace_dropped_images_total") == 1.0


def test_a_crashing_batcher_is_restarted_counted_and_reported(production_store, monkeypatch):
    monkeypatch.setattr(inference, "RESTART_DELAY_S", 5.0)
    with served_in_thread(settings_for(production_store)) as (url, app):
        wait_ready(url)
        engine = faulty(app)
        engine.short.set()  # fewer rows than images: the batcher cannot hand out answers
        with httpx.Client(base_url=url, timeout=60) as http:
            crashed = http.post("/predict", files=upload(PHOTOS[0]))
            assert crashed.status_code == 503, crashed.text
            assert "batcher crashed" in crashed.json()["detail"]
            assert int(crashed.headers["Retry-After"]) >= 1
            down = http.get("/ready")
            assert down.status_code == 503 and "batcher crashed" in down.json()["detail"]
            assert metric(url, "marketplace_batcher_restarts_total") == 1.0
            engine.short.clear()
            wait_ready(url)
            assert http.post("/predict", files=upload(PHOTOS[1])).status_code == 200


def test_a_version_that_drops_rows_of_a_full_batch_is_not_served(production_store, monkeypatch):
    """The load check runs the full-batch warm-up and checks its shapes, not only the example."""
    real = loader.build_engine

    class DropsRowsOfBigBatches:
        def __init__(self, engine) -> None:
            self.engine, self.name, self.reason = engine, engine.name, engine.reason

        def forward(self, pixels):
            probabilities, embedding = self.engine.forward(pixels)
            if len(pixels) > 2:
                return probabilities[:2], embedding[:2]
            return probabilities, embedding

    monkeypatch.setattr(
        loader, "build_engine", lambda logged, *rest: DropsRowsOfBigBatches(real(logged, *rest))
    )
    with TestClient(create_app(settings_for(production_store, batch_size=8))) as client:
        reply = wait_until(
            lambda: (
                (r := client.get("/ready")).status_code == 503
                and "expected (8, 3)" in r.json()["detail"]
                and r
            ),
            what="/ready naming the full batch's wrong shape",
        )
    assert f"version {GOOD}" in reply.json()["detail"]


# ----------------------------------------------------------------------------- soak


class Soak:
    """Mixed clients (good, bad, slow, cancelled, batches) against one service, counted."""

    KINDS = ("good", "good", "good", "junk", "cut", "batch", "slow", "cancelled", "left", "bomb")
    EXPECTED = {
        "good": {200},
        "junk": {415},
        "cut": {422},
        "batch": {200},
        "slow": {200},
        "cancelled": {None},
        "left": {None},
        "bomb": {422},
    }

    def __init__(self, url: str, requests: int, clients: int) -> None:
        self.url = url
        self.left = requests
        self.lock = threading.Lock()
        self.outcomes: Counter[tuple[str, int | None]] = Counter()
        self.unexpected: list[str] = []
        self.versions: set[str] = set()
        self.bomb = sixteen_bit_png(6300, 6300)
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _take(self) -> bool:
        with self.lock:
            self.left -= 1
            return self.left >= 0

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=120) as http:
            while self._take():
                kind = rng.choice(self.KINDS)
                try:
                    status, version = self._send(http, kind, rng)
                except Exception as exc:
                    status, version = f"error {exc!r}", None
                with self.lock:
                    self.outcomes[(kind, status)] += 1
                    if version:
                        self.versions.add(version)
                    if status not in self.EXPECTED[kind]:
                        self.unexpected.append(f"{kind}: {status}")

    def _send(self, http: httpx.Client, kind: str, rng: random.Random):
        photo = PHOTOS[rng.randrange(len(PHOTOS))]
        if kind == "cancelled":
            sock = stalled_upload(self.url, declared=len(photo) + 200, sent=len(photo) // 2)
            sock.close()  # the client leaves mid-upload
            return None, None
        if kind == "left":
            sent_and_left(self.url, photo)  # the client leaves while its image is classified
            return None, None
        if kind == "slow":
            reply = http.post("/predict", content=_slowly(photo), headers=_multipart_type())
        elif kind == "batch":
            files = [("images", (f"{i}.jpg", photo, "image/jpeg")) for i in range(3)]
            reply = http.post("/predict/batch", files=files)
        else:
            data = {"good": photo, "junk": b"not a photo", "cut": photo[:200], "bomb": self.bomb}
            reply = http.post("/predict", files=upload(data[kind]))
        return reply.status_code, reply.headers.get(MODEL_HEADER)

    def run(self) -> None:
        for thread in self.threads:
            thread.start()
        for thread in self.threads:
            thread.join(timeout=900)


def _multipart_type() -> dict[str, str]:
    return {"Content-Type": "multipart/form-data; boundary=x"}


def _slowly(photo: bytes) -> Iterator[bytes]:
    """A multipart body in small pieces with pauses (well within the body timeout)."""
    yield b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
    for start in range(0, len(photo), 512):
        time.sleep(0.02)
        yield photo[start : start + 512]
    yield b"\r\n--x--\r\n"


@pytest.mark.slow
def test_soak_mixed_clients_across_a_promotion(production_store, tmp_path):
    """A few thousand mixed requests with a promotion halfway: no unexpected status, the
    promotion served, and the service's memory flat from warm-up to the end."""
    from mlflow import MlflowClient

    from registry.promotion import promote

    env = {"MLFLOW_TRACKING_URI": production_store, "SERVE_RELOAD_INTERVAL": "1"}
    with running_service(tmp_path / "service", env) as service:
        wait_ready(service.url, GOOD)
        process = psutil.Process(service.process.pid)
        warm_up = Soak(service.url, requests=300, clients=6)
        warm_up.run()
        assert not warm_up.unexpected, warm_up.unexpected[:5]
        warm = process.memory_info().rss
        soak = Soak(service.url, requests=2500, clients=6)
        promoter = threading.Thread(
            target=lambda: (
                wait_until(lambda: soak.left < 1500, 900, "the soak's first thousand"),
                promote(
                    NAME,
                    SECOND,
                    client=MlflowClient(production_store, production_store),
                    by="soak",
                    reason="t",
                ),
            )
        )
        promoter.start()
        soak.run()
        promoter.join(timeout=60)
        wait_ready(service.url, SECOND)
        end = process.memory_info().rss
        log = service.log_text()
    assert not soak.unexpected, (soak.unexpected[:5], log)
    assert sum(soak.outcomes.values()) == 2500
    assert {str(GOOD), str(SECOND)} <= soak.versions
    assert end - warm < 150 * MIB, f"memory grew {(end - warm) / MIB:.0f} MiB over the soak"
