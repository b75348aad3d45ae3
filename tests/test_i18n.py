"""One message catalogue for what people read (`shared/i18n.py`), held to the code: every
refusal the services raise, every "why you" and history text, and every reason the matcher
gives on the development sets has its Vietnamese; the API answers in the language asked."""

from __future__ import annotations

import ast
import json
import re
from collections import Counter
from datetime import timedelta

import pytest

from services.matcher.engine import MatchingEngine
from services.matcher.evaluate import EVALUATION_TIME, load_watchlist, query_subject
from services.notifier import targeting, workflow
from shared.i18n import Catalogue, negotiate, placeholders, translate
from tests.conftest import ROOT, bearer

ERRORS = {"Unprocessable", "Conflict", "NotFound", "Forbidden", "Unauthorized",
          "InvalidTransition", "TooManyRequests", "PayloadTooLarge", "ServiceUnavailable",
          "Overloaded", "GiapranhError"}
ENGLISH = re.compile(r"\b(national id|plate|surname|given name|middle name|typo|syllable|"
                     r"diacritics|birth|alias|unlike|variant|spelling|written|exact|"
                     r"full name|order|dropped)\b")
"""Words of the matcher's English reasons: none may be left in a Vietnamese one."""


@pytest.fixture(scope="module")
def catalogue() -> Catalogue:
    return Catalogue()


def vi(catalogue: Catalogue, text: str) -> str:
    found = catalogue.lookup(text)
    assert found is not None, f"no Vietnamese for {text!r}"
    assert found != text
    return found


def test_each_translation_keeps_its_placeholders(catalogue):
    from babel.messages.pofile import read_po

    from shared.i18n import CATALOGUE
    with CATALOGUE.open("rb") as po:
        messages = [m for m in read_po(po) if m.id]
    assert len(messages) > 100
    for message in messages:
        assert message.string, f"{message.id!r} has no translation"
        ids, strings = placeholders(message.id), placeholders(message.string)
        assert Counter(ids) == Counter(strings), (message.id, message.string)


