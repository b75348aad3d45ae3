"""Who receives an alert, and why: pure rules over the hit and the unit directory.

Recipients, widest last, each limited by the entry's sharing scope:
- the unit where the subject was seen and the unit that listed the subject (always);
- the seen unit's partners in coordination agreements that cover the entry's category and
  are in force today (scope `agreement_partners` and wider);
- the units whose territory borders the seen unit's, and the units within the configured
  radius of the sighting's coordinates (scope `neighbours`, the default, and wider);
- every active unit (scope `all_units`).
The unit that filed the report always hears of the hits it raised, whatever the scope.
Reasons are written in English, each marked (`N_`) for the catalogue that translates them
where a person reads them (`shared/i18n.py`).
A unit merged into another is replaced by its successor. Each recipient carries every
reason that applies, in that order.

An incident (`choose_incident_recipients`) reaches, at once: its own unit (and the unit
that reported it), the units bordering it, its partners in every agreement in force, the
units within the radius of its coordinates, the units it fled towards, and the units
lying in its direction of flight (a bearing) within `pursuit_km`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from services.notifier.directory import Directory
from shared.events import HitFound, IncidentReported, Recipient, SharingScope
from shared.i18n import N_

SEEN_HERE = N_("subject seen on this unit's territory")
LISTED_HERE = N_("this unit listed the subject")
REPORTED_HERE = N_("this unit reported the sighting")
INCIDENT_HERE = N_("incident on this unit's territory")
INCIDENT_REPORTED_HERE = N_("this unit reported the incident")


def agreement_reason(seen_unit: str, title: str) -> str:
    return N_("coordination agreement with {seen_unit}, where the subject was seen: "
              "{title}").format(seen_unit=seen_unit, title=title)


def adjacency_reason(seen_unit: str) -> str:
    return N_("territory borders {seen_unit}, where the subject was seen").format(
        seen_unit=seen_unit)


def radius_reason(distance_km: float, radius_km: float) -> str:
    return N_("{distance_km:.1f} km from where the subject was seen (radius {radius_km:g} "
              "km)").format(distance_km=distance_km, radius_km=radius_km)


ALL_UNITS_REASON = N_("the listing unit shares this entry with all units")


def choose_recipients(
    hit: HitFound, directory: Directory, *, today: date, radius_km: float
) -> list[Recipient]:
    scope = hit.entry.sharing_scope
    seen = hit.place.unit_code
    reasons, add = _collector(directory)
    add(seen, SEEN_HERE)
    add(hit.entry.owner_unit, LISTED_HERE)
    if hit.reported_by is not None and directory.current(hit.reported_by) not in reasons:
        add(hit.reported_by, REPORTED_HERE)
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


def incident_agreement_reason(unit: str, title: str) -> str:
    return N_("coordination agreement with {unit}, where the incident happened: {title}"
              ).format(unit=unit, title=title)


def incident_adjacency_reason(unit: str) -> str:
    return N_("territory borders {unit}, where the incident happened").format(unit=unit)


def incident_radius_reason(distance_km: float, radius_km: float) -> str:
    return N_("{distance_km:.1f} km from the incident (radius {radius_km:g} km)").format(
        distance_km=distance_km, radius_km=radius_km)


def fled_towards_reason(unit: str) -> str:
    return N_("the suspects fled towards this unit (reported by {unit})").format(unit=unit)


def bearing_reason(bearing: int, distance_km: float) -> str:
    return N_("in the direction of flight (bearing {bearing}°), {distance_km:.1f} km away"
              ).format(bearing=bearing, distance_km=distance_km)


def choose_incident_recipients(
    incident: IncidentReported, directory: Directory, *, today: date, radius_km: float,
    pursuit_km: float, fled_towards: tuple[str, ...] = (), fled_bearing: int | None = None,
) -> list[Recipient]:
    """The units an incident concerns, each with why. `fled_towards` and `fled_bearing`
    default to the incident's own (an update passes its new ones)."""
    where = incident.place.unit_code
    reasons, add = _collector(directory)
    add(where, INCIDENT_HERE)
    if incident.producer_unit and directory.current(incident.producer_unit) not in reasons:
        add(incident.producer_unit, INCIDENT_REPORTED_HERE)
    for partner, title in directory.partners(where, None, today):
        add(partner, incident_agreement_reason(where, title))
    for neighbour in directory.adjacent(where):
        add(neighbour, incident_adjacency_reason(where))
    point = ((incident.place.lat, incident.place.lon) if incident.place.lat is not None
             else directory.position(where))
    if point is not None and incident.place.lat is not None and radius_km > 0:
        for code, distance in directory.within(point[0], point[1], radius_km):
            if code != where:
                add(code, incident_radius_reason(distance, radius_km))
    for code in fled_towards or incident.fled_towards:
        add(code, fled_towards_reason(incident.producer_unit or where))
    bearing = fled_bearing if fled_bearing is not None else incident.fled_bearing
    if bearing is not None and point is not None and pursuit_km > 0:
        for code, distance, _ in directory.towards(point[0], point[1], bearing, pursuit_km):
            add(code, bearing_reason(bearing, distance))
    return _recipients(reasons)


def _collector(directory: Directory) -> tuple[dict[str, list[str]], Callable[[str, str], None]]:
    """Reasons by recipient, and how to add one: a merged unit's reasons go to its
    successor (saying so), each reason once."""
    reasons: dict[str, list[str]] = {}

    def add(code: str, why: str) -> None:
        current = directory.current(code)
        if current != code:
            why = f"{why} (as successor of {code})"
        reasons.setdefault(current, [])
        if why not in reasons[current]:
            reasons[current].append(why)

    return reasons, add


def _recipients(reasons: dict[str, list[str]]) -> list[Recipient]:
    return [Recipient(unit_code=code, reasons=tuple(why)) for code, why in reasons.items()]
