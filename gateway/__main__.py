"""`python -m gateway`: validate the settings, then serve with uvicorn on RERANKER_HOST:RERANKER_PORT."""

from __future__ import annotations

import logging
import sys

from gateway.config import ConfigurationError, load_settings


def main() -> int:
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"reranker gateway: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    from gateway.app import create_app

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,  # gateway.access logs one line per request, with its request id
        timeout_graceful_shutdown=10,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