def _template(node: ast.expr) -> str | None:
    """A raise's message as a template: each value in an f-string becomes `{}`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "\x00"
                       for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _template(node.left), _template(node.right)
        return None if left is None or right is None else left + right
    return None


def raised_messages() -> list[tuple[str, str]]:
    """(where, message with sample values) of every refusal raised with a literal message."""
    found = []
    for folder in ("services", "shared", "giapranh"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if (isinstance(node, ast.Call) and getattr(node.func, "id", None) in ERRORS
                        and node.args):
                    template = _template(node.args[0])
                    if template is not None:
                        samples = iter(f"X{n}" for n in range(1, 10))
                        found.append((f"{path.relative_to(ROOT)}:{node.lineno}",
                                      re.sub("\x00", lambda _: next(samples), template)))
    return found


def test_every_refusal_the_services_raise_has_its_vietnamese(catalogue):
    messages = raised_messages()
    assert len(messages) > 50  # (the scan found them)
    missing = [(where, text) for where, text in messages if catalogue.lookup(text) is None]
    assert missing == []


def test_why_you_and_history_texts_have_their_vietnamese(catalogue):
    texts = [targeting.SEEN_HERE, targeting.LISTED_HERE, targeting.REPORTED_HERE,
             targeting.INCIDENT_HERE, targeting.INCIDENT_REPORTED_HERE,
             targeting.ALL_UNITS_REASON,
             targeting.agreement_reason("CA-30307", "Quy chế phối hợp (2024): An Giang"),
             targeting.adjacency_reason("CA-30307"),
             targeting.incident_agreement_reason("CA-30307", "Quy chế 12"),
             targeting.incident_adjacency_reason("CA-30307"),
             targeting.fled_towards_reason("CA-31212"),
             workflow.raised_detail(3, "urgent", workflow.Deadlines(
                 timedelta(minutes=10), timedelta(hours=1))),
             workflow.incident_raised_detail(4, "immediate"),
             workflow.incident_update_detail(suspects=2, vehicles=1, fled_towards=["CA-1"],
                                             fled_bearing=270, added=["CA-2", "CA-3"]),
             workflow.incident_closed_detail("caught")]
    for text in texts:
        vi(catalogue, text)
    assert vi(catalogue, targeting.radius_reason(12.345, 15)) == (
        "cách nơi phát hiện đối tượng 12,3 km (bán kính 15 km)")
    assert vi(catalogue, targeting.bearing_reason(45, 3.21)) == (
        "trên hướng bỏ chạy (hướng 45°), cách 3,2 km")
    assert vi(catalogue, targeting.agreement_reason("CA-1", "Quy chế (2024): A, B")) == (
        "quy chế phối hợp với CA-1, nơi phát hiện đối tượng: Quy chế (2024): A, B")

    class Chain:
        def ancestors(self, code):
            return ["PC-AG"]
    step = workflow.escalation(owner="CA-30307", level=0, urgency="urgent", directory=Chain(),
                               deadlines=workflow.Deadlines(timedelta(minutes=10),
                                                            timedelta(hours=1)),
                               now=EVALUATION_TIME)
    assert vi(catalogue, step.detail) == (
        "CA-30307 không xác nhận trong 10 phút (thời hạn lần 1); đã chuyển lên PC-AG")
    assert vi(catalogue, step.reason).startswith("chuyển cấp trên: CA-30307 không xác nhận")
    # A reporter's own note is left as written, the rest translated, even a note that
    # reads like a text of the catalogue.
    from services.notifier.models import history_step
    for note in ("chạy về phía cầu", "caught", "1 suspect(s) added"):
        step = history_step({"at": EVALUATION_TIME, "action": "updated", "unit_code": "CA-1",
                             "person_name": None, "note": note,
                             "detail": workflow.incident_update_detail(
                                 suspects=1, vehicles=0, fled_towards=[], fled_bearing=None,
                                 added=[])}, "vi")
        assert step.detail == f"bổ sung 1 đối tượng; {note}"


@pytest.mark.parametrize("dataset", ["matching-dev", "matching-dev-v2"])
def test_every_reason_the_matcher_gives_on_the_development_sets_is_translated(
        catalogue, dataset):
    folder = ROOT.parent / "shared" / "data" / dataset
    assert folder.exists(), f"{folder} is missing beside the repo"
    engine = MatchingEngine()
    engine.load(load_watchlist(folder / "watchlist.jsonl"))
    reasons = set()
    lines = (folder / "queries.jsonl").read_text(encoding="utf-8").splitlines()
    for line in lines[:1500]:
        for match in engine.match(query_subject(json.loads(line)), at=EVALUATION_TIME):
            reasons.update((r.feature, r.detail) for r in match.reasons)
    assert len(reasons) > 300
    for feature, detail in reasons:
        vi(catalogue, feature)
        translated = vi(catalogue, detail)
        assert not ENGLISH.search(translated), (detail, translated)


def test_the_language_asked_for():
    assert negotiate("vi-VN,vi;q=0.9,en-US;q=0.8,en;q=0.7") == "vi"
    assert negotiate("en-GB,en;q=0.9,vi;q=0.8") == "en"
    assert negotiate("fr-FR, vi;q=0.5") == "vi"
    assert negotiate("vi;q=0, en") == "en"
    assert negotiate(None) == negotiate("") == negotiate("*") == "en"
    assert negotiate("x" * 400 + ";q=abc, ;;, vi") == "vi"  # junk is skipped, not a 500
    assert translate("unknown or revoked API key", "en") == "unknown or revoked API key"
    assert translate("something the catalogue does not know", "vi") == (
        "something the catalogue does not know")  # English, never empty


def test_somebodys_words_are_left_as_written(catalogue):
    """Only the code's own words are translated: a person's note, a unit's name, an
    agreement's title or a name as typed stays as written, even when it happens to be a
    word of the catalogue or ends like a template."""
    from services.notifier.models import history_detail
    caught = translate("caught", "vi")
    assert caught != "caught"
    assert history_detail("closed", "false_match: wrong person, a typo", "vi") == (
        translate("false_match", "vi") + ": wrong person, a typo")
    assert history_detail("closed", "caught: caught", "vi") == caught + ": caught"
    assert history_detail("closed", workflow.incident_closed_detail("caught: 2 typo"),
                          "vi") == translate("incident closed: caught", "vi") + ": 2 typo"
    assert history_detail("confirmed", "caught", "vi") == "caught"  # a confirming note
    assert history_detail("rejected", "1 typo", "vi") == "1 typo"
    assert history_detail("withdrawn", "caught", "vi") == "caught"  # the unit's reason
    assert history_detail("withdrawn", "cancelled", "vi") == "đã hủy hồ sơ"  # no reason
    assert translate(targeting.agreement_reason("CA-1", "caught"), "vi").endswith(": caught")
    assert translate("name caught unlike Nguyễn Văn A", "vi") == (
        "tên caught không giống Nguyễn Văn A")
    assert translate("x typo", "vi") == "x typo"  # a count is digits
    assert translate("2 typo", "vi") == "2 lỗi gõ"


@pytest.mark.parametrize("text", [
    "x" + " typo" * 390,  # nested once raised RecursionError: a 500 on any page
    "Value error, " * 150 + "caught",
    "escalated: " * 180,
    ": " * 990,
    "; ".join(["alert is raised; only a raised or acknowledged alert can be x"] * 30),
])
def test_a_crafted_text_is_answered_not_failed(catalogue, text):
    translated = translate(text, "vi")
    assert translated  # (and no exception)
    if text.startswith("Value error"):
        # Followed three levels deep, no further: the rest stays as written.
        assert translated.startswith("Giá trị không hợp lệ, " * 3 + "Value error, ")


async def test_a_hostile_path_in_vietnamese_is_a_404_not_a_500(ingest):
    path = "/field/x" + "%20typo" * 340
    refused = await ingest.get(path, headers={"Accept-Language": "vi"})
    assert refused.status_code == 404
    assert refused.json()["error"]["message"]


async def test_refusals_come_in_the_language_asked_for(ingest, directory):
    vietnamese = {"Accept-Language": "vi-VN,vi;q=0.9"}
    refused = await ingest.post("/v1/sightings", json={}, headers=vietnamese)
    assert refused.status_code == 401
    assert refused.json()["error"]["message"] == "thiếu khóa API: gửi 'Authorization: " \
                                                 "Bearer <khóa>'"
    english = await ingest.post("/v1/sightings", json={})
    assert english.json()["error"]["message"].startswith("missing API key")

    invalid = await ingest.post("/v1/sightings", json={"event_id": "nope"},
                                headers={**bearer(directory["CA-31212"]), **vietnamese})
    assert invalid.status_code == 422
    error = invalid.json()["error"]
    assert error["field"]  # the field is named whatever the language
    assert all(not e["message"].startswith(("Field required", "Input should"))
               for e in error["errors"]), error["errors"]
    unknown = await ingest.get("/v1/nowhere", headers=vietnamese)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["message"] == "Không tìm thấy"


def test_every_review_report_text_has_its_vietnamese(catalogue):
    from services.notifier.reports import LABELS, label
    for key, english in LABELS.items():
        vi(catalogue, english)
        assert label(key, "en") == english
    assert label("title", "vi") == "BÁO CÁO SƠ KẾT CÔNG TÁC PHỐI HỢP TRAO ĐỔI THÔNG TIN"
