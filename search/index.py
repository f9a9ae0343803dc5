"""The search index of a model version: building, saving, loading and querying it.

The ``index`` step (``steps/index.py``) embeds every catalogue photo with a registered
version of the classifier, builds a FAISS index over the L2-normalised embeddings (so
inner product = cosine similarity) and logs one MLflow run whose artifacts, under
:data:`ARTIFACT_PATH`, are everything a service replica needs (nothing else is read from
disk or from the training data)::

    search_index/
      manifest.json     format, kind, dim, vectors, products, search settings, model
      index.faiss       the FAISS index (row i = row i of ids.parquet)
      ids.parquet       row, image_id, product_id
      listings.parquet  product_id, name, price, location, category, category_path, url
      thumbnails.zip    <image_id>.jpg, small JPEGs of every photo (one file to download)

The version gets the tag :data:`INDEX_RUN_TAG` naming the run; the run carries
:data:`MODEL_NAME_TAG` and :data:`MODEL_VERSION_TAG`. The service finds and fetches the index
of the version it serves with :func:`load_index_for_version` (or
:func:`index_run_for_version` + :func:`download_index` + :meth:`SearchIndex.load`), embeds
a query photo with ``unwrap_python_model().embed`` and calls :meth:`SearchIndex.search`.

Several photos of one listing count once, by their best score. Nothing here runs at import
time; ``faiss`` is imported when first needed.
"""

from __future__ import annotations

import json
import math
import shutil
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cli import UserError

if TYPE_CHECKING:
    import faiss
    from mlflow import MlflowClient

# ------------------------------------------------------------------------ the contract

ARTIFACT_PATH = "search_index"
MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.parquet"
LISTINGS_FILE = "listings.parquet"
THUMBNAILS_FILE = "thumbnails.zip"
THUMBNAILS_DIR = "thumbnails"  # where load() unpacks THUMBNAILS_FILE, beside it
FILES = (MANIFEST_FILE, INDEX_FILE, IDS_FILE, LISTINGS_FILE, THUMBNAILS_FILE)
FORMAT_VERSION = 1

INDEX_RUN_TAG = "search_index_run"  # on a model version: the run id of its index
MODEL_NAME_TAG = "model_name"  # on an index run
MODEL_VERSION_TAG = "model_version"  # on an index run
MODEL_URI_TAG = "model_uri"  # on an index run: the URI it embedded with (pinned)

ID_COLUMNS = ("row", "image_id", "product_id")
LISTING_COLUMNS = ("product_id", "name", "price", "location", "category", "category_path", "url")

KINDS = ("auto", "flat", "hnsw", "ivfpq")
# `auto` searches exactly while one query scans at most this many floats (n vectors x d
# dimensions; 2**23 floats = 32 MiB: 16,384 vectors of 512 dims, 4,096 of 2048), HNSW above.
# An exact scan reads every vector for every query, so its cost grows with n x d; below the
# threshold it is fast enough, needs no build and is never wrong. Where the line was drawn,
# and what each kind costs: docs/search.md and bench/results/search.json.
AUTO_EXACT_MAX_FLOATS = 2**23
HNSW_M = 32  # links per node: 2 x 32 x 4 bytes = 256 bytes per vector on top of the vector
# Search depth while building: twice faiss's default, which bench/search.py found worth its
# longer build in recall at HNSW_EF_SEARCH (docs/search.md has the figures).
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128  # search depth per query: the recall target's (docs/search.md)
IVF_MIN_POINTS_PER_LIST = 39  # faiss warns below this many training points per list
PQ_BITS = 8
DEFAULT_K = 12
NORMALIZE_CHUNK = 65_536  # rows at a time: no temporary the size of the catalogue


class SearchIndexError(UserError):
    """A missing or unusable index: the message says what is wrong and what to run."""


@dataclass(frozen=True)
class SearchResult:
    """One listing in an answer: its best-scoring photo stands for it."""

    product_id: str
    name: str
    price: float | None
    location: str | None
    category: str
    score: float
    image_id: str
    url: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ------------------------------------------------------------------------ building


def _faiss():
    import faiss

    return faiss


