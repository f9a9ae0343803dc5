"""Search in the service: /search, /listings, thumbnails, the web page, in a real browser.

A small real version (resnet18, random weights, 32 px) over the cleaned demo export's
categories is registered in a throwaway store and indexed by the ``index`` step; a second
version has no index yet. The service is run through Starlette's TestClient (the lifespan
loads model and index in the background, as under uvicorn) and, for the browser test, as
a real ``python -m serve`` driven by headless Chromium through Playwright.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from registry.kinds import LISTING_MODEL_NAME, TEXT_MODEL_NAME
from search.ranking import FEATURES, feature_table
from serve.app import create_app
from tests.helpers.demo import DEMO_CLEAN_SIZE
from tests.helpers.rankers import (
    register_ranker,
    served_catalogue,
    set_ranker_alias,
    train_price_ranker,
)
from tests.helpers.served_versions import (
    NAME,
    PHOTOS,
    add_listing_models,
    copy_store,
    running_service,
    set_alias,
    settings_for,
    upload,
    wait_until,
)

CHROMIUM = Path("/usr/bin/chromium")


def _register(uri: str, clean: Path, seed: int) -> int:
    import mlflow
    import torch

    from marketplace_models.image import log_classifier
    from marketplace_models.network import ClassifierConfig, build_network
    from registry.register import register_classifier

    categories = json.loads((clean / "categories.json").read_text())
    torch.manual_seed(seed)
    net = build_network("resnet18", len(categories)).eval()
    config = ClassifierConfig(arch="resnet18", categories=categories, image_size=32)
    example = next((clean / "images" / str(DEMO_CLEAN_SIZE)).glob("*.jpg")).read_bytes()
    client = mlflow.MlflowClient(uri)
    beside = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"  # not ./mlruns
    experiment = client.get_experiment_by_name("search") or client.get_experiment(
        client.create_experiment("search", artifact_location=str(beside))
    )
    with mlflow.start_run(experiment_id=experiment.experiment_id):
        info = log_classifier(net, config, example_image=example)
    return int(register_classifier(info.model_uri, model_name=NAME).version)


def build_index(uri: str, clean: Path, version: int) -> str:
    """Run the index step for ``version`` (as `mlflow run . -e index` would); its run id."""
    from steps import index as index_step

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        patch.setenv("MLFLOW_EXPERIMENT_NAME", "search")
        for variable in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            patch.delenv(variable, raising=False)
        argv = ["--clean", str(clean), "--clean-size", str(DEMO_CLEAN_SIZE)]
        return index_step.main([*argv, "--model-uri", f"models:/{NAME}/{version}"])


@pytest.fixture(scope="module")
def search_store(demo_clean: Path, tmp_path_factory) -> tuple[str, Path]:
    """A store with version 1 (indexed, in production) and version 2 (no index yet)."""
    import mlflow

    folder = tmp_path_factory.mktemp("search-store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.chdir(folder)  # the experiment's artifacts (./mlruns) beside the store
            first = _register(uri, demo_clean, seed=0)
            _register(uri, demo_clean, seed=1)
    finally:
        mlflow.set_tracking_uri(previous)
    build_index(uri, demo_clean, first)
    set_alias(uri, first)
    return uri, folder


@pytest.fixture
def store(search_store, tmp_path: Path) -> str:
    """A private copy of the registry (artifacts shared) with version 1 in production."""
    _, folder = search_store
    return copy_store(folder, tmp_path / "store")


def wait_searchable(client: TestClient, version: int = 1) -> dict:
    def ready():
        reply = client.get("/model")
        body = reply.json() if reply.status_code == 200 else {}
        return body if body.get("version") == version and body["index"]["available"] else None

    return wait_until(ready, what=f"version {version} with its search index")


@pytest.fixture
def client(store: str) -> Iterator[TestClient]:
    with TestClient(create_app(settings_for(store))) as test_client:
        wait_searchable(test_client)
        yield test_client


@pytest.fixture(scope="module")
def photos(demo_clean: Path, demo_raw: Path) -> pd.DataFrame:
    """Test-split photos of the demo export, with their raw bytes and listing."""
    images = pd.read_parquet(demo_clean / "images.parquet")
    test = images[images["split"] == "test"].sort_values("image_id").head(6).copy()
    test["data"] = [(demo_raw / f).read_bytes() for f in test["file"]]
    return test


# ----------------------------------------------------------------------------- the API


def test_search_answers_category_and_similar_listings(client, photos, demo_clean):
    products = pd.read_parquet(demo_clean / "products.parquet").set_index("product_id")
    photo = photos.iloc[0]
    reply = client.post("/search", files=upload(photo["data"]), data={"k": "5"})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"]["version"] == 1
    assert len(body["top_k"]) == len(json.loads((demo_clean / "categories.json").read_text()))
    results = body["results"]
    assert len(results) == 5
    assert len({r["product_id"] for r in results}) == 5, "a listing's photos count once"
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True)
    # The photo itself is in the catalogue: its own listing is the best match.
    assert results[0]["product_id"] == photo["product_id"]
    assert results[0]["score"] == pytest.approx(1.0, abs=1e-3)
    first = results[0]
    listing = products.loc[first["product_id"]]
    assert first["name"] == listing["name"] and first["category"] == listing["root_category"]
    thumbnail = client.get(first["thumbnail_url"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size[0] > 0


def test_search_filters_by_category_and_leaves_a_listing_out(client, photos):
    photo = photos.iloc[1]
    category = photo["root_category"]
    reply = client.post(
        "/search",
        files=upload(photo["data"]),
        data={"k": "3", "category": category, "exclude_product": photo["product_id"]},
    )
    assert reply.status_code == 200, reply.text
    results = reply.json()["results"]
    assert results and all(r["category"] == category for r in results)
    assert photo["product_id"] not in {r["product_id"] for r in results}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"k": "0"}, "k must be"),
        ({"k": "101"}, "k must be"),
        ({"category": "Spaceships"}, "unknown category"),
    ],
    ids=["k-zero", "k-too-big", "unknown-category"],
)
def test_search_refuses_bad_parameters(client, photos, data, words):
    reply = client.post("/search", files=upload(photos.iloc[0]["data"]), data=data)
    assert reply.status_code == 422 and words in reply.json()["detail"]


def test_search_refuses_bad_photos_as_predict_does(client):
    assert client.post("/search", files=upload(b"plain text")).status_code == 415
    assert client.post("/search", files=upload(b"")).status_code == 422


def test_a_typed_query_finds_ranked_listings(client, photos, demo_clean, store):
    products = pd.read_parquet(demo_clean / "products.parquet").set_index("product_id")
    listing = products.loc[photos.iloc[0]["product_id"]]
    query = f"{listing['name']} {listing['description'] or ''}".strip()
    reply = client.get("/search", params={"q": query, "k": 5})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["query"] == query
    assert body["category"] is None, "no text model served: no category boost"
    results = body["results"]
    assert 1 <= len(results) <= 5 and len({r["product_id"] for r in results}) == len(results)
    assert [r["score"] for r in results] == sorted((r["score"] for r in results), reverse=True)
    assert results[0]["product_id"] == photos.iloc[0]["product_id"], "its own words come first"
    assert client.get(results[0]["thumbnail_url"]).status_code == 200

    category = listing["root_category"]
    only = client.get("/search", params={"q": query, "k": 5, "category": category}).json()
    assert {r["category"] for r in only["results"]} == {category}

    both = client.post("/search", files=upload(photos.iloc[0]["data"]), data={"k": "5", "q": query})
    assert both.status_code == 200, both.text
    assert both.json()["results"][0]["product_id"] == photos.iloc[0]["product_id"]

    # The index step measured the ranking, in the index's own run.
    import mlflow

    run_id = client.get("/model").json()["index"]["run_id"]
    metrics = mlflow.MlflowClient(tracking_uri=store).get_run(run_id).data.metrics
    for way in ("text", "photo", "both"):
        assert 0 <= metrics[f"{way}_ndcg_at_10"] <= 1
        assert 0 <= metrics[f"{way}_precision_at_10"] <= 1


def test_a_served_text_model_boosts_the_query_s_category(store, demo_clean):
    import mlflow

    from marketplace_models.kinds import TEXT
    from marketplace_models.text import log_text_classifier
    from registry.kinds import INPUT_TAG
    from registry.register import register_classifier
    from steps.train_text import load_listings, select_and_fit

    listings = load_listings(demo_clean)
    classifier = select_and_fit(listings, c_values=(3.0,), min_df=1).classifier
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(store)
    try:
        experiment = mlflow.MlflowClient(tracking_uri=store).get_experiment_by_name("search")
        with mlflow.start_run(experiment_id=experiment.experiment_id):
            info = log_text_classifier(classifier, example_texts=["sofa"])
        register_classifier(info.model_uri, model_name=TEXT_MODEL_NAME, tags={INPUT_TAG: TEXT})
    finally:
        mlflow.set_tracking_uri(previous)
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    client.set_registered_model_alias(TEXT_MODEL_NAME, "production", "1")
    query = str(listings.split("test")["text"].iloc[0].split("\n")[0])
    expected = int(classifier.predict_proba([query]).argmax())
    with TestClient(create_app(settings_for(store))) as service:
        wait_searchable(service)

        def boosted():
            body = service.get("/search", params={"q": query, "k": 5}).json()
            return body if body.get("category") else None

        body = wait_until(boosted, what="the text model's category for the query")
    assert body["category"] == listings.categories[expected]
    assert 0 < body["probability"] <= 1


@pytest.mark.parametrize(
    ("params", "words"),
    [({"q": ""}, "text is empty"), ({"q": "sofa", "k": 0}, "k must be"), ({}, "text is empty")],
)
def test_a_bad_query_is_a_422_that_says_why(client, params, words):
    reply = client.get("/search", params=params)
    assert reply.status_code == 422, reply.text
    assert words in reply.json()["detail"]


def test_listings_and_their_similar_listings(client, photos):
    product = photos.iloc[2]["product_id"]
    listing = client.get(f"/listings/{product}")
    assert listing.status_code == 200
    body = listing.json()
    assert body["product_id"] == product and body["thumbnail_urls"]
    assert client.get(body["thumbnail_urls"][0]).status_code == 200
    similar = client.get(f"/listings/{product}/similar", params={"k": 4})
    assert similar.status_code == 200
    results = similar.json()["results"]
    assert len(results) == 4 and product not in {r["product_id"] for r in results}
    assert client.get("/listings/no-such-listing").status_code == 404
    assert client.get("/listings/no-such-listing/similar").status_code == 404
    assert client.get(f"/listings/{product}/similar", params={"k": 0}).status_code == 422
    assert client.get("/thumbnails/no-such-image.jpg").status_code == 404


def test_model_reports_the_index(client):
    index = client.get("/model").json()["index"]
    assert index["available"] and index["kind"] == "flat" and index["run_id"]
    assert index["vectors"] >= index["listings"] > 0


def test_a_version_without_index_still_predicts_and_search_says_how_to_build_it(
    store, demo_clean, photos
):
    set_alias(store, 2)
    with TestClient(create_app(settings_for(store))) as client:
        wait_until(
            lambda: client.get("/model").json().get("version") == 2,
            what="version 2 loaded",
        )
        reply = client.post("/search", files=upload(photos.iloc[0]["data"]))
        assert reply.status_code == 503 and reply.headers["Retry-After"]
        assert "mlflow run . -e index" in reply.json()["detail"]
        assert client.get("/listings/x").status_code == 503
        assert client.post("/predict", files=upload(photos.iloc[0]["data"])).status_code == 200
        # Built later, the index is picked up without a restart or a promotion.
        build_index(store, demo_clean, 2)
        wait_searchable(client, version=2)
        assert client.post("/search", files=upload(photos.iloc[0]["data"])).status_code == 200


def _index_run(uri: str, version: int) -> str:
    import mlflow

    from search.index import index_run_for_version

    return index_run_for_version(mlflow.MlflowClient(uri), NAME, version)


def _tag_index(uri: str, version: int, run_id: str) -> None:
    import mlflow

    from search.index import INDEX_RUN_TAG

    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.set_model_version_tag(NAME, str(version), INDEX_RUN_TAG, run_id)


def _checks_later(client: TestClient, count: int = 3) -> None:
    """Wait until the service has checked the registry ``count`` more times."""
    for _ in range(count):
        before = client.get("/model").json()["last_check"]
        wait_until(lambda b=before: client.get("/model").json()["last_check"] > b)


def test_an_index_of_another_version_is_refused_from_its_tags_without_a_download(store, tmp_path):
    set_alias(store, 2)
    first_index = _index_run(store, 1)
    _tag_index(store, 2, first_index)  # version 2's tag names version 1's index
    cache = tmp_path / "cache"
    with TestClient(create_app(settings_for(store, cache_dir=cache))) as client:
        info = wait_until(
            lambda: (
                (m := client.get("/model").json()).get("version") == 2
                and m["index"]["problem"]
                and m
            ),
            what="version 2 served without its index",
        )
        assert "an index of version 1" in info["index"]["problem"]
        _checks_later(client)
        reply = client.get("/search", params={"q": "sofa"})
        assert reply.status_code == 503 and "an index of version 1" in reply.json()["detail"]
    downloaded = sorted(p.name for p in cache.iterdir()) if cache.exists() else []
    assert not any(name.startswith(first_index) for name in downloaded), downloaded


def test_an_index_rejected_after_its_download_is_not_downloaded_again(store, demo_clean, tmp_path):
    """An index in a format this code does not read (its run does not say so) is rejected
    once, and remembered: the next checks neither download nor load it again."""
    import mlflow

    from search.index import ARTIFACT_PATH, MANIFEST_FILE, download_index

    client = mlflow.MlflowClient(store)
    folder = download_index(_index_run(store, 1), tmp_path / "copy", client)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    (folder / MANIFEST_FILE).write_text(json.dumps({**manifest, "format_version": 99}))
    experiment = client.get_experiment_by_name("search").experiment_id
    run = client.create_run(experiment)  # an index run from older code: no model tags
    client.log_artifacts(run.info.run_id, str(folder), ARTIFACT_PATH)
    client.set_terminated(run.info.run_id)
    _tag_index(store, 2, run.info.run_id)
    set_alias(store, 2)
    cache = tmp_path / "cache"
    with TestClient(create_app(settings_for(store, cache_dir=cache))) as client_:
        info = wait_until(
            lambda: (
                (m := client_.get("/model").json()).get("version") == 2
                and m["index"]["problem"]
                and m
            ),
            what="version 2 served without its index",
        )
        assert "format 99" in info["index"]["problem"]
        shutil.rmtree(cache / run.info.run_id)
        _checks_later(client_)
        assert not (cache / run.info.run_id).exists(), "the rejected index was fetched again"
        assert "format 99" in client_.get("/model").json()["index"]["problem"]


def test_a_text_search_that_failed_to_load_is_retried(store, tmp_path):
    """The text search of the index fails to load (its files are damaged in the cache);
    once they are whole again the service loads it by itself, and until then its 503
    says what failed, not that the index is too old."""
    import mlflow

    from search.index import download_index
    from search.text import TEXT_DIR

    cache = tmp_path / "cache"
    folder = download_index(_index_run(store, 1), cache, mlflow.MlflowClient(store))
    whole = tmp_path / "whole-text"
    shutil.copytree(folder / TEXT_DIR, whole)
    for path in (folder / TEXT_DIR).iterdir():
        path.write_bytes(b"damaged")
    settings = settings_for(store, cache_dir=cache, load_retry_initial=0.2, load_retry_max=1)
    with TestClient(create_app(settings)) as client:
        wait_searchable(client)
        reply = client.get("/search", params={"q": "sofa"})
        assert reply.status_code == 503
        assert "cannot load the text search" in reply.json()["detail"]
        assert "built before" not in reply.json()["detail"]
        shutil.rmtree(folder / TEXT_DIR)
        shutil.copytree(whole, folder / TEXT_DIR)
        wait_until(
            lambda: client.get("/search", params={"q": "sofa"}).status_code == 200,
            what="the text search loaded once its files are whole",
        )


# ----------------------------------------------------------------------------- the ranker


@pytest.fixture(scope="module")
def ranker_catalogue(search_store, tmp_path_factory):
    """The catalogue the service ranks version 1's candidates over, read the same way."""
    uri, _ = search_store
    return served_catalogue(uri, NAME, 1, tmp_path_factory.mktemp("ranker-cache"))


