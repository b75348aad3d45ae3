"""Watchlist sync cost: a 100,000-entry first sync and a 1,000-change delta.

    python benchmarks/sync.py [--entries 100000] [--changes 1000] [--page 5000]

Starts its own embedded stack (PostgreSQL, Tansu) and the ingest service as a real
uvicorn process, writes `--entries` watchlist entries shared with every unit (SQL), then
times `GET /v1/watchlist/sync` as a border post would call it: the first sync (a snapshot,
page after page) and, after `--changes` entries changed or were cancelled, the delta. It
prints the time and the bytes on the wire (gzip, as a post asks) of each; then the same two
syncs as a border post's node does them (`giapranh post`: each page written to its SQLite
replica with its hash and loaded into the matching engine).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import httpx
from stack import console, ingest_process, prepare, run_on_embedded_stack, wait_up

from giapranh.post import PostNode
from shared.events import Category, SharingScope, WatchlistEntry


async def sync_all(client: httpx.AsyncClient, since: str | None, page: int
                   ) -> tuple[int, int, int, str]:
    """(changes, bytes, pages, cursor) of syncing from `since` until nothing more waits."""
    count = size = pages = 0
    cursor = since
    while True:
        params = {"limit": page, **({"since": cursor} if cursor else {})}
        response = await client.get("/v1/watchlist/sync", params=params)
        response.raise_for_status()
        body = response.json()
        count += len(body["changes"])
        size += response.num_bytes_downloaded  # (on the wire: gzip)
        pages += 1
        cursor = body["cursor"]
        if not body["more"]:
            return count, size, pages, cursor


async def benchmark(args: argparse.Namespace, dsn: str, bootstrap: str, tmp: Path) -> None:
    conn, keys = await prepare(dsn, bootstrap, tmp, partitions=2)
    with console.status(f"writing {args.entries:,} entries"):
        await conn.execute(
            """INSERT INTO watchlist_entries (entry_id, owner_unit, category, version, entry)
               SELECT 'B-' || n, 'CA-30307', 'wanted_person', 1, $2::jsonb || jsonb_build_object(
                          'entry_id', 'B-' || n, 'full_name', 'Nguyễn Văn ' || n,
                          'birth_year', 1950 + n % 60,
                          'national_id', lpad((89000000000 + n)::text, 12, '0'))
                 FROM generate_series(1, $1) AS n""", args.entries,
            # Every field, as the API stores an entry (its JSON as `WatchlistEntry` dumps it).
            WatchlistEntry(entry_id="B-0", owner_unit="CA-30307", version=1,
                           category=Category.WANTED_PERSON, full_name="Nguyễn Văn A",
                           birth_year=1990, national_id="089000000001",
                           sharing_scope=SharingScope.ALL_UNITS,
                           description="Truy nã theo quyết định số 12/QĐ-CSHS.",
                           ).model_dump_json())

    try:
        with ingest_process(dsn, bootstrap, 2) as port:
            headers = {"Authorization": f"Bearer {keys['CA-22051']}"}  # a post far away
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                         headers=headers, timeout=120) as client:
                await wait_up(client)
                started = time.perf_counter()
                first, first_bytes, first_pages, cursor = await sync_all(client, None, args.page)
                first_seconds = time.perf_counter() - started
                node = PostNode(f"http://127.0.0.1:{port}", keys["CA-22051"], tmp / "post",
                                page=args.page)
                with console.status("the post node's first sync"):
                    started = time.perf_counter()
                    await node.sync()
                    node_first_seconds = time.perf_counter() - started

                with console.status(f"changing {args.changes:,} entries"):
                    await conn.execute(
                        """UPDATE watchlist_entries
                              SET entry = jsonb_set(entry, '{full_name}', to_jsonb('Lê Văn ' || entry_id)),
                                  version = version + 1
                            WHERE entry_id IN (SELECT 'B-' || (n * 37 % $1 + 1)
                                                 FROM generate_series(1, $2 / 2) AS n)""",
                        args.entries, args.changes)
                    await conn.execute(
                        """UPDATE watchlist_entries SET cancelled_at = now(), cancel_reason = 'bench'
                            WHERE entry_id IN (SELECT 'B-' || (n * 53 % $1 + 1)
                                                 FROM generate_series(1, $2 - $2 / 2) AS n)""",
                        args.entries, args.changes)
                started = time.perf_counter()
                delta, delta_bytes, delta_pages, _ = await sync_all(client, cursor, args.page)
                delta_seconds = time.perf_counter() - started
                started = time.perf_counter()
                node_delta = await node.sync()
                node_delta_seconds = time.perf_counter() - started
                node_entries = len(node.engine)
                node.close()
    finally:
        await conn.close()
    print(f"first sync : {first:>7,} entries in {first_pages} pages, {first_seconds:6.2f} s, "
          f"{first_bytes / 1e6:7.1f} MB on the wire ({first_bytes / max(1, first):.0f} bytes per entry)")
    print(f"delta sync : {delta:>7,} changes in {delta_pages} pages, {delta_seconds:6.3f} s, "
          f"{delta_bytes / 1e3:7.1f} kB on the wire")
    print(f"post node  : first sync {node_first_seconds:6.2f} s, delta of {node_delta:,} changes "
          f"{node_delta_seconds:6.3f} s (replica and engine: {node_entries:,} entries)")
    print(json.dumps({"first_seconds": round(first_seconds, 2), "first_bytes": first_bytes,
                      "delta_seconds": round(delta_seconds, 3), "delta_bytes": delta_bytes,
                      "node_first_seconds": round(node_first_seconds, 2),
                      "node_delta_seconds": round(node_delta_seconds, 3)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--changes", type=int, default=1_000)
    parser.add_argument("--page", type=int, default=5_000)
    run_on_embedded_stack(benchmark, parser.parse_args())

if __name__ == "__main__":
    main()
