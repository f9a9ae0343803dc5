"""The FastAPI service (``/predict``, ``/search``, a web page) over the production model.

It loads ``models:/marketplace-classifier@production`` through ``registry/`` and never
imports ``steps/``: the served model carries its own preprocessing. The service itself
is built in its own issue; this package marks the layer's place and its import rule.
"""
