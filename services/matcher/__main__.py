"""`python -m services.matcher`: run one stream-matcher worker (settings from the env)."""

import asyncio

import faust

from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings
from shared.kafka import ensure_topics, wait_for_broker
from shared.logs import logging_config


async def _prepare_topics(settings: MatcherSettings) -> None:
    await wait_for_broker(settings)
    await ensure_topics(settings)


def main() -> None:
    settings = MatcherSettings()
    settings.matcher_data_dir.mkdir(parents=True, exist_ok=True)
    # The streams subscribe as the worker starts: their topics must exist by then.
    asyncio.run(_prepare_topics(settings))
    app = create_app(settings)
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(),
        logging_config=logging_config("matcher", settings.log_level, settings.log_format,
                                      events=settings.log_events),
    )
    worker.execute_from_commandline()


if __name__ == "__main__":
    main()
