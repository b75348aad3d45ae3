"""Who receives an alert, and why: pure rules over the hit and the unit directory.

Recipients, widest last, each limited by the entry's sharing scope:
- the unit where the subject was seen and the unit that listed the subject (always);
- the seen unit's partners in coordination agreements that cover the entry's category and
  are in force today (scope `agreement_partners` and wider);
- the units whose territory borders the seen unit's, and the units within the configured
  radius of the sighting's coordinates (scope `neighbours`, the default, and wider);
- every active unit (scope `all_units`).
A unit merged into another is replaced by its successor. Each recipient carries every
reason that applies, in that order.
"""

from __future__ import annotations

from datetime import date

from services.notifier.directory import Directory
from shared.events import HitFound, Recipient, SharingScope

SEEN_HERE = "subject seen on this unit's territory"
LISTED_HERE = "this unit listed the subject"


def agreement_reason(seen_unit: str, title: str) -> str:
    return f"coordination agreement with {seen_unit}, where the subject was seen: {title}"


def adjacency_reason(seen_unit: str) -> str:
    return f"territory borders {seen_unit}, where the subject was seen"


def radius_reason(distance_km: float, radius_km: float) -> str:
    return f"{distance_km:.1f} km from where the subject was seen (radius {radius_km:g} km)"


ALL_UNITS_REASON = "the listing unit shares this entry with all units"


def choose_recipients(
    hit: HitFound, directory: Directory, *, today: date, radius_km: float
) -> list[Recipient]:
    scope = hit.entry.sharing_scope
    seen = hit.place.unit_code
    reasons: dict[str, list[str]] = {}

    def add(code: str, why: str) -> None:
        current = directory.current(code)
        if current != code:
            why = f"{why} (as successor of {code})"
        reasons.setdefault(current, [])
        if why not in reasons[current]:
            reasons[current].append(why)

    add(seen, SEEN_HERE)
    add(hit.entry.owner_unit, LISTED_HERE)
    if scope is SharingScope.OWNER_ONLY:
        return _recipients(reasons)
    for partner, title in directory.partners(seen, hit.entry.category.value, today):
        add(partner, agreement_reason(seen, title))
    if scope is SharingScope.AGREEMENT_PARTNERS:
        return _recipients(reasons)
    for neighbour in directory.adjacent(seen):
        add(neighbour, adjacency_reason(seen))
    if hit.place.lat is not None and hit.place.lon is not None and radius_km > 0:
        for code, distance in directory.within(hit.place.lat, hit.place.lon, radius_km):
            if code != seen:
                add(code, radius_reason(distance, radius_km))
    if scope is SharingScope.ALL_UNITS:
        for code in directory.active_units():
            if code not in reasons:
                add(code, ALL_UNITS_REASON)
    return _recipients(reasons)


def _recipients(reasons: dict[str, list[str]]) -> list[Recipient]:
    return [Recipient(unit_code=code, reasons=tuple(why)) for code, why in reasons.items()]
