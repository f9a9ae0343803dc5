"""The FastAPI service over the production model: ``python -m serve`` or ``make serve``.

It loads ``models:/marketplace-classifier@production`` (``MODEL_URI``) through
``registry/`` and never imports ``steps/``: the served model carries its own
preprocessing. ``serve.app.create_app`` builds the app; ``serve.settings.Settings`` reads
its settings from the environment. Nothing happens at import time.
"""
