"""The evaluation harness contract (../shared/MATCHING.md) and the development-set gate."""

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

DEV = ROOT.parent / "shared" / "data" / "matching-dev"
SCORER = ROOT.parent / "shared" / "tools" / "score_matching.py"


def evaluate(watchlist: Path, queries: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "services.matcher.evaluate", str(watchlist),
                           str(queries)], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_harness_prints_only_alert_lines_on_stdout(tmp_path):
    (tmp_path / "w.jsonl").write_text(json.dumps({
        "entry_id": "W1", "category": "wanted_person", "owner_unit": "U1",
        "full_name": "Lê Văn Tám", "aliases": [], "gender": "male", "birth_date": None,
        "birth_year": 1980, "national_id": "079080001234", "plates": []}) + "\n")
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(q) for q in [
        {"query_id": "Q1", "name": "LE VAN TAM", "birth_year": 1980, "birth_date": None,
         "national_id": None, "plate": None},
        {"query_id": "Q2", "name": None, "birth_year": None, "birth_date": None,
         "national_id": "079 080 001 234", "plate": None},
        {"query_id": "Q3", "name": "Trần Thị Bé", "birth_year": 1999, "birth_date": None,
         "national_id": None, "plate": None},
    ]) + "\n")
    run = evaluate(tmp_path / "w.jsonl", tmp_path / "q.jsonl")
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert [(line["query_id"], line["entry_id"]) for line in lines] == [("Q1", "W1"), ("Q2", "W1")]
    assert all(0 < line["score"] <= 1 and line["reasons"] for line in lines)


def test_the_development_set_meets_the_quality_targets(tmp_path):
    assert DEV.exists(), f"the development set is missing: expected {DEV} beside the repo"
    run = evaluate(DEV / "watchlist.jsonl", DEV / "queries.jsonl")
    assert run.returncode == 0, run.stderr
    (tmp_path / "results.jsonl").write_text(run.stdout)
    scored = subprocess.run([sys.executable, str(SCORER), str(DEV / "labels.jsonl"),
                             str(tmp_path / "results.jsonl"), "--json"],
                            capture_output=True, text=True, check=True)
    score = json.loads(scored.stdout)
    assert score["recall"] >= 0.98, score
    assert score["precision"] >= 0.99, score
    assert score["false_alerts_per_1000_negatives"] <= 5, score
