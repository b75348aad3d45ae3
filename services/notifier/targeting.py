"""Who receives an alert, and why: pure rules over the hit and the unit directory."""

from __future__ import annotations

from collections.abc import Iterable

from shared.events import HitFound, Recipient, SharingScope

SEEN_HERE = "subject seen on this unit's territory"
LISTED_HERE = "this unit listed the subject"


def agreement_reason(seen_unit: str) -> str:
    return f"coordination agreement with {seen_unit}, where the subject was seen"


def choose_recipients(hit: HitFound, agreement_partners: Iterable[str]) -> list[Recipient]:
    """The seen unit, the listing unit and, unless the entry is owner-only, the seen
    unit's agreement partners; each with every reason that applies, in a stable order."""
    reasons: dict[str, list[str]] = {}
    reasons.setdefault(hit.place.unit_code, []).append(SEEN_HERE)
    reasons.setdefault(hit.entry.owner_unit, []).append(LISTED_HERE)
    if hit.entry.sharing_scope is not SharingScope.OWNER_ONLY:
        for partner in agreement_partners:
            reasons.setdefault(partner, []).append(agreement_reason(hit.place.unit_code))
    return [Recipient(unit_code=code, reasons=tuple(why)) for code, why in reasons.items()]
