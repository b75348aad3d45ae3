"""`giapranh units|adjacency|agreements|webhooks ...` against a real database."""

from datetime import UTC, datetime

import pytest
from typer.testing import CliRunner

from giapranh.cli import app

runner = CliRunner(env={"COLUMNS": "250"})


@pytest.fixture
def cli(env, directory):
    def run(*args: str, ok: bool = True) -> str:
        result = runner.invoke(app, [*args, "--database-url", env.database_url])
        assert (result.exit_code == 0) is ok, result.output
        return result.output
    return run


def test_rename_move_and_merge_keep_history_and_hand_over(cli, env):
    assert "added unit CA-99001" in cli("units", "add", "CA-99001", "Công an xã Thử",
                                        "--parent", "CAT-92", "--lat", "10.2", "--lon", "105.5")
    cli("adjacency", "add", "CA-99001", "CA-31237", "--note", "bờ sông")
    assert "known already" in cli("adjacency", "add", "CA-31237", "CA-99001")
    cli("units", "rename", "CA-99001", "Công an xã Thử Nghiệm")
    cycle = cli("units", "move", "CAT-92", "--parent", "CA-99001", ok=False)
    assert "cycle" in cycle
    cli("units", "merge", "CA-31237", "--into", "CA-99001")

    history = cli("units", "history", "CA-99001")
    assert "renamed" in history and "Công an xã Thử Nghiệm" in history
    assert "merged" in history and "CA-31237" in history
    listing = cli("units", "list")
    assert "merged into CA-99001" in listing
    # Vĩnh Trinh's neighbour Long Xuyên now borders the unit that took it over.
    assert "CA-30307" in cli("adjacency", "list", "CA-99001")
    again = cli("units", "merge", "CA-31237", "--into", "CA-31212", ok=False)
    assert "was merged into CA-99001" in again
    [row] = [line for line in cli("keys", "list", "CA-31237").splitlines() if "CA-31237" in line]
    today = f"{datetime.now(UTC):%Y-%m-%d}"
    assert row.count(today) == 2  # created and revoked: a merged unit's keys stop working


def test_agreements_and_webhooks(cli):
    created = cli("agreements", "add", "Phối hợp thử nghiệm", "--party", "CA-30307",
                  "--party", "CA-21553", "--valid-from", "2026-01-01",
                  "--category", "stolen_vehicle")
    assert "agreement" in created
    assert "Phối hợp thử nghiệm" in cli("agreements", "list")
    bad = cli("agreements", "add", "X", "--party", "CA-30307", "--valid-from", "2026-01-01",
              ok=False)
    assert "parties" in bad
    out = cli("webhooks", "set", "CA-30307", "https://desk.example/hook", "--format", "cap")
    assert out.strip().splitlines()[-1].startswith("whsec_")
    assert "https://desk.example/hook" in cli("webhooks", "list")
    assert "re-queued 0" in cli("webhooks", "retry")
    cli("webhooks", "set", "CA-30307", "ftp://nope", ok=False)