def use_threads(count: int) -> None:
    """Run FAISS searches in this process on ``count`` OpenMP threads.

    A service answers one query per request and runs requests side by side, so it wants 1:
    FAISS's default (one thread per core) makes the threads of one query wait on each
    other's (measured in bench/search.py, figures in docs/search.md).
    """
    _faiss().omp_set_num_threads(max(1, int(count)))


def normalize(vectors: np.ndarray, copy: bool = True) -> np.ndarray:
    """Rows scaled to unit L2 norm, as C-contiguous float32 ``(N, D)``.

    All-zero rows stay zero (they match nothing rather than everything). ``copy=False``
    scales a float32 C-contiguous array in place (no second copy of a large catalogue).
    """
    array = np.array(vectors, dtype=np.float32, copy=copy, order="C")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"expected an (N, D) array of vectors, got shape {array.shape}")
    for start in range(0, len(array), NORMALIZE_CHUNK):
        block = array[start : start + NORMALIZE_CHUNK]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block))[:, None]
        np.divide(block, norms, out=block, where=norms > 0)
    return array


def resolve_kind(kind: str, vectors: int, dim: int) -> str:
    """The concrete kind for ``kind`` at this size: ``auto`` becomes ``flat`` or ``hnsw``."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}: expected one of {', '.join(KINDS)}")
    if kind != "auto":
        return kind
    return "flat" if vectors * dim <= AUTO_EXACT_MAX_FLOATS else "hnsw"


def default_nlist(vectors: int) -> int:
    """IVF lists: about sqrt(n) x 1 (at least 1), so each list holds about sqrt(n) vectors."""
    return max(1, min(vectors // IVF_MIN_POINTS_PER_LIST, round(math.sqrt(max(vectors, 1)))))


def default_pq_m(dim: int) -> int:
    """PQ sub-quantisers: one byte per 8 dimensions, at most 128 (64 bytes at 512 dims)."""
    for m in (min(128, dim // 8), 64, 32, 16, 8, 4, 2, 1):
        if m >= 1 and dim % m == 0:
            return m
    return 1


def build_index(
    vectors: np.ndarray,
    kind: str = "auto",
    *,
    hnsw_m: int = HNSW_M,
    ef_construction: int = HNSW_EF_CONSTRUCTION,
    ef_search: int = HNSW_EF_SEARCH,
    nlist: int | None = None,
    nprobe: int | None = None,
    pq_m: int | None = None,
    train_size: int = 50_000,
    seed: int = 0,
    copy: bool = True,
) -> faiss.Index:
    """A FAISS inner-product index over ``vectors`` (normalised here), vectors added.

    ``kind``: ``flat`` (exact, ``IndexFlatIP``), ``hnsw`` (``IndexHNSWFlat``, ``hnsw_m``
    links, search depth ``ef_search``), ``ivfpq`` (``IndexIVFPQ``: ``nlist`` lists, of
    which ``nprobe`` are searched, vectors compressed to ``pq_m`` bytes; trained on at most
    ``train_size`` vectors), or ``auto`` (flat up to :data:`AUTO_EXACT_MAX_FLOATS`, else
    hnsw). Row ``i`` of the index is row ``i`` of ``vectors``. ``copy=False`` normalises a
    float32 array in place instead of copying it.
    """
    faiss = _faiss()
    data = normalize(vectors, copy=copy)
    n, dim = data.shape
    concrete = resolve_kind(kind, n, dim)
    if concrete == "flat":
        index = faiss.IndexFlatIP(dim)
    elif concrete == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = ef_construction
        index.hnsw.efSearch = ef_search
    else:
        if n == 0:
            raise ValueError("an ivfpq index needs vectors to train on")
        lists = nlist or default_nlist(n)
        m = pq_m or default_pq_m(dim)
        if dim % m:
            raise ValueError(f"pq_m={m} must divide the dimension {dim}")
        # 8-bit codebooks want 39 x 256 training points; fewer vectors get smaller ones.
        bits = max(1, min(PQ_BITS, int(math.log2(max(n // IVF_MIN_POINTS_PER_LIST, 2)))))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFPQ(quantizer, dim, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.pq.cp.seed = seed
        rng = np.random.default_rng(seed)
        sample = data if n <= train_size else data[np.sort(rng.choice(n, train_size, False))]
        index.train(sample)
        index.nprobe = nprobe or max(1, min(lists, round(lists / 16) or 1, 64))
    index.add(data)
    if concrete == "ivfpq":
        index.make_direct_map()
    return index


def index_kind(index: faiss.Index) -> str:
    """``flat``, ``hnsw`` or ``ivfpq`` for an index made by :func:`build_index`."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivfpq"
    return "flat"


