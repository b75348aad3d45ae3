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


def build_worker(settings: MatcherSettings, app: faust.App) -> faust.Worker:
    worker = faust.Worker(
        app, loglevel=settings.log_level.lower(),
        logging_config=logging_config("matcher", settings.log_level, settings.log_format,
                                      events=settings.log_events),
    )
    # No terminal spinner: at a log level of WARNING or above, faust's worker hangs it on
    # the root logger and sets that to DEBUG, so every library's debug call made a log
    # record (~6 % of the matcher's CPU at 1,000 hits/s went to aiokafka's).
    worker.spinner = None
    return worker


def main() -> None:
    settings = MatcherSettings()
    settings.matcher_data_dir.mkdir(parents=True, exist_ok=True)
    # The streams subscribe as the worker starts: their topics must exist by then.
    asyncio.run(_prepare_topics(settings))
    build_worker(settings, create_app(settings)).execute_from_commandline()


if __name__ == "__main__":
    main()
