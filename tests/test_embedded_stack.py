"""The embedded stack our code starts: data survives restarts, taken ports fail clearly."""

import asyncpg
import pytest

from giapranh.embedded import EmbeddedBroker, EmbeddedDatabase, EmbeddedStackError


async def test_database_keeps_its_data_across_a_restart(tmp_path):
    first = EmbeddedDatabase(tmp_path / "pgdata")
    first.start()
    try:
        dsn = await first.create_database("giapranh")
        conn = await asyncpg.connect(dsn)
        await conn.execute("CREATE TABLE kept (v text); INSERT INTO kept VALUES ('still here')")
        await conn.close()
    finally:
        first.stop()

    second = EmbeddedDatabase(tmp_path / "pgdata")
    second.start()
    try:
        conn = await asyncpg.connect(second.dsn("giapranh"))
        assert await conn.fetchval("SELECT v FROM kept") == "still here"
        await conn.close()
    finally:
        second.stop()


def test_a_second_broker_on_a_taken_port_says_so(broker, tmp_path):
    with pytest.raises(EmbeddedStackError, match=f"port {broker.port} .* already in use"):
        EmbeddedBroker(broker.port, tmp_path / "b.log").start()
