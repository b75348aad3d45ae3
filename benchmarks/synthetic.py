"""Synthetic Vietnamese watchlists and report mixes for the benchmarks.

Name statistics: Nguyễn ~38 %, a few hundred given names, birth years 1950-2009, CCCD/CMND
ids, plates. Imported by `matcher.py` and `stream_matcher.py` (run as scripts, so this
folder is on `sys.path`).
"""

from __future__ import annotations

import random

from rich.console import Console
from rich.progress import track

from services.matcher.normalize import fold_name
from shared.events import Subject, WatchlistEntry

console = Console(stderr=True)

SURNAMES = [("Nguyễn", 38), ("Trần", 11), ("Lê", 9.5), ("Phạm", 7), ("Hoàng", 3), ("Huỳnh", 2),
            ("Phan", 4.5), ("Vũ", 2), ("Võ", 2), ("Đặng", 2), ("Bùi", 2), ("Đỗ", 1.4),
            ("Hồ", 1.3), ("Ngô", 1.3), ("Dương", 1), ("Lý", 0.5), ("Đào", 0.5), ("Đoàn", 0.5),
            ("Trương", 0.5), ("Lâm", 0.4), ("Mai", 0.4), ("Trịnh", 0.4), ("Cao", 0.3), ("Tô", 0.2)]
MIDDLES = ["Văn", "Thị", "Hữu", "Đức", "Minh", "Thanh", "Quốc", "Ngọc", "Hoàng", "Công", "Thành",
           "Xuân", "Kim", "Anh", "Bảo", "Gia", "Quang", "Trọng", "Tấn", "Thế", "Hồng", "Mạnh"]
GIVEN = ("An Anh Bảo Bình Cường Chi Dũng Duy Dương Đạt Định Đông Đức Giang Hà Hải Hạnh Hào "
         "Hậu Hiền Hiếu Hòa Hoàng Hùng Hưng Hương Huy Huyền Khánh Khoa Kiên Lâm Lan Linh Long "
         "Lộc Lợi Luân Mai Mạnh Minh My Nam Nga Ngân Nghĩa Ngọc Nhân Nhật Nhi Nhung Phát "
         "Phong Phú Phúc Phước Phương Quân Quang Quý Quyên Sang Sơn Tài Tâm Tân Thái Thành "
         "Thanh Thảo Thắng Thịnh Thơ Thu Thủy Tiến Tín Toàn Trang Trí Trinh Trung Trường Tú "
         "Tuấn Tùng Tuyết Uyên Vân Vinh Vũ Vy Xuân Yến Ánh Bích Cẩm Diễm Đào Giao Hằng Hiệp "
         "Hoa Khang Kha Khải Lực Lượng Nhựt Oanh Quỳnh Sáng Tâm Thiện Thoa Thông Toản Trâm "
         "Triều Vĩnh Vương Hậu Khôi Nguyên Đăng Tường Kiệt").split()
ALIASES = ["Hai", "Ba", "Tư", "Năm", "Sáu", "Bảy", "Tám", "Chín", "Mười", "Út", "Tèo", "Tí", "Cu"]


def synthetic_watchlist(n: int, rng: random.Random) -> list[WatchlistEntry]:
    names, weights = zip(*SURNAMES, strict=True)
    entries = []
    for i in track(range(n), description="generating entries", console=console):
        year = rng.randint(1950, 2009)
        category = rng.choices(("wanted_person", "managed_person", "missing_person",
                                "stolen_vehicle"), (50, 26, 9, 15))[0]
        plates = ()
        if category == "stolen_vehicle" or rng.random() < 0.3:
            plates = (f"{rng.randint(11, 99)}{rng.choice('ABCDEFGHKLMNPSTUVXYZ')}"
                      f"{rng.randint(1, 9)}-{rng.randint(0, 999):03d}.{rng.randint(0, 99):02d}",)
        if category == "stolen_vehicle" and rng.random() < 0.6:
            entries.append(WatchlistEntry(entry_id=f"W{i:07d}", owner_unit="CA-1",
                                          category=category, plates=plates))
            continue
        middle = " ".join(rng.sample(MIDDLES, rng.choice((1, 1, 1, 2))))
        name = f"{rng.choices(names, weights)[0]} {middle} {rng.choice(GIVEN)}"
        national_id = None
        if rng.random() < 0.75:
            national_id = (f"0{rng.randint(1, 96):02d}{0 if year < 2000 else 2}{year % 100:02d}"
                           f"{rng.randint(0, 999999):06d}")
        entries.append(WatchlistEntry(
            entry_id=f"W{i:07d}", owner_unit="CA-1", category=category, full_name=name,
            aliases=(rng.choice(ALIASES),) if rng.random() < 0.3 else (),
            birth_year=year, national_id=national_id, plates=plates))
    return entries


def query_mix(entries: list[WatchlistEntry], n: int, rng: random.Random) -> list[Subject]:
    """70 % reports of nobody listed, 30 % listed subjects with realistic variations."""
    names, weights = zip(*SURNAMES, strict=True)
    people = [e for e in entries if e.full_name]
    plated = [e for e in entries if e.plates]
    queries = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.35:  # a plate read that matches nothing
            queries.append(Subject.model_construct(plate=f"{rng.randint(11, 99)}"
                           f"{rng.choice('ABCDEFGHKLMNPSTUVXYZ')}{rng.randint(10000, 99999)}"))
        elif roll < 0.70:  # a person checked who is not listed
            queries.append(Subject.model_construct(
                name=f"{rng.choices(names, weights)[0]} {rng.choice(MIDDLES)} {rng.choice(GIVEN)}",
                birth_year=rng.randint(1950, 2009),
                national_id=f"0{rng.randint(1, 96):02d}0{rng.randint(50, 99)}{rng.randint(0, 999999):06d}"))
        elif roll < 0.80:
            entry = rng.choice(plated)
            queries.append(Subject.model_construct(plate=entry.plates[0].replace("-", "")))
        else:
            entry = rng.choice(people)
            name = fold_name(entry.full_name).upper() if rng.random() < 0.5 else entry.full_name
            queries.append(Subject.model_construct(name=name, birth_year=entry.birth_year
                                                   + rng.choice((0, 0, 0, 1, -1))))
    return queries
