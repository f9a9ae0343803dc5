"""The search index (search/index.py): build kinds, files, per-listing answers.

The catalogue here is synthetic: listings of four categories, each category a cluster of
listing centres, each listing one to three photos near its centre, so that the right
answers are known.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from search import index as search_index
from search.index import (
    AUTO_EXACT_MAX_FLOATS,
    SearchIndex,
    SearchIndexError,
    build_index,
    normalize,
    resolve_kind,
    save_index,
)
from search.metrics import precision_at, recall_at

faiss = pytest.importorskip("faiss")

CATEGORIES = ["Appliances", "Computers & Software", "Home & Garden", "Music, Films, Books & Games"]
DIM = 32


def make_catalogue(products: int = 120, seed: int = 0, dim: int = DIM):
    """Vectors, ids and listings: listing i has (i % 3) + 1 photos, category i % 4."""
    rng = np.random.default_rng(seed)
    category_centres = rng.standard_normal((len(CATEGORIES), dim)) * 3
    vectors, ids, listings = [], [], []
    for i in range(products):
        label = i % len(CATEGORIES)
        centre = category_centres[label] + rng.standard_normal(dim)
        product_id = f"p{i:04d}"
        for photo in range((i % 3) + 1):
            vectors.append(centre + 0.1 * rng.standard_normal(dim))
            ids.append({"image_id": f"{product_id}-{photo}", "product_id": product_id})
        listings.append(
            {
                "product_id": product_id,
                "name": f"listing {i}",
                "price": float("nan") if i % 10 == 0 else 10.0 + i,
                "location": f"Town {i % 7}",
                "category": CATEGORIES[label],
                "category_path": f"{CATEGORIES[label]} / sub {i % 2}",
                "url": f"https://example.test/{product_id}",
            }
        )
    return (
        np.asarray(vectors, dtype=np.float32),
        pd.DataFrame(ids),
        pd.DataFrame(listings),
    )


def clustered(n: int, dim: int, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Clustered vectors of low intrinsic dimension, like image embeddings."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    basis = rng.standard_normal((8, dim)).astype(np.float32) / np.sqrt(8)
    latent = rng.standard_normal((n, 8)).astype(np.float32)
    labels = rng.integers(0, clusters, n)
    noise = 0.1 * rng.standard_normal((n, dim)).astype(np.float32)
    return centres[labels] + 0.8 * latent @ basis + noise


def loaded(vectors, ids, listings, kind: str = "flat", **options) -> SearchIndex:
    index = build_index(vectors, kind, **options)
    manifest = {"search": search_index.search_settings(index), "categories": CATEGORIES}
    return SearchIndex(index, ids, listings, manifest)


# ---------------------------------------------------------------------- building


def test_normalize_gives_unit_rows_and_keeps_zero_rows_zero() -> None:
    vectors = np.array([[3.0, 4.0], [0.0, 0.0], [-1.0, 0.0]], dtype=np.float64)
    out = normalize(vectors)
    assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0], [-1.0, 0.0]], atol=1e-6)
    assert vectors[0, 0] == 3.0, "the input is not changed"
    in_place = np.array([[3.0, 4.0]], dtype=np.float32)
    assert normalize(in_place, copy=False) is in_place
    np.testing.assert_allclose(in_place, [[0.6, 0.8]], atol=1e-6)


def test_auto_is_exact_up_to_the_threshold_then_hnsw() -> None:
    assert resolve_kind("auto", AUTO_EXACT_MAX_FLOATS // 512, 512) == "flat"
    assert resolve_kind("auto", AUTO_EXACT_MAX_FLOATS // 512 + 1, 512) == "hnsw"
    assert resolve_kind("auto", 10_000, 2048) == "hnsw"
    assert resolve_kind("ivfpq", 10, 8) == "ivfpq"
    with pytest.raises(ValueError, match="flat, hnsw, ivfpq"):
        resolve_kind("annoy", 10, 8)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq", "auto"])
def test_every_kind_finds_a_vector_itself_by_cosine(kind: str) -> None:
    vectors = clustered(2000, DIM, seed=1)
    index = build_index(vectors * 7.0, kind)  # scale must not matter: cosine
    expected = {"flat": faiss.IndexFlatIP, "hnsw": faiss.IndexHNSW, "ivfpq": faiss.IndexIVFPQ}
    assert isinstance(faiss.downcast_index(index), expected.get(kind, faiss.IndexFlatIP))
    assert index.ntotal == 2000 and index.d == DIM
    scores, rows = index.search(normalize(vectors[:50]), 1)
    hit = (rows[:, 0] == np.arange(50)).mean()
    assert hit >= (0.6 if kind == "ivfpq" else 0.98)
    if kind != "ivfpq":
        np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-4)


def test_hnsw_recall_against_exact_on_clustered_vectors() -> None:
    everything = clustered(6200, 64, seed=2)
    vectors, queries = everything[:6000], normalize(everything[6000:])
    _, exact = build_index(vectors, "flat").search(queries, 10)
    _, approximate = build_index(vectors, "hnsw").search(queries, 10)
    assert recall_at(approximate, exact, 10) >= 0.95
    shuffled = np.random.default_rng(0).permutation(len(vectors))[: exact.size].reshape(exact.shape)
    assert recall_at(shuffled, exact, 10) < 0.1, "the measure can fail"


def test_ivfpq_compresses_vectors() -> None:
    vectors = clustered(4000, 64, seed=4)
    flat, ivfpq = build_index(vectors, "flat"), build_index(vectors, "ivfpq")
    assert search_index.index_bytes(ivfpq) < search_index.index_bytes(flat) / 3
    assert search_index.search_settings(ivfpq)["nprobe"] >= 1


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_memory_bytes_is_about_the_serialised_size(kind: str) -> None:
    index = build_index(clustered(3000, 64, seed=5), kind)
    serialised = search_index.index_bytes(index)
    assert search_index.memory_bytes(index) == pytest.approx(serialised, rel=0.05)


def test_recall_at_counts_the_share_of_exact_rows_found() -> None:
    exact = np.array([[1, 2, 3, 4], [5, 6, -1, -1]])
    assert recall_at(np.array([[1, 2, 9, 9], [6, 5, 1, 1]]), exact, 4) == pytest.approx(0.75)


# ---------------------------------------------------------------------- searching


def test_results_are_per_listing_by_its_best_photo() -> None:
    vectors, ids, listings = make_catalogue()
    index = loaded(vectors, ids, listings)
    target = ids.index[ids["product_id"] == "p0005"][1]  # p0005 has three photos
    [results] = index.search(vectors[target][None, :], k=10)
    products = [r.product_id for r in results]
    assert len(products) == len(set(products)) == 10, "each listing once"
    top = results[0]
    assert (top.product_id, top.image_id) == ("p0005", "p0005-1")
    assert top.score == pytest.approx(1.0, abs=1e-4)
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    assert top.name == "listing 5" and top.price == 15.0 and top.location == "Town 5"
    assert top.category == CATEGORIES[1] and top.url == "https://example.test/p0005"
    same = sum(r.category == CATEGORIES[1] for r in results)
    assert same >= 8, "neighbours share the category"


def test_a_missing_price_is_none_not_nan() -> None:
    vectors, ids, listings = make_catalogue()
    index = loaded(vectors, ids, listings)
    [results] = index.search(vectors[:1], k=1)
    assert results[0].product_id == "p0000" and results[0].price is None
    assert index.listing("p0000")["price"] is None


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_category_filter_still_returns_k_listings_of_that_category(kind: str) -> None:
    vectors, ids, listings = make_catalogue(products=400)
    index = loaded(vectors, ids, listings, kind)
    wanted = CATEGORIES[3]  # queries from category 0: the filter's listings are all far
    queries = vectors[ids["product_id"].isin(listings["product_id"][::4])][:5]
    for results in index.search(queries, k=25, category=wanted):
        assert len(results) == 25
        assert {r.category for r in results} == {wanted}
        assert len({r.product_id for r in results}) == 25


def test_category_filter_returns_every_listing_of_a_small_category() -> None:
    vectors, ids, listings = make_catalogue(products=400)
    listings.loc[listings["product_id"] == "p0003", "category"] = "Rare"
    listings.loc[listings["product_id"] == "p0007", "category"] = "Rare"
    index = loaded(vectors, ids, listings, "hnsw")
    index.manifest["categories"] = [*CATEGORIES, "Rare"]
    [results] = index.search(vectors[:1], k=10, category="Rare")
    assert sorted(r.product_id for r in results) == ["p0003", "p0007"]


def test_unknown_category_is_a_value_error_naming_the_known_ones() -> None:
    vectors, ids, listings = make_catalogue()
    index = loaded(vectors, ids, listings)
    with pytest.raises(ValueError, match="Appliances"):
        index.search(vectors[:1], k=3, category="Boats")


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_exclude_product_leaves_that_listing_out(kind: str) -> None:
    vectors, ids, listings = make_catalogue()
    index = loaded(vectors, ids, listings, kind)
    [results] = index.search(vectors[:1], k=5, exclude_product="p0000")
    assert len(results) == 5 and "p0000" not in {r.product_id for r in results}
    [unfiltered] = index.search(vectors[:1], k=5)
    assert unfiltered[0].product_id == "p0000"


def test_k_larger_than_the_catalogue_returns_every_listing_once() -> None:
    vectors, ids, listings = make_catalogue(products=9)
    index = loaded(vectors, ids, listings, "hnsw")
    [results] = index.search(vectors[:1], k=50)
    assert sorted(r.product_id for r in results) == sorted(listings["product_id"])
    [rest] = index.search(vectors[:1], k=50, exclude_product="p0000")
    assert len(rest) == 8
    with pytest.raises(ValueError, match="k must be"):
        index.search(vectors[:1], k=0)
    with pytest.raises(ValueError, match="dims"):
        index.search(np.ones((1, DIM + 1), np.float32), k=1)


def test_listing_embeddings_and_similar_listings() -> None:
    vectors, ids, listings = make_catalogue()
    index = loaded(vectors, ids, listings, "hnsw")
    listing = index.listing("p0002")
    assert listing["name"] == "listing 2" and listing["image_ids"] == [
        "p0002-0",
        "p0002-1",
        "p0002-2",
    ]
    assert index.listing("nope") is None and index.product_embeddings("nope") is None
    embeddings = index.product_embeddings("p0002")
    np.testing.assert_allclose(embeddings, normalize(vectors[3:6]), atol=1e-5)
    similar = index.similar_to_listing("p0002", k=6)
    assert len(similar) == 6 and "p0002" not in {r.product_id for r in similar}
    assert sum(r.category == CATEGORIES[2] for r in similar) >= 5
    assert index.similar_to_listing("nope") is None


def test_precision_at_is_high_for_clustered_categories_and_can_fail() -> None:
    vectors, ids, listings = make_catalogue(products=200)
    index = loaded(vectors, ids, listings)
    queries, _, query_listings = make_catalogue(products=40, seed=0)
    categories = query_listings.set_index("product_id")["category"]
    query_categories = [categories[p] for p in make_catalogue(products=40)[1]["product_id"]]
    good = precision_at(index, queries, query_categories, [1, 5, 10])
    assert good[1] == 1.0 and good[10] >= 0.9
    wrong = [CATEGORIES[(CATEGORIES.index(c) + 1) % 4] for c in query_categories]
    assert precision_at(index, queries, wrong, [10])[10] <= 0.1


# ---------------------------------------------------------------------- files


def _thumbnails(folder: Path, image_ids) -> dict[str, Path]:
    folder.mkdir()
    paths = {}
    for image_id in image_ids:
        path = folder / f"{image_id}.jpg"
        Image.new("RGB", (8, 8), (200, 10, 10)).save(path)
        paths[image_id] = path
    return paths


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_save_and_load_round_trip(tmp_path: Path, kind: str) -> None:
    vectors, ids, listings = make_catalogue()
    index = build_index(vectors, kind, ef_search=77, nprobe=3)
    thumbnails = _thumbnails(tmp_path / "thumbs", ids["image_id"])
    folder = save_index(
        tmp_path / "index",
        index,
        ids,
        listings,
        thumbnails,
        categories=CATEGORIES,
        extra={"model_name": "marketplace-classifier", "model_version": 4, "run_id": "abc"},
    )
    assert sorted(p.name for p in folder.iterdir()) == sorted(search_index.FILES)
    manifest = json.loads((folder / search_index.MANIFEST_FILE).read_text())
    assert manifest["kind"] == kind and manifest["vectors"] == len(ids)
    with zipfile.ZipFile(folder / search_index.THUMBNAILS_FILE) as archive:
        assert len(archive.namelist()) == len(ids)

    back = SearchIndex.load(folder)
    assert (back.kind, len(back), back.dim, back.num_products) == (kind, len(ids), DIM, 120)
    assert back.categories == CATEGORIES
    assert (back.model_name, back.model_version) == ("marketplace-classifier", 4)
    info = back.info()
    assert info["bytes_per_vector"] == pytest.approx(info["index_bytes"] / len(ids))
    if kind == "hnsw":
        assert faiss.downcast_index(back.index).hnsw.efSearch == 77
    if kind == "ivfpq":
        assert faiss.downcast_index(back.index).nprobe == 3
    original = loaded(vectors, ids, listings, kind, ef_search=77, nprobe=3)
    assert back.search(vectors[:5], k=7) == original.search(vectors[:5], k=7)
    path = back.thumbnail_path("p0001-1")
    assert path is not None and Image.open(path).size == (8, 8)
    assert back.thumbnail_path("../../etc/passwd") is None
    assert back.thumbnail_path("unknown") is None
    assert SearchIndex.load(folder).thumbnail_path("p0001-1") == path, "unpacked once"


def test_load_of_an_incomplete_folder_names_what_is_missing(tmp_path: Path) -> None:
    vectors, ids, listings = make_catalogue(products=8)
    folder = save_index(tmp_path / "index", build_index(vectors, "flat"), ids, listings)
    (folder / search_index.IDS_FILE).unlink()
    with pytest.raises(SearchIndexError, match="missing ids.parquet"):
        SearchIndex.load(folder)


def test_save_refuses_ids_that_do_not_match_the_index(tmp_path: Path) -> None:
    vectors, ids, listings = make_catalogue(products=8)
    with pytest.raises(ValueError, match="ids for an index"):
        save_index(tmp_path / "a", build_index(vectors, "flat"), ids[:-1], listings)
    with pytest.raises(ValueError, match="no listing"):
        save_index(tmp_path / "b", build_index(vectors, "flat"), ids, listings[1:])
