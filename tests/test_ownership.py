"""Each service owns its tables: no service's code names another service's table.

What a service needs of another's data it reads through that service's documented
read-only views (`ingest_*`, `notifier_*`, ...) or receives as an event. The platform's
own tables (`shared/migrations`: the unit directory and API keys) are everyone's.
"""

import re
from pathlib import Path

from shared.db import SCHEMA, discover_migrations, migrations_folder

ROOT = Path(__file__).resolve().parent.parent
SQL_USE = r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+{}\b"


def tables_of(package: str) -> set[str]:
    sql = "\n".join(m.sql for m in discover_migrations(migrations_folder(package)))
    return set(re.findall(r"CREATE TABLE (\w+)", sql))


def test_no_service_reads_or_writes_another_services_tables():
    owned = {component: tables_of(package) for component, package in SCHEMA
             if component != "shared"}
    assert owned["ingest"] and owned["notifier"]
    trespasses = []
    for component in owned:
        others = set().union(*(t for c, t in owned.items() if c != component))
        for path in (ROOT / "services" / component).rglob("*.py"):
            text = path.read_text()
            for table in others:
                if re.search(SQL_USE.format(table), text, re.IGNORECASE):
                    trespasses.append(f"{path.relative_to(ROOT)} uses {table}")
    assert trespasses == []


def test_the_command_line_calls_the_services_functions_instead_of_writing_their_tables():
    service_tables = set().union(*(tables_of(package) for component, package in SCHEMA
                                   if component != "shared"))
    found = []
    for path in (ROOT / "giapranh").rglob("*.py"):
        text = path.read_text()
        found += [f"{path.name} uses {table}" for table in service_tables
                  if re.search(SQL_USE.format(table), text, re.IGNORECASE)]
    assert found == []
