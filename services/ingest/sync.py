"""Watchlist sync (`GET /v1/watchlist/sync`): the entries a unit may see, changed since a
cursor, for replicas that match locally (a border post's node keeps checking while its
link is down).

A first call (no cursor) returns a snapshot: every active entry the unit may see, in
pages. Later calls return what changed since: `upsert` for an entry the unit may see
(new, changed), `remove` for one it could see and no longer may (cancelled, or its sharing
scope narrowed); entries it never could see are never mentioned, not even by id. Changes
come in the order of their transactions (then of their numbers), and a change is handed
out only once every older transaction has ended, so one that commits late is not skipped
(a change's number alone would not do: a transaction can number a change before an older
transaction numbers its own). The cursor holds the last change handed out, and the
directory's version: when agreements, borders or units changed, which entries a unit may
see can change without any entry changing, so the answer is a new snapshot (`reset:
true`: the replica is rebuilt from its pages).

It also names the database's history: its system identifier and WAL timeline. A database
restored to a point in time, or a standby promoted, starts a new timeline; one restored
into a new cluster has another identifier. Either way the changes a replica took from
the history left behind are not this one's, and transaction ids alone cannot tell (the
restored database goes on numbering past the replica's cursor), so the answer is a new
snapshot. Cursors of earlier versions of sync (`v1.`, `v2.`) are answered with a new
snapshot too.
"""

from __future__ import annotations

import gzip
import json
import re
from datetime import datetime
from typing import Annotated, Literal

import asyncpg
from fastapi import APIRouter, Header, Query, Response
from pydantic import BaseModel, Field

from services.ingest.deps import CurrentUnit, Database
from shared.db import HISTORY_COLUMNS, history_of
from shared.errors import Unprocessable
from shared.events import WatchlistEntry, utcnow
from shared.http import KeyFirstRoute, error_responses

router = APIRouter(prefix="/v1", responses=error_responses(401, 429),
                   route_class=KeyFirstRoute)

CURSOR = re.compile(r"^v3\.(\d{1,19})\.(\d{1,18})\.(\d{1,18})\.((\d{1,20})\.\d{1,10})$", re.ASCII)
"""v3.<transaction id>.<change number>.<directory version>.<history> (`history_of`)."""
OLD_CURSOR = re.compile(r"^v1\.\d{1,18}\.\d{1,18}$|^v2\.\d{1,19}\.\d{1,18}\.\d{1,18}$",
                        re.ASCII)
"""A cursor of the first sync (ordered by number alone), or of the second (which did not
name the database's history): answered with a new snapshot."""


class Change(BaseModel):
    entry_id: str
    change: Literal["upsert", "remove"]
    entry: WatchlistEntry | None = Field(description="The entry as it is now (upsert only).")


class SyncPage(BaseModel):
    changes: list[Change]
    cursor: str = Field(description="Pass it as `since` for the next page or the next sync.")
    more: bool = Field(description="True while further changes wait: ask again at once.")
    reset: bool = Field(description="This page starts a new snapshot: rebuild the replica "
                        "from it and the pages that follow (until `more` is false).")
    as_of: datetime = Field(description="The list is complete up to this time when `more` "
                            "is false.")


_ROWS = """
    SELECT entry_id, change_xid::text AS xid, change_seq, entry::text AS entry,
           cancelled_at IS NULL AS active,
           owner_unit, entry ->> 'sharing_scope' AS scope, past_kinds, category
      FROM watchlist_entries
     WHERE (change_xid, change_seq) > ($1::text::xid8, $2::bigint)
       AND change_xid < pg_snapshot_xmin(pg_current_snapshot())
     ORDER BY change_xid, change_seq LIMIT $3"""
"""The next changes in order, those of transactions still running (and all after them)
held back. Which of them the unit may see is asked once per (owner, scope, category)."""

_VISIBLE = """
    SELECT watchlist_visible(owner, scope, category, $1) AS visible
      FROM unnest($2::text[], $3::text[], $4::text[]) WITH ORDINALITY
           AS t (owner, scope, category, n)
     ORDER BY n"""


def _parse(cursor: str | None) -> tuple[int, int, int, str] | None:
    """(transaction id, change number, directory version, database history) of a cursor;
    None for a snapshot (no cursor, or one of an earlier version of sync)."""
    if cursor is None or OLD_CURSOR.match(cursor):
        return None
    found = CURSOR.match(cursor)
    if found is None or int(found.group(1)) >= 2**64 or int(found.group(5)) >= 2**64:
        raise Unprocessable("since is a cursor from an earlier answer "
                            "(v3.<n>.<n>.<n>.<n>.<n>)", field="since")
    return int(found.group(1)), int(found.group(2)), int(found.group(3)), found.group(4)


