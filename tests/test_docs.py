"""The README stays true to the code."""

import re

from services.ingest.settings import IngestSettings
from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from tests.conftest import ROOT


def test_the_readme_settings_table_lists_exactly_the_real_settings():
    readme = (ROOT / "README.md").read_text()
    documented = set(re.findall(r"^\| `(GIAPRANH_[A-Z0-9_]+)` \|", readme, re.MULTILINE))
    real = {f"GIAPRANH_{name.upper()}"
            for cls in (IngestSettings, MatcherSettings, NotifierSettings)
            for name in cls.model_fields}
    assert documented == real


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "pytest          # run the test suite" in readme
    assert ci.rstrip().splitlines()[-1] == "pytest"
