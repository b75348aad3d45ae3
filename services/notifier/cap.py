"""OASIS CAP 1.2 messages for alerts, and an Atom feed of them per unit.

Each state of an alert is one CAP message: the first is `msgType=Alert`; every later
change (acknowledged, confirmed, escalated, closed ...) is an `Update`, a withdrawal a
`Cancel`, each `references` the first message. Messages are `scope=Private`, addressed to
the alert's recipient units (their codes, space-separated). Times are given in Vietnam
time (+07:00, as CAP's dateTime pattern requires an explicit offset). Each message has two
`info` blocks, Vietnamese (`vi-VN`) first and English (`en-US`), each complete: event,
headline, description with the match reasons, instruction (texts from the catalogue,
`shared/i18n.py`).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone
from typing import Any

from shared.i18n import translate

CAP_NS = "urn:oasis:names:tc:emergency:cap:1.2"
ATOM_NS = "http://www.w3.org/2005/Atom"
VIETNAM = timezone(timedelta(hours=7))

EVENT_NAMES = {
    "wanted_person": ("Đối tượng truy nã được phát hiện", "Wanted person sighted"),
    "managed_person": ("Đối tượng quản lý được phát hiện", "Managed person sighted"),
    "missing_person": ("Người mất tích được phát hiện", "Missing person sighted"),
    "stolen_vehicle": ("Phương tiện bị trộm được phát hiện", "Stolen vehicle sighted"),
    "incident_suspect": ("Đối tượng của vụ việc được phát hiện", "Incident suspect sighted"),
    "incident_vehicle": ("Phương tiện của vụ việc được phát hiện", "Incident vehicle sighted"),
    "incident": ("Vụ việc cần phối hợp truy bắt", "Incident: pursuit across the border"),
}
"""(Vietnamese, English) of each category, for the message's two `info` blocks."""
SEVERITY = {"wanted_person": "Severe", "missing_person": "Severe",
            "managed_person": "Moderate", "stolen_vehicle": "Moderate",
            "incident_suspect": "Severe", "incident_vehicle": "Severe", "incident": "Severe"}
ACTIONS = {
    "arrest": ("Bắt giữ", "Arrest"),
    "discreet_check": ("Kiểm tra kín, không để đối tượng biết",
                       "Discreet check: do not alert the subject"),
    "locate_and_report": ("Xác định vị trí và báo lại", "Locate and report"),
}
CAUTIONS = {
    "armed": ("CÓ VŨ KHÍ", "ARMED"),
    "violent": ("HUNG HÃN", "VIOLENT"),
    "escape_risk": ("CÓ THỂ BỎ TRỐN", "ESCAPE RISK"),
    "medical_condition": ("CÓ BỆNH", "MEDICAL CONDITION"),
}
DEFAULT_INSTRUCTION = ("Xác minh với đơn vị lập hồ sơ trước khi hành động.",
                       "Confirm with the listing unit before acting.")
INCIDENT_INSTRUCTION = ("Phối hợp truy bắt, báo ngay cho đơn vị báo vụ việc.",
                        "Join the pursuit; report at once to the unit that reported the "
                        "incident.")
LABELS = {
    "entry": ("Hồ sơ", "Entry"), "incident": ("Vụ việc", "Incident"),
    "fled": ("Bỏ chạy về", "Fled towards"), "bearing": ("Hướng", "Bearing"),
    "suspect": ("Đối tượng", "Suspect"), "vehicle": ("Phương tiện", "Vehicle"),
}
INFO_LANGUAGES = (("vi", "vi-VN"), ("en", "en-US"))
"""Each CAP message carries one `info` block per language, Vietnamese first."""


def _pick(pair: tuple[str, str], language: str) -> str:
    return pair[0] if language == "vi" else pair[1]


def who(alert: dict[str, Any]) -> str:
    """What the alert is about, in a few words."""
    if alert.get("kind") == "incident":
        incident = alert["incident"]
        return f"{incident['incident_type']}"
    subject = alert["subject"]
    return subject.get("name") or subject.get("plate") or subject.get("national_id") or "?"


def event_name(category: str, language: str) -> str:
    pair = EVENT_NAMES.get(category)
    return _pick(pair, language) if pair else category


def instruction(alert: dict[str, Any], language: str = "vi") -> str:
    """Officer safety first, then what the listing unit asks for."""
    parts = [_pick(CAUTIONS[c], language) if c in CAUTIONS else c
             for c in alert.get("cautions") or ()]
    if alert.get("action"):
        action = ACTIONS.get(alert["action"])
        parts.append(_pick(action, language) if action else alert["action"])
    parts.append(_pick(INCIDENT_INSTRUCTION if alert.get("kind") == "incident"
                       else DEFAULT_INSTRUCTION, language))
    return " — ".join(parts)