async def sync_page(conn: asyncpg.Connection | asyncpg.Pool, unit_code: str,
                    since: str | None, limit: int) -> str:
    """One page of the changes `unit_code` may see after `since`, as `SyncPage` JSON."""
    position = _parse(since)
    directory, xmax, system_identifier, wal_file = await conn.fetchrow(
        "SELECT CASE WHEN is_called THEN last_value ELSE 0 END,"
        "       pg_snapshot_xmax(pg_current_snapshot())::text,"
        f"      {HISTORY_COLUMNS} FROM directory_version")
    history = history_of(system_identifier, wal_file)
    # A cursor of another history (a restore to a point in time, a promoted standby, a
    # new cluster), or past every transaction this database has begun (restored from a
    # backup or replaced): its changes are not this one's, so the replica starts again
    # from a snapshot rather than skip what this one holds or keep what it does not.
    reset = (position is None or position[2] != directory or position[0] >= int(xmax)
             or position[3] != history)
    # A snapshot's first page lists only what the unit may see now; its later pages, like
    # any delta, also say `remove` for entries it could see before (harmless to a replica
    # being built: it has none of them).
    after = (0, 0) if reset else position[:2]  # type: ignore[index]
    rows = await conn.fetch(_ROWS, str(after[0]), after[1], limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    # Every (scope, category) an entry has had: a unit that could see it under any of them
    # may hold it, and hears `remove` when it may no longer.
    past = [[tuple(kind.split(" ", 1)) for kind in row["past_kinds"]] for row in rows]
    kinds = sorted({(row["owner_unit"], scope, category) for row, earlier in zip(
        rows, past, strict=True) for scope, category in
        [(row["scope"], row["category"]), *earlier] if scope})
    shown = await conn.fetch(_VISIBLE, unit_code, [k[0] for k in kinds], [k[1] for k in kinds],
                             [k[2] for k in kinds]) if kinds else []
    visible = {kind: row["visible"] for kind, row in zip(kinds, shown, strict=True)}
    chosen = []
    for row, earlier in zip(rows, past, strict=True):
        now = visible.get((row["owner_unit"], row["scope"], row["category"]), False)
        before = any(visible.get((row["owner_unit"], scope, category), False)
                     for scope, category in earlier)
        if now and row["active"]:
            chosen.append((row, True))
        elif (now or before) and not reset:  # (a snapshot's first page: only what is seen)
            chosen.append((row, False))
    last = (int(rows[-1]["xid"]), rows[-1]["change_seq"]) if rows else after
    # The entries as stored (validated when they were written): copied into the answer
    # as they are, not decoded and encoded again.
    parts = [
        f'{{"entry_id":{json.dumps(row["entry_id"])},"change":"upsert","entry":{row["entry"]}}}'
        if upsert else
        f'{{"entry_id":{json.dumps(row["entry_id"])},"change":"remove","entry":null}}'
        for row, upsert in chosen]
    cursor = f"v3.{last[0]}.{last[1]}.{directory}.{history}"
    head = SyncPage(changes=[], cursor=cursor, more=more,
                    reset=reset, as_of=utcnow()).model_dump_json()
    return head.replace('"changes":[]', '"changes":[' + ",".join(parts) + "]", 1)


@router.get("/watchlist/sync", response_model=SyncPage, responses=error_responses(422))
async def sync_watchlist(
    unit: CurrentUnit, db: Database,
    since: Annotated[str | None, Query(max_length=100, description="The cursor of the last "
                                       "answer; none for a snapshot.")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    accept_encoding: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Response:
    """The watchlist entries the calling unit may see (by their sharing scopes), changed
    since `since`, in bounded pages in a stable order; a snapshot without `since`. For
    replicas that match locally (`giapranh post`). Every role may sync."""
    body = (await sync_page(db, unit.unit_code, since, limit)).encode()
    if "gzip" in (accept_encoding or "").lower() and len(body) > 1000:
        # Posts sync over poor links: a page of entries compresses many times over.
        return Response(gzip.compress(body, compresslevel=5), media_type="application/json",
                        headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
    return Response(body, media_type="application/json", headers={"Vary": "Accept-Encoding"})
