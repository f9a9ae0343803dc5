"""Search over the catalogue: a model version's FAISS index (:mod:`.index`), the typed-query
text search (:mod:`.text`) and the ranking metrics both are judged by (:mod:`.metrics`)."""
