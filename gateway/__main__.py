"""`python -m gateway`: validate the settings, then serve with uvicorn on RERANKER_HOST:RERANKER_PORT.

`python -m gateway check` validates the settings and looks for every model they would serve (what `make serve`
runs first): exit 0 when all are there, 3 when only the folders `make export` builds are missing (`reranker`,
`prefilter`), 1 when others are (it says how to export them), 2 for a bad setting.
"""

from __future__ import annotations

import logging
import sys

from gateway.config import ConfigurationError, Settings, load_settings

EXPORTED_BY_MAKE = frozenset(
    {"reranker", "prefilter"}
)  # `make export`'s folders (python -m export's defaults)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        print(f"reranker gateway: {exc}", file=sys.stderr)
        return 2
    if args[:1] == ["check"]:
        return check(settings)
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


def check(settings: Settings) -> int:
    """Are the models the settings serve in the repository?"""
    from gateway.loading import missing_models

    missing = missing_models(settings)
    repository = settings.model_repository
    if not missing:
        return 0
    if set(missing) <= EXPORTED_BY_MAKE:
        print(
            f"reranker gateway: {repository} lacks {', '.join(sorted(missing))}: `make export` builds it",
            file=sys.stderr,
        )
        return 3
    lines = [f"reranker gateway: {repository} lacks the models it is configured to serve:"]
    lines += [f"  {name}: {why}" for name, why in missing.items()]
    lines.append(
        f"export each with `python -m export --model <hub id or folder> --output {repository} --name <folder> "
        "--prefilter none`"
    )
    if settings.prefilter_name in missing:
        lines.append("or serve without a prefilter: RERANKER_PREFILTER_NAME=")
    print("\n".join(lines), file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
