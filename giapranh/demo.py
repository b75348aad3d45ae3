"""Demo data for `giapranh dev`: the real border areas of the source reports.

Units are named from the 2025 administrative directory (`vietnam-provinces`): commune and
ward police `CA-<ward code>`, province police `CAT-<province code>`. Coordinates are
approximate ward centres. Seeding is idempotent: run it again and nothing changes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import asyncpg
from vietnam_provinces import Province, Ward

from services.ingest.store import IngestStore
from shared.auth import hash_api_key, issue_api_key
from shared.events import Category, Caution, RequiredAction, SharingScope, WatchlistEntry
from shared.settings import CommonSettings


@dataclass(frozen=True)
class DemoUnit:
    code: str
    name: str
    kind: str
    parent: str | None
    province_code: int | None = None
    ward_code: int | None = None
    lat: float | None = None
    lon: float | None = None


def _police_of_ward(ward_code: int, lat: float, lon: float) -> DemoUnit:
    ward = Ward.from_code(ward_code)
    return DemoUnit(
        code=f"CA-{ward_code}",
        name=f"Công an {ward.name[0].lower()}{ward.name[1:]}",
        kind="commune_police",
        parent=f"CAT-{int(ward.province_code)}",
        province_code=int(ward.province_code),
        ward_code=ward_code,
        lat=lat,
        lon=lon,
    )


def _province_police(province_code: int) -> DemoUnit:
    province = Province.from_code(province_code)
    name = province.name if province.name.startswith("Thành phố") else f"tỉnh {province.name}"
    name = name.replace("Thành phố", "thành phố")
    return DemoUnit(f"CAT-{province_code}", f"Công an {name}", "province_police", None,
                    province_code=province_code)


# (ward code, approximate lat, lon)
_WARDS = {
    # Long Xuyên (An Giang) <-> Cần Thơ, 2025
    30307: (10.386, 105.435), 30301: (10.352, 105.462), 30682: (10.290, 105.265),
    31212: (10.270, 105.535), 31237: (10.190, 105.420), 31207: (10.240, 105.600),
    # Phú Yên (now Đắk Lắk) <-> Bình Định (now Gia Lai), 2017
    22051: (13.455, 109.222), 21553: (13.805, 109.205),
    # Ho Chi Minh City <-> Bình Dương (now both Ho Chi Minh City), 2020
    26767: (10.860, 106.705), 26773: (10.875, 106.655), 25966: (10.905, 106.700),
    25978: (10.920, 106.712),
    # Cần Thơ model commune police, 2022
    31299: (9.995, 105.670), 31135: (10.030, 105.780),
}


def demo_units() -> list[DemoUnit]:
    provinces = sorted({int(Ward.from_code(code).province_code) for code in _WARDS})
    units = [_province_police(code) for code in provinces]
    units += [_police_of_ward(code, *where) for code, where in _WARDS.items()]
    units += [
        DemoUnit("BP-MYTHOI", "Đồn Biên phòng Cảng Mỹ Thới", "border_guard", None,
                 province_code=91, lat=10.345, lon=105.470),
        DemoUnit("QS-30307", "Ban Chỉ huy Quân sự phường Long Xuyên", "military", None,
                 province_code=91, ward_code=30307, lat=10.386, lon=105.435),
    ]
    return units


@dataclass(frozen=True)
class DemoAgreement:
    title: str
    parties: tuple[str, ...]
    valid_from: date


DEMO_AGREEMENTS = (
    DemoAgreement(
        "Quy chế phối hợp địa bàn giáp ranh Long Xuyên – Cần Thơ (2025)",
        ("CA-30307", "CA-30301", "CA-30682", "CA-31212", "CA-31237", "CA-31207"),
        date(2025, 3, 28),
    ),
    DemoAgreement(
        "Quy chế phối hợp Sông Cầu – Quy Nhơn (2017)", ("CA-22051", "CA-21553"), date(2017, 1, 1)
    ),
    DemoAgreement(
        "Kế hoạch phối hợp Quận 12 – Thuận An (2020)",
        ("CA-26767", "CA-26773", "CA-25966", "CA-25978"),
        date(2020, 12, 4),
    ),
    DemoAgreement(
        "Phối hợp ba lực lượng Long Xuyên (2023)", ("CA-30307", "QS-30307", "BP-MYTHOI"),
        date(2023, 2, 14),
    ),
    DemoAgreement("Phối hợp Phong Điền – Ninh Kiều (2022)", ("CA-31299", "CA-31135"),
                  date(2022, 9, 22)),
)

# Territories that touch, from the border areas of the reports (the real hot spots).
DEMO_ADJACENCY = (
    ("CA-30307", "CA-30301", "Long Xuyên – Mỹ Thới"),
    ("CA-30307", "CA-30682", "Long Xuyên – Thoại Sơn (Phú Thuận)"),
    ("CA-30307", "CA-31212", "Mỹ Thạnh – Thới Thuận: An Giang ↔ Cần Thơ"),
    ("CA-30307", "CA-31237", "Mỹ Thạnh – Vĩnh Trinh: An Giang ↔ Cần Thơ"),
    ("CA-31212", "CA-31207", "Thốt Nốt – Thuận Hưng"),
    ("CA-30301", "BP-MYTHOI", "Cảng Mỹ Thới"),
    ("CA-22051", "CA-21553", "Sông Cầu – Quy Nhơn: Phú Yên (Đắk Lắk) ↔ Bình Định (Gia Lai)"),
    ("CA-26767", "CA-25978", "An Phú Đông – Vĩnh Phú (Thuận An)"),
    ("CA-26773", "CA-25966", "Thạnh Lộc (Thới An) – Lái Thiêu"),
    ("CA-31299", "CA-31135", "Phong Điền – Ninh Kiều"),
)

DEMO_ENTRIES = (
    WatchlistEntry(
        entry_id="CA-30307-TN-2026-0042", owner_unit="CA-30307",
        category=Category.WANTED_PERSON, full_name="Nguyễn Văn Hùng", aliases=("Hùng Đen",),
        gender="male", birth_year=1991, national_id="089091004217", plates=("67B1-23456",),
        description="Truy nã về tội cố ý gây thương tích; thường lui tới bến phà Thốt Nốt.",
        action=RequiredAction.ARREST, cautions=(Caution.VIOLENT,),
    ),
    WatchlistEntry(
        entry_id="CA-31212-XM-2026-0007", owner_unit="CA-31212",
        category=Category.STOLEN_VEHICLE, plates=("65G1-45678",),
        description="Xe Honda Wave màu đỏ bị trộm tại chợ Thốt Nốt.",
    ),
    WatchlistEntry(
        entry_id="CA-21553-MT-2026-0003", owner_unit="CA-21553",
        category=Category.MISSING_PERSON, full_name="Trần Thị Thu Thủy", gender="female",
        birth_date=date(2009, 5, 14), national_id="052309001122",
        description="Mất tích từ 12/11, có thể đi về hướng Sông Cầu.",
    ),
    WatchlistEntry(
        entry_id="CA-25966-QL-2026-0019", owner_unit="CA-25966",
        category=Category.MANAGED_PERSON, full_name="Lê Minh Tuấn", aliases=("Tuấn Sáu",),
        gender="male", birth_year=1988, national_id="074088004455",
        description="Đối tượng quản lý (tín dụng đen).", sharing_scope=SharingScope.AGREEMENT_PARTNERS,
    ),
)

EXAMPLE_SIGHTING = {
    "occurred_at": "2026-11-20T21:14:00+07:00",
    "subject": {"name": "NGUYEN VAN HUNG", "birth_year": 1991, "national_id": "089 091 004 217"},
    "place": {"unit_code": "CA-31212", "address": "bến phà Thốt Nốt"},
}
EXAMPLE_SIGHTING_UNIT = "CA-31212"


async def seed_directory(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        for unit in demo_units():
            await conn.execute(
                """INSERT INTO units (code, name, kind, parent_code, province_code, ward_code,
                                      lat, lon)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                   ON CONFLICT (code) DO NOTHING""",
                unit.code, unit.name, unit.kind, unit.parent, unit.province_code,
                unit.ward_code, unit.lat, unit.lon,
            )
        for agreement in DEMO_AGREEMENTS:
            agreement_id = await conn.fetchval(
                """INSERT INTO agreements (title, valid_from) VALUES ($1, $2)
                   ON CONFLICT (title) DO UPDATE SET title = EXCLUDED.title
                   RETURNING id""",
                agreement.title, agreement.valid_from,
            )
            await conn.executemany(
                """INSERT INTO agreement_parties (agreement_id, unit_code) VALUES ($1, $2)
                   ON CONFLICT DO NOTHING""",
                [(agreement_id, code) for code in agreement.parties],
            )
        await conn.executemany(
            """INSERT INTO adjacency (unit_a, unit_b, note) VALUES ($1, $2, $3)
               ON CONFLICT DO NOTHING""",
            [(*sorted((a, b)), note) for a, b, note in DEMO_ADJACENCY],
        )


async def demo_keys(
    pool: asyncpg.Pool, settings: CommonSettings, keys_file: Path
) -> dict[str, str]:
    """One API key per demo unit, kept in `keys_file` so restarts print the same keys."""
    pepper = settings.api_key_pepper.get_secret_value()
    keys: dict[str, str] = {}
    if keys_file.exists():
        keys = json.loads(keys_file.read_text())
    for unit in demo_units():
        key = keys.get(unit.code)
        valid = key is not None and await pool.fetchval(
            "SELECT 1 FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
            hash_api_key(key, pepper),
        )
        if not valid:
            keys[unit.code] = await issue_api_key(pool, unit.code, pepper, label="demo")
    keys_file.parent.mkdir(parents=True, exist_ok=True)
    keys_file.write_text(json.dumps(keys, indent=2, ensure_ascii=False))
    keys_file.chmod(0o600)
    return keys


async def seed_demo(pool: asyncpg.Pool, settings: CommonSettings, keys_file: Path) -> dict[str, str]:
    """Seed units, agreements and watchlist entries; return each unit's API key."""
    async with pool.acquire() as conn:
        await seed_directory(conn)
    store = IngestStore(pool, settings)
    for entry in DEMO_ENTRIES:
        await store.upsert_watchlist_entry(entry, unit_code=entry.owner_unit)
    return await demo_keys(pool, settings, keys_file)
