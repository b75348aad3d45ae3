"""`python -m services.notifier`: run the notifier with settings from the environment."""

import logging

import uvicorn

from services.notifier.app import create_app
from services.notifier.settings import NotifierSettings


def main() -> None:
    settings = NotifierSettings()
    logging.basicConfig(level=settings.log_level, format="%(levelname)s %(name)s: %(message)s")
    uvicorn.run(
        create_app(settings), host=settings.notifier_host, port=settings.notifier_port,
        log_level=settings.log_level.lower(), access_log=False,
    )


if __name__ == "__main__":
    main()
