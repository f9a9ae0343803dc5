"""Start the service, send it one photo, print the answer, stop it: ``make demo``'s last step.

    python -m serve.try_it                      # a test-split photo of the demo export
    python -m serve.try_it --photo sofa.jpg     # any photo

It runs ``python -m serve`` on a free loopback port with this environment's settings
(MLFLOW_TRACKING_URI, MODEL_URI, ...), waits until ``/ready`` (the production version is
loaded), posts the photo to ``/predict`` as curl would, prints the answer, and stops the
service. Exit code 2 with a one-line message when there is no photo or the service never
gets ready (its log's last lines are shown).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

READY_TIMEOUT_S = 180.0
EXIT_USER_ERROR = 2


class TryError(Exception):
    """Why the try-out could not run, in one line."""


def demo_photo(clean: Path, raw: Path) -> tuple[Path, str | None]:
    """A photo from the test split of the cleaned demo data, with its true category."""
    import pandas as pd

    table = clean / "images.parquet"
    if not table.is_file():
        raise TryError(f"no {table}: run `make demo` first, or pass --photo")
    images = pd.read_parquet(table, columns=["image_id", "root_category", "split", "file"])
    for row in images[images["split"] == "test"].sort_values("image_id").itertuples():
        path = raw / str(row.file)
        if path.is_file():
            return path, str(row.root_category)
    raise TryError(f"no test-split photo of {table} is under {raw}: pass --photo")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(field: str, path: Path, fields: dict[str, str] | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body with one file field (what `curl -F image=@photo` sends)."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    ]
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
        f'filename="{path.name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
    ).encode()
    body = b"".join(parts) + head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    reason = "it did not answer"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise TryError(f"the service exited with code {process.returncode}")
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as reply:
                if reply.status == 200:
                    return
        except urllib.error.HTTPError as exc:
            reason = json.loads(exc.read() or b"{}").get("detail", str(exc))
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise TryError(f"the service was not ready within {timeout:.0f} s: {reason}")


def show_similar(url: str, photo: Path, k: int = 3) -> None:
    """Print the ``k`` listings most like the photo, or why search is not there yet."""
    body, content_type = multipart("image", photo, {"k": str(k)})
    request = urllib.request.Request(
        url + "/search", data=body, headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            results = json.loads(reply.read())["results"]
    except urllib.error.HTTPError as exc:
        print(f"no similar listings: {json.loads(exc.read() or b'{}').get('detail', exc)}")
        return
    print(f"\n$ curl -F image=@{photo} -F k={k} {url}/search   # the {k} most similar listings")
    for result in results:
        price = "no price" if result["price"] is None else f"£{result['price']:,.2f}"
        print(f"  {result['score']:.3f}  {result['name']} ({result['category']}, {price})")


def try_service(photo: Path, expected: str | None, timeout: float) -> dict:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SERVE_HOST": "127.0.0.1", "SERVE_PORT": str(port)}
    with tempfile.TemporaryFile() as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "serve"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            print(f"started the service on {url}; waiting for the production model ...")
            wait_ready(url, process, timeout)
            body, content_type = multipart("image", photo)
            request = urllib.request.Request(
                url + "/predict", data=body, headers={"Content-Type": content_type}
            )
            with urllib.request.urlopen(request, timeout=60) as reply:
                answer = json.loads(reply.read())
            print(f"$ curl -F image=@{photo} {url}/predict")
            print(json.dumps(answer, indent=2))
            if expected is not None:
                print(f"(the photo's listing is in {expected!r})")
            show_similar(url, photo)
            return answer
        except TryError as exc:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-5:]
            raise TryError(f"{exc}\n  " + "\n  ".join(tail)) from None
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m serve.try_it", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--photo", type=Path, help="a photo to send (default: a demo photo)")
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    args = parser.parse_args(argv)
    try:
        if args.photo is not None:
            if not args.photo.is_file():
                raise TryError(f"no photo at {args.photo}")
            photo, expected = args.photo, None
        else:
            photo, expected = demo_photo(args.clean, args.raw)
        try_service(photo, expected, args.timeout)
    except TryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    print(
        "\nRun it yourself: `make serve`, then open http://127.0.0.1:8000/ (the search page)"
        " or http://127.0.0.1:8000/docs (the API)"
    )


if __name__ == "__main__":
    main()