def cap_time(value: datetime) -> str:
    return value.astimezone(VIETNAM).replace(microsecond=0).isoformat()


def _parse(value: Any) -> datetime:
    return value if isinstance(value, datetime) else datetime.fromisoformat(value)


def identifier(alert: dict[str, Any], *, first: bool) -> str:
    base = f"urn:giapranh:alert:{alert['alert_id']}"
    if first:
        return base
    return f"{base}:{int(_parse(alert['updated_at']).timestamp() * 1000)}"


def message_type(alert: dict[str, Any]) -> str:
    if alert["status"] == "withdrawn":
        return "Cancel"
    return "Alert" if _parse(alert["updated_at"]) == _parse(alert["raised_at"]) else "Update"


_NOT_IN_XML = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(text: str) -> str:
    """Text XML 1.0 can carry: characters it cannot become U+FFFD. Ingest refuses them, but
    an alert stored before it did must not make a unit's whole feed unreadable."""
    return _NOT_IN_XML.sub("\ufffd", text)


def _sub(parent: ET.Element, tag: str, text: str | None = None, ns: str = CAP_NS) -> ET.Element:
    element = ET.SubElement(parent, f"{{{ns}}}{tag}")
    if text is not None:
        element.text = xml_text(text)
    return element


def cap_element(alert: dict[str, Any], *, sender: str, recipients: list[str]) -> ET.Element:
    msg_type = message_type(alert)
    root = ET.Element(f"{{{CAP_NS}}}alert")
    _sub(root, "identifier", identifier(alert, first=msg_type == "Alert"))
    _sub(root, "sender", sender)
    _sub(root, "sent", cap_time(_parse(alert["updated_at"])))
    _sub(root, "status", "Actual")
    _sub(root, "msgType", msg_type)
    _sub(root, "source", "giapranh")
    _sub(root, "scope", "Private")
    _sub(root, "addresses", " ".join(recipients))
    _sub(root, "code", f"giapranh:status:{alert['status']}")
    note = f"status: {alert['status']}"
    if alert.get("outcome"):
        note += f"; outcome: {alert['outcome']}"
    if alert.get("decision_note"):
        note += f"; {alert['decision_note']}"
    _sub(root, "note", note)
    if msg_type != "Alert":
        _sub(root, "references", ",".join(
            (sender, identifier(alert, first=True), cap_time(_parse(alert["raised_at"])))))
    _sub(root, "incidents", str(alert["correlation_id"]))
    for language, tag in INFO_LANGUAGES:
        _info(root, alert, language, tag)
    return root


def _info(root: ET.Element, alert: dict[str, Any], language: str, tag: str) -> None:
    info = _sub(root, "info")
    _sub(info, "language", tag)
    incident = alert.get("kind") == "incident"
    _sub(info, "category", "Security")
    if incident:
        _sub(info, "category", "Rescue")
    _sub(info, "event", event_name(alert["category"], language))
    _sub(info, "responseType", "Execute" if incident or alert.get("action") else "Monitor")
    _sub(info, "urgency", "Immediate" if alert["urgency"] == "urgent" else "Expected")
    _sub(info, "severity", "Extreme" if {"armed", "violent"} & set(alert.get("cautions") or ())
         else SEVERITY.get(alert["category"], "Moderate"))
    _sub(info, "certainty", "Observed" if incident
         else "Likely" if alert["score"] >= 0.9 else "Possible")
    code = _sub(info, "eventCode")
    _sub(code, "valueName", "giapranh:category")
    _sub(code, "value", alert["category"])
    _sub(info, "effective", cap_time(_parse(alert["raised_at"])))
    _sub(info, "onset", cap_time(_parse(alert["seen_at"])))
    if alert.get("confirm_by"):
        _sub(info, "expires", cap_time(_parse(alert["confirm_by"])))
    names = alert.get("unit_names") or {}
    _sub(info, "senderName", names.get(alert["owner_unit"], alert["owner_unit"]))
    _sub(info, "headline",
         f"{who(alert)} – {names.get(alert['seen_unit'], alert['seen_unit'])}"[:160])
    entry = alert["entry"] or {"entry_id": f"incident:{alert['hit_id']}"}
    lines = ([] if incident else
             [f"{_pick(LABELS['entry'], language)} {entry['entry_id']} "
              f"({alert['owner_unit']})"])
    if entry.get("description"):
        lines.append(entry["description"])
    if alert.get("incident"):
        lines += incident_lines(alert["incident"], language)
    lines += [f"{translate(reason['feature'], language)}: "
              f"{translate(reason['detail'], language)}" for reason in alert["match_reasons"]]
    _sub(info, "description", "\n".join(lines))
    _sub(info, "instruction", instruction(alert, language))
    for name, value in (("score", f"{alert['score']:.2f}"), ("seen_unit", alert["seen_unit"]),
                        ("owner_unit", alert["owner_unit"]), ("entry_id", entry["entry_id"])):
        parameter = _sub(info, "parameter")
        _sub(parameter, "valueName", name)
        _sub(parameter, "value", value)
    place = alert["place"]
    area = _sub(info, "area")
    _sub(area, "areaDesc", place.get("address") or names.get(place["unit_code"], place["unit_code"]))
    if place.get("lat") is not None:
        _sub(area, "circle", f"{place['lat']},{place['lon']} 0.5")
    _sub(area, "geocode")
    geocode = area[-1]
    _sub(geocode, "valueName", "giapranh:unit")
    _sub(geocode, "value", place["unit_code"])