@pytest.fixture(scope="module")
def ranker_queries(demo_clean: Path) -> tuple[list[str], str]:
    """Listing titles to train on, and another one to search for."""
    names = pd.read_parquet(demo_clean / "products.parquet")["name"].astype(str)
    names = list(dict.fromkeys(names))
    return names[:30], names[40]


@pytest.fixture(scope="module")
def cheap_ranker(ranker_catalogue, ranker_queries):
    return train_price_ranker(ranker_catalogue, ranker_queries[0], cheap_first=True)


@pytest.fixture(scope="module")
def dear_ranker(ranker_catalogue, ranker_queries):
    return train_price_ranker(ranker_catalogue, ranker_queries[0], cheap_first=False)


def _expected(catalogue, trained, query: str, k: int) -> list[str]:
    """The ids a service ranking ``query`` with ``trained`` answers, computed here."""
    found = feature_table(catalogue, query, n=100)
    return [pid for pid, _ in found.ranked(trained.scores(found.features), k)]


def _ranking_of(client: TestClient, query: str) -> str | None:
    reply = client.get("/search", params={"q": query, "k": 10})
    return reply.json().get("ranking") if reply.status_code == 200 else None


def test_a_served_ranker_orders_the_query_s_candidates(
    store, ranker_catalogue, ranker_queries, cheap_ranker, photos
):
    version = register_ranker(store, cheap_ranker)
    set_ranker_alias(store, version)
    query = ranker_queries[1]
    with TestClient(create_app(settings_for(store))) as client:
        wait_searchable(client)
        wait_until(lambda: _ranking_of(client, query) == "learned v1", what="ranker v1 served")
        body = client.get("/search", params={"q": query, "k": 10}).json()
        slots = client.get("/model").json()["slots"]
        both = client.post("/search", files=upload(photos.iloc[0]["data"]), data={"q": query})
        alone = client.post("/search", files=upload(photos.iloc[0]["data"]))
        metrics = client.get("/metrics").text
    ids = [r["product_id"] for r in body["results"]]
    assert ids == _expected(ranker_catalogue, cheap_ranker, query, 10)
    blend = [pid for pid, _ in ranker_catalogue.text_search.rank(query, 10)]
    assert ids != blend, "the ranker reorders the blend's listings"
    candidates = feature_table(ranker_catalogue, query, n=100).features
    median_price = float(np.nanmedian(np.expm1(candidates["log_price"])))
    assert body["results"][0]["price"] <= median_price, "trained to prefer cheap listings"
    ranking = slots["ranking"]
    assert ranking["loaded"] and ranking["version"] == version
    assert ranking["uri"] == "models:/marketplace-ranker@production"
    assert both.status_code == 200 and both.json()["ranking"] == "learned v1"
    assert alone.status_code == 200 and alone.json()["ranking"] == "photo"
    assert 'marketplace_model_loaded{kind="ranking"} 1.0' in metrics.splitlines()
    assert any(
        row.startswith('marketplace_searches_total{ranking="learned"}')
        for row in metrics.splitlines()
    )


