"""`python -m services.ingest`: run the ingest API with settings from the environment."""

import logging

import uvicorn

from services.ingest.app import create_app
from services.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.ingest_host, port=settings.ingest_port,
        log_level=settings.log_level.lower(), access_log=False,
    )


if __name__ == "__main__":
    main()
