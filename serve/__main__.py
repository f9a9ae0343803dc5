"""``python -m serve``: run the service with uvicorn on SERVE_HOST:SERVE_PORT.

Settings come from the environment (see ``serve/settings.py`` and docs/serving.md); a setting
that does not parse is a one-line error with exit code 2, as for every command of the project
(:mod:`cli`).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from pydantic import ValidationError

from cli import UserError, cli
from serve.settings import Settings, variable_name


def read_settings() -> Settings:
    """The settings from the environment; :class:`UserError` naming each bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(
            f"{variable_name(str(error['loc'][0])) if error['loc'] else 'settings'}: {error['msg']}"
            for error in exc.errors()
        )
        raise UserError(f"invalid service settings: {problems}") from None


@cli
def main(argv: Sequence[str] | None = None) -> None:
    """Read the settings, then serve until interrupted."""
    import uvicorn

    from serve.app import create_app

    settings = read_settings()
    logging.getLogger().setLevel(getattr(logging, settings.log_level.upper(), logging.INFO))
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    print(
        f"serving {settings.model_uri} from {settings.tracking_uri} on "
        f"http://{settings.host}:{settings.port} (docs at /docs)",
        file=sys.stderr,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=10,
        # Connections (idle keep-alives and requests still sending) are bounded here;
        # requests in progress and slow bodies by the app's own middleware.
        limit_concurrency=settings.max_connections,
        timeout_keep_alive=settings.keep_alive_timeout,
    )


if __name__ == "__main__":
    main()