def test_without_a_ranker_search_uses_the_blend_as_before(client, ranker_catalogue, ranker_queries):
    query = ranker_queries[1]
    body = client.get("/search", params={"q": query, "k": 10}).json()
    assert body["ranking"] == "blend"
    blend = ranker_catalogue.text_search.rank(query, 10)
    assert [r["product_id"] for r in body["results"]] == [pid for pid, _ in blend]
    assert [r["score"] for r in body["results"]] == [round(s, 6) for _, s in blend]
    slot = client.get("/model").json()["slots"]["ranking"]
    assert not slot["loaded"] and "RANKER_URI" in slot["reason"]
    assert "marketplace-ranker" in slot["reason"]


def test_a_ranker_with_other_features_is_refused_and_the_alias_is_followed(
    store, cheap_ranker, dear_ranker, ranker_catalogue, ranker_queries
):
    other = (*FEATURES[:-1], "seller_rating")  # photo_count renamed: not what serve computes
    cheap = register_ranker(store, cheap_ranker)
    wrong = register_ranker(
        store, train_price_ranker(ranker_catalogue, ranker_queries[0], features=other)
    )
    dear = register_ranker(store, dear_ranker)
    assert (cheap, wrong, dear) == (1, 2, 3)
    query = ranker_queries[1]
    set_ranker_alias(store, wrong)
    with TestClient(create_app(settings_for(store))) as client:
        wait_searchable(client)

        def refused():
            slot = client.get("/model").json()["slots"]["ranking"]
            return slot if slot["last_error"] else None

        slot = wait_until(refused, what="the mismatched ranker refused")
        assert not slot["loaded"] and slot["attempts"] >= 1
        assert "seller_rating" in slot["last_error"] and "photo_count" in slot["last_error"]
        assert "feature list" in slot["last_error"]
        assert _ranking_of(client, query) == "blend"

        set_ranker_alias(store, cheap)  # followed without a restart
        wait_until(lambda: _ranking_of(client, query) == "learned v1", what="ranker v1 served")
        set_ranker_alias(store, wrong)  # refused again: version 1 keeps ranking
        wait_until(
            lambda: client.get("/model").json()["slots"]["ranking"]["last_error"],
            what="version 2 refused while version 1 serves",
        )
        assert _ranking_of(client, query) == "learned v1"
        set_ranker_alias(store, dear)
        wait_until(lambda: _ranking_of(client, query) == "learned v3", what="ranker v3 served")
        body = client.get("/search", params={"q": query, "k": 10}).json()
    assert [r["product_id"] for r in body["results"]] == _expected(
        ranker_catalogue, dear_ranker, query, 10
    )


