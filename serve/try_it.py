"""Start the service, send it one photo, print the answer, stop it: ``make demo``'s last step.

    python -m serve.try_it                      # a test-split photo of the demo export
    python -m serve.try_it --photo sofa.jpg     # any photo
    python -m serve.try_it --photo sofa.jpg --text "grey corner sofa"

It runs ``python -m serve`` on a free loopback port with this environment's settings
(MLFLOW_TRACKING_URI, MODEL_URI, ...), waits until ``/ready`` (the production version is
loaded), posts the photo to ``/predict`` as curl would and prints the answer; with a text
(the demo listing's title by default), posts both to ``/predict/combined`` and prints which
model answered (or why none could); shows the most similar listings, and stops the
service. Exit code 2 with a one-line message when there is no photo or the service never
gets ready (its log's last lines are shown).
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import urllib.error
import urllib.request
import uuid
from collections.abc import Sequence
from pathlib import Path

from cli import ArgumentParser, UserError, cli
from cli.processes import LOOPBACK, ProcessExited, free_port, start_in_group, stop_group, wait_until

READY_TIMEOUT_S = 180.0


def demo_photo(clean: Path, raw: Path) -> tuple[Path, str | None, str | None]:
    """A photo from the test split of the cleaned demo data, with its true category and
    its listing's title (None where the products table has none)."""
    import pandas as pd

    table = clean / "images.parquet"
    if not table.is_file():
        raise UserError(f"no {table}: run `make demo` first, or pass --photo")
    columns = ["image_id", "product_id", "root_category", "split", "file"]
    images = pd.read_parquet(table, columns=columns)
    for row in images[images["split"] == "test"].sort_values("image_id").itertuples():
        path = raw / str(row.file)
        if path.is_file():
            return path, str(row.root_category), listing_title(clean, str(row.product_id))
    raise UserError(f"no test-split photo of {table} is under {raw}: pass --photo")


def listing_title(clean: Path, product_id: str) -> str | None:
    """The cleaned title of listing ``product_id`` (None when it has none)."""
    import pandas as pd

    products = clean / "products.parquet"
    if not products.is_file():
        return None
    table = pd.read_parquet(products, columns=["product_id", "name"])
    names = table.loc[table["product_id"].astype(str) == product_id, "name"].dropna()
    return str(names.iloc[0]) if len(names) and str(names.iloc[0]).strip() else None


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


def wait_ready(url: str, process, timeout: float) -> None:
    """Return once ``/ready`` answers 200; a UserError with the last reason otherwise."""
    reason = ["it did not answer"]

    def ready() -> bool:
        try:
            with urllib.request.urlopen(url + "/ready", timeout=5) as reply:
                return reply.status == 200
        except urllib.error.HTTPError as exc:
            reason[0] = json.loads(exc.read() or b"{}").get("detail", str(exc))
        except (urllib.error.URLError, OSError):
            pass
        return False

    try:
        wait_until(ready, timeout=timeout, process=process, what="the production model")
    except ProcessExited:
        raise UserError(f"the service exited with code {process.returncode}") from None
    except TimeoutError:
        raise UserError(f"the service was not ready within {timeout:.0f} s: {reason[0]}") from None


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


def ask_with_text(url: str, photo: Path, text: str) -> dict | None:
    """POST the photo with its listing's text to ``/predict/combined``; print which model
    answered (or why none could) and return the answer."""
    body, content_type = multipart("image", photo, {"text": text})
    request = urllib.request.Request(
        url + "/predict/combined", data=body, headers={"Content-Type": content_type}
    )
    print(f"\n$ curl -F image=@{photo} -F text={json.dumps(text)} {url}/predict/combined")
    try:
        with urllib.request.urlopen(request, timeout=60) as reply:
            answer = json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        print(f"no photo + text answer: {json.loads(exc.read() or b'{}').get('detail', exc)}")
        return None
    model = answer.get("model") or {}
    print(
        f"  {answer['category']} ({answer['probability']:.2f}), answered by "
        f"{model.get('name')} version {model.get('version')} (input {answer.get('input')})"
    )
    return answer


def try_service(photo: Path, expected: str | None, timeout: float, text: str | None = None) -> dict:
    port = free_port()
    url = f"http://{LOOPBACK}:{port}"
    env = {**os.environ, "SERVE_HOST": LOOPBACK, "SERVE_PORT": str(port)}
    with tempfile.TemporaryDirectory(prefix="try-it-") as tmp:
        log = Path(tmp) / "serve.log"
        process = start_in_group([sys.executable, "-m", "serve"], log=log, env=env)
        try:
            print(f"started the service on {url}; waiting for the production model ...")
            wait_ready(url, process, timeout)
            answer = ask(url, photo)
            if expected is not None:
                print(f"(the photo's listing is in {expected!r})")
            if text is not None:
                ask_with_text(url, photo, text)
            show_similar(url, photo)
            return answer
        except UserError as exc:
            tail = log.read_text(errors="replace").strip().splitlines()[-5:]
            raise UserError(f"{exc}\n  " + "\n  ".join(tail)) from None
        finally:
            stop_group(process.pid, timeout=30, process=process)


def ask(url: str, photo: Path) -> dict:
    """POST the photo to ``/predict`` as curl would; print and return the answer."""
    body, content_type = multipart("image", photo)
    request = urllib.request.Request(
        url + "/predict", data=body, headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=60) as reply:
        answer = json.loads(reply.read())
    print(f"$ curl -F image=@{photo} {url}/predict")
    print(json.dumps(answer, indent=2))
    return answer


def get_args_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="python -m serve.try_it", description=__doc__.split("\n")[0])
    parser.add_argument("--photo", type=Path, help="a photo to send (default: a demo photo)")
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--raw", type=Path, default=Path("data/raw"))
    parser.add_argument(
        "--text", help="the listing's text, sent with the photo (default: the demo listing's)"
    )
    parser.add_argument("--timeout", type=float, default=READY_TIMEOUT_S)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = get_args_parser().parse_args(argv)
    if args.photo is not None:
        if not args.photo.is_file():
            raise UserError(f"no photo at {args.photo}")
        photo, expected, title = args.photo, None, None
    else:
        photo, expected, title = demo_photo(args.clean, args.raw)
    text = args.text if args.text is not None else title
    if text is not None and not text.strip():
        raise UserError("--text is blank: pass the listing's words, or leave it out")
    try_service(photo, expected, args.timeout, text)
    print(
        "\nRun it yourself: `make serve`, then open http://127.0.0.1:8000/ (the search page)"
        " or http://127.0.0.1:8000/docs (the API)"
    )


run = cli(main)

if __name__ == "__main__":
    run()
