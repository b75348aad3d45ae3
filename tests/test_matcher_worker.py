"""The matcher's faust worker, as `python -m services.matcher` builds it."""

import logging

import pytest

from services.matcher.__main__ import build_worker
from services.matcher.app import create_app
from services.matcher.settings import MatcherSettings


@pytest.fixture
def root_logger_restored():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers


@pytest.mark.parametrize("level", ["WARNING", "ERROR"])
def test_the_worker_keeps_the_log_level_it_is_given(level, tmp_path, root_logger_restored):
    """faust's terminal spinner set the root logger to DEBUG at WARNING and above, so every
    library's debug call built a log record (aiokafka's cost ~6 % of the matcher's CPU)."""
    settings = MatcherSettings(log_level=level, matcher_data_dir=tmp_path)
    worker = build_worker(settings, create_app(settings))
    worker._setup_logging()  # (what the worker does as it starts)
    assert root_logger_restored.level == getattr(logging, level)
    assert not logging.getLogger("aiokafka").isEnabledFor(logging.DEBUG)