def test_the_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'type="file"' in page.text and 'accept="image/*"' in page.text
    assert client.get("/static/page.js").status_code == 200
    assert client.get("/static/page.css").status_code == 200


# ----------------------------------------------------------------------------- a browser


@pytest.mark.slow
@pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),  # in CI a missing browser fails
    reason="needs Debian's chromium: apt-get install chromium (.ci/run installs it)",
)
def test_the_page_in_a_real_browser(store, photos, demo_clean, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    photo = tmp_path / "photo.jpg"
    photo.write_bytes(photos.iloc[0]["data"])
    junk = tmp_path / "notes.jpg"
    junk.write_bytes(b"this is not a photo")
    env = {"MLFLOW_TRACKING_URI": store, "SERVE_RELOAD_INTERVAL": "0.5"}
    with running_service(tmp_path / "service", env) as service, sync_playwright() as p:
        import httpx

        wait_until(
            lambda: httpx.get(service.url + "/model").json().get("index", {}).get("available"),
            what="the service with its index",
        )
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 390, "height": 844})  # a phone
            page.goto(service.url + "/", timeout=60_000)
            expect(page.locator("#model-state")).to_contain_text("version 1", timeout=60_000)
            page.set_input_files("#photo", str(photo))
            expect(page.locator("#category-answer")).not_to_be_empty(timeout=60_000)
            categories = json.loads((demo_clean / "categories.json").read_text())
            expect(page.locator("#bars li")).to_have_count(len(categories))
            cards = page.locator("#results .card")
            expect(cards.first).to_be_visible(timeout=60_000)
            expect(page.locator("#ranking")).to_contain_text("photo similarity")
            first_image = cards.first.locator("img")
            expect(first_image).to_have_attribute("alt", re.compile(r"^Photo of .+"))
            wait_until(
                lambda: first_image.evaluate("img => img.complete && img.naturalWidth > 0"),
                what="the first thumbnail to load",
            )
            # Clicking a listing shows the listings similar to it.
            cards.first.locator("button").click()
            expect(page.locator("#results-title")).to_contain_text("similar to", timeout=60_000)
            # An invalid file shows the service's message.
            page.set_input_files("#photo", str(junk))
            expect(page.locator("#status")).to_contain_text("not an image", timeout=60_000)
            # A typed query shows ranked listings, its own listing first.
            products = pd.read_parquet(demo_clean / "products.parquet").set_index("product_id")
            name = str(products.loc[photos.iloc[0]["product_id"], "name"])
            page.fill("#q", name)
            page.press("#q", "Enter")
            expect(page.locator("#results-title")).to_contain_text("Listings for", timeout=60_000)
            expect(cards.first.locator(".name")).to_have_text(name, timeout=60_000)
            expect(page.locator("#ranking")).to_contain_text("hand-set blend")  # no ranker
        finally:
            browser.close()