def index_bytes(index: faiss.Index) -> int:
    """The index's size as FAISS serialises it (about its size in memory)."""
    return int(_faiss().serialize_index(index).size)


def memory_bytes(index: faiss.Index) -> int:
    """What the index holds in memory (vectors or codes, links, ids, centroids), in bytes.

    Computed from its arrays, so it costs nothing even for a catalogue of gigabytes.
    """
    faiss = _faiss()
    typed = faiss.downcast_index(index)
    n, dim = int(typed.ntotal), int(typed.d)
    if isinstance(typed, faiss.IndexHNSW):
        graph = typed.hnsw
        links = graph.neighbors.size() * 4 + graph.offsets.size() * 8 + graph.levels.size() * 4
        return n * dim * 4 + int(links)
    if isinstance(typed, faiss.IndexIVFPQ):
        codes = n * (int(typed.code_size) + 8)  # a code and an int64 id per vector
        centroids = int(typed.nlist) * dim * 4 + int(typed.pq.centroids.size()) * 4
        direct_map = int(typed.direct_map.array.size()) * 8  # row -> list position
        return codes + centroids + direct_map + int(typed.precomputed_table.size()) * 4
    return n * int(typed.code_size)


def search_settings(index: faiss.Index) -> dict[str, int]:
    """The query-time settings that the index file may not keep (efSearch, nprobe)."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexHNSW):
        return {"ef_search": int(index.hnsw.efSearch)}
    if isinstance(index, faiss.IndexIVF):
        return {"nprobe": int(index.nprobe), "nlist": int(index.nlist)}
    return {}


# ------------------------------------------------------------------------ files


def save_index(
    folder: Path,
    index: faiss.Index,
    ids: pd.DataFrame,
    listings: pd.DataFrame,
    thumbnails: dict[str, Path] | None = None,
    *,
    categories: Sequence[str] = (),
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write an index folder in the layout above; returns ``folder``.

    ``ids``: one row per index row, columns ``image_id``, ``product_id`` (in index order).
    ``listings``: one row per product, :data:`LISTING_COLUMNS` (missing ones left empty).
    ``thumbnails``: image id -> JPEG file, packed into :data:`THUMBNAILS_FILE`.
    ``categories``: the category names in the model's order (default: those in listings).
    ``extra``: more manifest fields (the model's name and version, say).
    """
    faiss = _faiss()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(ids) != index.ntotal:
        raise ValueError(f"{len(ids)} ids for an index of {index.ntotal} vectors")
    id_table = pd.DataFrame(
        {
            "row": np.arange(len(ids), dtype=np.int64),
            "image_id": ids["image_id"].astype(str).to_numpy(),
            "product_id": ids["product_id"].astype(str).to_numpy(),
        }
    )
    table = listings.copy()
    for column in LISTING_COLUMNS:
        if column not in table.columns:
            table[column] = None
    table = table[list(LISTING_COLUMNS)].drop_duplicates("product_id").reset_index(drop=True)
    table["product_id"] = table["product_id"].astype(str)
    table["price"] = pd.to_numeric(table["price"], errors="coerce").astype("float64")
    missing = set(id_table["product_id"]) - set(table["product_id"])
    if missing:
        raise ValueError(f"{len(missing)} indexed products have no listing, e.g. {min(missing)}")
    faiss.write_index(index, str(folder / INDEX_FILE))
    id_table.to_parquet(folder / IDS_FILE, index=False)
    table.to_parquet(folder / LISTINGS_FILE, index=False)
    with zipfile.ZipFile(folder / THUMBNAILS_FILE, "w", zipfile.ZIP_STORED) as archive:
        for image_id, path in sorted((thumbnails or {}).items()):
            archive.write(path, f"{image_id}.jpg")
    names = list(categories) or sorted(table["category"].dropna().astype(str).unique())
    manifest = {
        "format_version": FORMAT_VERSION,
        "kind": index_kind(index),
        "metric": "inner_product",
        "normalized": True,
        "dim": int(index.d),
        "vectors": int(index.ntotal),
        "products": int(id_table["product_id"].nunique()),
        "index_bytes": (folder / INDEX_FILE).stat().st_size,
        "search": search_settings(index),
        "categories": names,
        **(extra or {}),
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return folder


# ------------------------------------------------------------------------ querying


class SearchIndex:
    """A loaded index: FAISS rows, their photos and products, and the listings' metadata."""

    def __init__(
        self,
        index: faiss.Index,
        ids: pd.DataFrame,
        listings: pd.DataFrame,
        manifest: dict[str, Any],
        thumbnails: Path | None = None,
    ) -> None:
        if len(ids) != index.ntotal:
            raise ValueError(f"{len(ids)} ids for an index of {index.ntotal} vectors")
        self.index = index  # owns the FAISS object: keep it alive
        self._typed = _faiss().downcast_index(index)  # the same object, its own class
        self._kind = index_kind(index)
        self.manifest = manifest
        self.thumbnail_dir = thumbnails
        self._image_ids = ids["image_id"].astype(str).to_numpy()
        self._product_ids = ids["product_id"].astype(str).to_numpy()
        table = listings.copy()
        table["product_id"] = table["product_id"].astype(str)
        self._listings = table.drop_duplicates("product_id").set_index("product_id", drop=False)
        self._records: dict[str, dict[str, Any]] = {
            str(pid): _clean_record(record)
            for pid, record in self._listings.to_dict(orient="index").items()
        }
        unknown = set(self._product_ids) - set(self._listings.index)
        if unknown:
            raise ValueError(
                f"{len(unknown)} indexed products have no listing, e.g. {min(unknown)}"
            )
        categories = self._listings["category"].astype(str)
        self._row_categories = categories.reindex(self._product_ids).to_numpy()
        order = np.argsort(self._product_ids, kind="stable")
        products, starts = np.unique(self._product_ids[order], return_index=True)
        self._rows_of_product: dict[str, np.ndarray] = dict(
            zip(products.tolist(), np.split(order.astype(np.int64), starts[1:]), strict=True)
        )
        self._image_rows = {image_id: row for row, image_id in enumerate(self._image_ids)}
        self._category_rows: dict[str, np.ndarray] = {}
        self._category_products: dict[str, int] = {}
        self._selectors: dict[str, Any] = {}  # category -> faiss.IDSelectorBatch of its rows
        self._apply_settings(manifest.get("search", {}))

    # -- loading

    @classmethod
    def load(cls, folder: Path | str) -> SearchIndex:
        """Read an index folder (the layout above); unpacks the thumbnails once, beside it.

        Raises :class:`SearchIndexError` naming what is missing or unreadable.
        """
        faiss = _faiss()
        folder = Path(folder)
        missing = [name for name in FILES if not (folder / name).is_file()]
        if missing:
            raise SearchIndexError(
                f"{folder} is not a search index folder (missing {', '.join(missing)}): "
                "download one with search.index.download_index"
            )
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text(encoding="utf-8"))
            index = faiss.read_index(str(folder / INDEX_FILE))
            ids = pd.read_parquet(folder / IDS_FILE)
            listings = pd.read_parquet(folder / LISTINGS_FILE)
        except (OSError, ValueError, RuntimeError) as exc:
            raise SearchIndexError(f"cannot read the search index in {folder}: {exc}") from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise SearchIndexError(
                f"the search index in {folder} has format {manifest.get('format_version')}, "
                f"this code reads {FORMAT_VERSION}: rebuild it with the index step"
            )
        ids = ids.sort_values("row").reset_index(drop=True)
        return cls(index, ids, listings, manifest, _unpack_thumbnails(folder))

    def _apply_settings(self, settings: dict[str, Any]) -> None:
        faiss = _faiss()
        index = self._typed
        if isinstance(index, faiss.IndexHNSW) and "ef_search" in settings:
            index.hnsw.efSearch = int(settings["ef_search"])
        if isinstance(index, faiss.IndexIVF):
            if "nprobe" in settings:
                index.nprobe = int(settings["nprobe"])
            if index.direct_map.type == faiss.DirectMap.NoMap:
                index.make_direct_map()

    # -- size and identity

    def __len__(self) -> int:
        return int(self.index.ntotal)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def kind(self) -> str:
        return self._kind

    @property
    def num_products(self) -> int:
        return len(self._rows_of_product)

    @property
    def categories(self) -> list[str]:
        """Category names the filter accepts (the model's categories, in its order)."""
        return list(self.manifest.get("categories") or sorted(set(self._row_categories)))

    @property
    def model_name(self) -> str | None:
        return self.manifest.get("model_name")

    @property
    def model_version(self) -> int | None:
        version = self.manifest.get("model_version")
        return int(version) if version not in (None, "") else None

    def info(self) -> dict[str, Any]:
        """Size and identity, for a /model or /health answer."""
        size = int(self.manifest.get("index_bytes") or index_bytes(self.index))
        return {
            "kind": self.kind,
            "vectors": len(self),
            "products": self.num_products,
            "dim": self.dim,
            "index_bytes": size,
            "bytes_per_vector": size / max(len(self), 1),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "run_id": self.manifest.get("run_id"),
        }

    # -- lookups

    def listing(self, product_id: str) -> dict[str, Any] | None:
        """A listing's metadata with its photos' ``image_ids``; None when not indexed."""
        record = self._records.get(str(product_id))
        rows = self._rows_of_product.get(str(product_id))
        if record is None or rows is None:
            return None
        return {**record, "image_ids": [str(self._image_ids[row]) for row in rows]}

    def listing_table(self) -> pd.DataFrame:
        """The indexed listings' metadata (:data:`LISTING_COLUMNS`), one row per listing,
        with ``photo_count``: how many of its photos the index holds."""
        table = self._listings.reset_index(drop=True)
        counts = {pid: len(rows) for pid, rows in self._rows_of_product.items()}
        return table.assign(photo_count=table["product_id"].map(counts).fillna(0).astype(int))

    def product_embeddings(self, product_id: str) -> np.ndarray | None:
        """The stored embeddings of a listing's photos, ``(P, D)`` float32; None if unknown.

        Exact for flat and hnsw indexes; the compressed approximation for ivfpq.
        """
        rows = self._rows_of_product.get(str(product_id))
        if rows is None:
            return None
        return np.asarray(self.index.reconstruct_batch(rows), dtype=np.float32)

    def thumbnail_path(self, image_id: str) -> Path | None:
        """The JPEG thumbnail of an indexed photo, or None (unknown id, or no thumbnail)."""
        if self.thumbnail_dir is None or str(image_id) not in self._image_rows:
            return None
        path = self.thumbnail_dir / f"{image_id}.jpg"
        return path if path.is_file() else None

    # -- search

    def search(
        self,
        embeddings: np.ndarray,
        k: int = DEFAULT_K,
        category: str | None = None,
        exclude_product: str | None = None,
    ) -> list[list[SearchResult]]:
        """The ``k`` most similar listings for each query embedding ``(N, D)``.

        Results are per product (a listing's photos count once, by their best score),
        best first, with the photo that scored as ``image_id``. ``category`` keeps only
        listings of that category (unknown: ``ValueError``); ``exclude_product`` leaves one
        listing out (the one being looked at). Fewer than ``k`` only when the catalogue
        (or the category) has fewer listings.
        """
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        queries = normalize(embeddings)
        if queries.shape[1] != self.dim:
            raise ValueError(f"query embeddings have {queries.shape[1]} dims, the index {self.dim}")
        candidates = self._candidate_rows(category)
        excluded = None if exclude_product is None else str(exclude_product)
        excluded_rows = self._rows_of_product.get(excluded, np.zeros(0, np.int64))
        if candidates is not None:
            excluded_rows = np.intersect1d(excluded_rows, candidates)
        rows_total = len(self) if candidates is None else len(candidates)
        listings = self._products_among(category)
        wanted = min(k, listings - (1 if len(excluded_rows) else 0))
        if wanted <= 0 or len(queries) == 0:
            return [[] for _ in range(len(queries))]
        # Over-fetch rows: a listing's other photos and the excluded listing take places.
        fetch = min(rows_total, 2 * k + len(excluded_rows) + 8)
        answers: list[list[SearchResult]] = [[] for _ in range(len(queries))]
        pending = np.arange(len(queries))
        while len(pending):
            scores, rows = self._search_rows(queries[pending], fetch, category)
            exhausted = fetch >= rows_total
            still = []
            for slot, query_scores, query_rows in zip(pending, scores, rows, strict=True):
                results = self._dedup(query_scores, query_rows, k, excluded)
                if len(results) >= wanted:
                    answers[slot] = results
                elif not exhausted:
                    still.append(slot)
                elif self.kind == "flat":
                    answers[slot] = results
                else:  # an approximate index found too few of a small set: search it exactly
                    every = np.arange(len(self)) if candidates is None else candidates
                    answers[slot] = self._exact_among(queries[slot], every, k, excluded)
            pending = np.asarray(still, dtype=np.int64)
            fetch = min(rows_total, fetch * 4)
        return answers

    def similar_to_listing(
        self, product_id: str, k: int = DEFAULT_K, category: str | None = None
    ) -> list[SearchResult] | None:
        """Listings similar to an indexed one (all its photos as queries, itself left out).

        Each result's score is its best against any of the listing's photos. None when the
        listing is not indexed.
        """
        embeddings = self.product_embeddings(product_id)
        if embeddings is None:
            return None
        best: dict[str, SearchResult] = {}
        for results in self.search(embeddings, k, category=category, exclude_product=product_id):
            for result in results:
                if result.product_id not in best or result.score > best[result.product_id].score:
                    best[result.product_id] = result
        return sorted(best.values(), key=lambda r: -r.score)[:k]

    def _candidate_rows(self, category: str | None) -> np.ndarray | None:
        if category is None:
            return None
        if category not in self.categories:
            raise ValueError(
                f"unknown category {category!r}: expected one of {', '.join(self.categories)}"
            )
        if category not in self._category_rows:  # computed once per category, then shared
            rows = np.flatnonzero(self._row_categories == category).astype(np.int64)
            self._category_products[category] = len(set(self._product_ids[rows]))
            self._selectors[category] = _faiss().IDSelectorBatch(rows)
            self._category_rows[category] = rows
        return self._category_rows[category]

    def _products_among(self, category: str | None) -> int:
        return self.num_products if category is None else self._category_products[category]

    def _search_rows(
        self, queries: np.ndarray, fetch: int, category: str | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's top ``fetch`` rows (of ``category`` only, when given) for each query."""
        faiss = _faiss()
        index = self._typed
        kind = self.kind
        if kind == "hnsw":
            params = faiss.SearchParametersHNSW()
            params.efSearch = max(int(index.hnsw.efSearch), fetch)
        elif kind == "ivfpq":
            params = faiss.SearchParametersIVF()
            params.nprobe = int(index.nprobe)
            if category is not None and len(self):
                # A narrow filter leaves few matches in the probed lists: probe more of them.
                share = len(self._category_rows[category]) / len(self)
                params.nprobe = min(int(index.nlist), math.ceil(index.nprobe / max(share, 1e-6)))
        else:
            params = faiss.SearchParameters()
        if category is not None:
            params.sel = self._selectors[category]
        return index.search(queries, fetch, params=params)

    def _dedup(
        self, scores: np.ndarray, rows: np.ndarray, k: int, excluded: str | None
    ) -> list[SearchResult]:
        results: list[SearchResult] = []
        seen: set[str] = set()
        for score, row in zip(scores, rows, strict=True):
            if row < 0:
                continue
            product = str(self._product_ids[row])
            if product in seen or product == excluded:
                continue
            seen.add(product)
            results.append(self._result(product, int(row), float(score)))
            if len(results) == k:
                break
        return results

    def _exact_among(
        self, query: np.ndarray, rows: np.ndarray, k: int, excluded: str | None
    ) -> list[SearchResult]:
        """Exact search over ``rows`` (an approximate index missed some of a small set)."""
        vectors = self.index.reconstruct_batch(rows)
        scores = vectors @ query
        order = np.argsort(-scores, kind="stable")
        return self._dedup(scores[order], rows[order], k, excluded)

    def _result(self, product_id: str, row: int, score: float) -> SearchResult:
        record = self._records[product_id]
        return SearchResult(
            product_id=product_id,
            name=record.get("name") or "",
            price=record.get("price"),
            location=record.get("location"),
            category=record.get("category") or "",
            score=score,
            image_id=str(self._image_ids[row]),
            url=record.get("url"),
        )


def _clean_record(record: dict[str, Any]) -> dict[str, Any]:
    """Listing fields as plain JSON values: NaN prices and missing text become None."""
    out: dict[str, Any] = {}
    for column in LISTING_COLUMNS:
        value = record.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            out[column] = None
        elif column == "price":
            out[column] = float(value)
        else:
            out[column] = str(value)
    return out


def _unpack_thumbnails(folder: Path) -> Path:
    """Unpack THUMBNAILS_FILE into THUMBNAILS_DIR once (a marker says it is complete)."""
    target = folder / THUMBNAILS_DIR
    marker = target / ".complete"
    if marker.is_file():
        return target
    partial = folder / f"{THUMBNAILS_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        with zipfile.ZipFile(folder / THUMBNAILS_FILE) as archive:
            for member in archive.infolist():
                name = Path(member.filename).name  # never a path outside the folder
                if name and name == member.filename and name.endswith(".jpg"):
                    (partial / name).write_bytes(archive.read(member))
    except (OSError, zipfile.BadZipFile) as exc:
        shutil.rmtree(partial, ignore_errors=True)
        raise SearchIndexError(f"cannot unpack {folder / THUMBNAILS_FILE}: {exc}") from None
    (partial / ".complete").write_text("ok", encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


# ------------------------------------------------------------------------ evaluation


# ------------------------------------------------------------------------ the registry


def index_run_for_version(client: MlflowClient, name: str, version: int | str) -> str | None:
    """The run id of the search index of version ``version`` of ``name``, or None."""
    from mlflow.exceptions import MlflowException

    try:
        model_version = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise SearchIndexError(f"no version {version} of {name} in the registry: {exc}") from None
    run_id = (model_version.tags or {}).get(INDEX_RUN_TAG)
    return run_id or None


def build_command(name: str, version: int | str) -> str:
    """The command that builds the index of a version (for error messages)."""
    return f"mlflow run . -e index -P model_uri=models:/{name}/{version} --env-manager local"


def download_index(run_id: str, dst: Path | str, client: MlflowClient | None = None) -> Path:
    """Download an index run's artifacts into ``dst/<run_id>/``; returns that folder.

    Reuses a complete earlier download (nothing is fetched twice); writes to a partial
    folder first, so an interrupted download is never taken for a complete one.
    """
    import mlflow

    target = Path(dst) / run_id
    if all((target / name).is_file() for name in FILES):
        return target
    partial = Path(dst) / f"{run_id}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    tracking = client.tracking_uri if client is not None else None
    try:
        mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=ARTIFACT_PATH, dst_path=str(partial), tracking_uri=tracking
        )
        absent = [name for name in FILES if not (partial / ARTIFACT_PATH / name).is_file()]
        if absent:
            raise SearchIndexError(f"run {run_id} has no {', '.join(absent)} in {ARTIFACT_PATH}/")
    except Exception as exc:  # MlflowException, OSError, botocore errors: all one line
        shutil.rmtree(partial, ignore_errors=True)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SearchIndexError(
            f"cannot download the search index of run {run_id}: {first}"
        ) from None
    shutil.rmtree(target, ignore_errors=True)
    (partial / ARTIFACT_PATH).rename(target)
    shutil.rmtree(partial, ignore_errors=True)
    return target


def load_index_for_version(
    client: MlflowClient, name: str, version: int | str, cache_dir: Path | str
) -> SearchIndex:
    """The search index of a version: its tag, a download (cached by run id), loaded.

    Raises :class:`SearchIndexError` with the command that builds it when the version has
    no index, and when the index was built with another version.
    """
    run_id = index_run_for_version(client, name, version)
    if run_id is None:
        raise SearchIndexError(
            f"version {version} of {name} has no search index: build it with "
            f"`{build_command(name, version)}`"
        )
    index = SearchIndex.load(download_index(run_id, cache_dir, client))
    if index.model_version is not None and str(index.model_version) != str(version):
        raise SearchIndexError(
            f"the {INDEX_RUN_TAG} tag of version {version} of {name} names run {run_id}, "
            f"an index of version {index.model_version}: rebuild with "
            f"`{build_command(name, version)}`"
        )
    return index