def incident_lines(incident: dict[str, Any], language: str = "vi") -> list[str]:
    """An incident in a few lines: what, where to, who and which vehicles."""
    label = {key: _pick(pair, language) for key, pair in LABELS.items()}
    lines = [f"{label['incident']}: {incident['incident_type']} "
             f"({translate(incident['severity'], language)})"]
    if incident.get("summary"):
        lines.append(incident["summary"])
    if incident.get("fled_towards"):
        lines.append(f"{label['fled']}: " + ", ".join(incident["fled_towards"]))
    if incident.get("fled_bearing") is not None:
        lines.append(f"{label['bearing']}: {incident['fled_bearing']}°")
    for suspect in incident.get("suspects") or ():
        flags = ", ".join(_pick(CAUTIONS[c], language) if c in CAUTIONS else c
                          for c in suspect.get("cautions") or ())
        lines.append(f"{label['suspect']}: " + " ".join(str(v) for v in (
            suspect.get("name"), suspect.get("birth_year"), suspect.get("national_id"),
            suspect.get("plate"), suspect.get("description")) if v) + (f" [{flags}]"
                                                                        if flags else ""))
    for vehicle in incident.get("vehicles") or ():
        lines.append(f"{label['vehicle']}: " + " ".join(
            v for v in (vehicle.get("plate"), vehicle.get("description")) if v))
    return lines


def render_cap(alert: dict[str, Any], *, sender: str, recipients: list[str]) -> bytes:
    ET.register_namespace("", CAP_NS)
    return ET.tostring(cap_element(alert, sender=sender, recipients=recipients),
                       encoding="utf-8", xml_declaration=True)


def render_atom(unit_code: str, unit_name: str, alerts: list[tuple[dict[str, Any], list[str]]],
                *, sender: str, base_url: str, now: datetime) -> bytes:
    """An Atom feed of the unit's alerts, newest change first, each entry carrying the
    alert's latest CAP message inline."""
    ET.register_namespace("", ATOM_NS)
    ET.register_namespace("cap", CAP_NS)
    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    _sub(feed, "id", f"urn:giapranh:feed:{unit_code}", ATOM_NS)
    _sub(feed, "title", f"giapranh – {unit_name}", ATOM_NS)
    updated = max((_parse(a["updated_at"]) for a, _ in alerts), default=now)
    _sub(feed, "updated", updated.astimezone(VIETNAM).isoformat(), ATOM_NS)
    author = _sub(feed, "author", ns=ATOM_NS)
    _sub(author, "name", sender, ATOM_NS)
    link = _sub(feed, "link", ns=ATOM_NS)
    link.set("rel", "self")
    link.set("href", f"{base_url}/v1/feeds/alerts.atom")
    for alert, recipients in alerts:
        msg_type = message_type(alert)
        entry = _sub(feed, "entry", ns=ATOM_NS)
        _sub(entry, "id", identifier(alert, first=msg_type == "Alert"), ATOM_NS)
        title = (f"[{msg_type}] {event_name(alert['category'], 'vi')} / "
                 f"{event_name(alert['category'], 'en')}: {who(alert)}")
        _sub(entry, "title", title, ATOM_NS)
        _sub(entry, "updated", _parse(alert["updated_at"]).astimezone(VIETNAM).isoformat(),
             ATOM_NS)
        category = _sub(entry, "category", ns=ATOM_NS)
        category.set("term", msg_type)
        category.set("scheme", "urn:oasis:names:tc:emergency:cap:1.2:msgType")
        alternate = _sub(entry, "link", ns=ATOM_NS)
        alternate.set("rel", "alternate")
        alternate.set("type", "application/cap+xml")
        alternate.set("href", f"{base_url}/v1/alerts/{alert['alert_id']}/cap")
        content = _sub(entry, "content", ns=ATOM_NS)
        content.set("type", "application/cap+xml")
        content.append(cap_element(alert, sender=sender, recipients=recipients))
    return ET.tostring(feed, encoding="utf-8", xml_declaration=True)