@pytest.fixture(scope="module")
def live_service(search_store, cheap_ranker, tmp_path_factory) -> Iterator[str]:
    """A real ``python -m serve`` with a version and its index, a text, a photo + text
    model and a learned ranker: every route can answer, ranked searches included."""
    import httpx

    _, source = search_store
    folder = tmp_path_factory.mktemp("fuzz")
    uri = copy_store(source, folder / "store")
    import mlflow

    add_listing_models(uri)  # a text and a photo + text model too, so no route answers 503
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    for name in (TEXT_MODEL_NAME, LISTING_MODEL_NAME):
        client.set_registered_model_alias(name, "production", "1")
    set_ranker_alias(uri, register_ranker(uri, cheap_ranker))
    env = {"MLFLOW_TRACKING_URI": uri, "SERVE_ADMIN_TOKEN": "fuzz"}
    with running_service(folder / "service", env) as service:
        wait_until(
            lambda: httpx.get(service.url + "/model").json().get("index", {}).get("available"),
            what="the service with its index",
        )
        wait_until(
            lambda: (
                httpx.post(service.url + "/predict/text", data={"text": "sofa"}).is_success
                and httpx.post(
                    service.url + "/predict/combined",
                    files={"image": ("p.jpg", PHOTOS[0], "image/jpeg")},
                    data={"text": "sofa"},
                ).is_success
            ),
            what="the service with its text and photo + text models",
        )
        wait_until(
            lambda: (
                httpx.get(service.url + "/search", params={"q": "sofa"}).json()["ranking"]
                == "learned v1"
            ),
            what="the service with its learned ranker",
        )
        yield service.url


