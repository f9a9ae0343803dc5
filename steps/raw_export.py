"""What a raw export folder says about where it came from.

``ingest`` writes :data:`INGEST_MARKER` (its manifest: the source, each file's content key,
what it removed) and ``demo_data`` writes :data:`DEMO_MARKER` (how the synthetic export was
made) and :data:`DEMO_LICENSE_NOTE` (the photos' artwork credit). Each step removes the
other's when it takes a folder over, so a folder is never both, and ``demo_data`` and
``main`` never write a synthetic export over an ingested one.
"""

from __future__ import annotations

INGEST_MARKER = ".ingest.json"
DEMO_MARKER = ".demo_data.json"
# demo_data's credit for the artwork its photos are drawn from; it goes with the photos
DEMO_LICENSE_NOTE = "LICENSE-images.txt"