@pytest.mark.slow
def test_fuzzing_the_openapi_schema_finds_no_server_error(live_service):
    """Schemathesis generates requests for every operation of a service that has its model
    and its index (so no 503 is expected either); none may get a 5xx."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(live_service + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def never_a_server_error(case):
            response = case.call(timeout=60)
            assert response.status_code < 500, (case.method, case.path, response.text[:300])

        never_a_server_error()


@pytest.mark.slow
def test_schemathesis_with_every_check_finds_nothing(live_service, tmp_path):
    """``schemathesis run --checks all`` (server errors, status codes, content types,
    response schemas and headers, valid data accepted, invalid data refused, auth enforced,
    unsupported methods) against the live service reports no failure. Its hooks give the
    valid cases a real photo (``tests/helpers/schemathesis_hooks.py``)."""
    import subprocess
    import sys

    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        live_service + "/openapi.json",
        "--checks",
        "all",
        "--max-examples",
        "10",
        "--seed",
        "1",
        "--workers",
        "1",
        "--request-timeout",
        "60",
        "--suppress-health-check",
        "all",
        "--header",
        "Authorization: Bearer fuzz",
        "--no-color",
    ]
    hooks = Path(__file__).parents[1] / "helpers" / "schemathesis_hooks.py"  # real photos
    env = {**os.environ, "SCHEMATHESIS_HOOKS": str(hooks)}
    run = subprocess.run(
        command, capture_output=True, text=True, timeout=1800, cwd=tmp_path, env=env, check=False
    )
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-20000:]
