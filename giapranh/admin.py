"""`giapranh units ...` and `giapranh keys ...`: directory and credentials administration.

They talk to PostgreSQL directly (GIAPRANH_DATABASE_URL or --database-url), so the first
admin key of a new deployment can be issued before any API key exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from shared import audit
from shared.audit import Actor
from shared.auth import ROLES, issue_api_key_row, list_api_keys, revoke_api_key, rotate_api_key
from shared.directory import (
    AgreementIn,
    UnitIn,
    add_adjacency,
    create_agreement,
    create_unit,
    list_adjacency,
    list_agreements,
    list_units,
    merge_unit,
    remove_adjacency,
    rename_unit,
    reparent_unit,
    unit_history,
)
from shared.errors import GiapranhError
from shared.settings import CommonSettings

T = TypeVar("T")
units_app = typer.Typer(help="List, add, rename, move and merge units of the directory.",
                        no_args_is_help=True)
keys_app = typer.Typer(help="Issue, list and revoke units' API keys.", no_args_is_help=True)
adjacency_app = typer.Typer(help="Which units' territories touch.", no_args_is_help=True)
agreements_app = typer.Typer(help="Coordination agreements between units.", no_args_is_help=True)
webhooks_app = typer.Typer(help="Units' webhook endpoints for alerts.", no_args_is_help=True)
console = Console()

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", envvar="GIAPRANH_DATABASE_URL",
    help="PostgreSQL DSN (giapranh dev prints it).")]


def _run(database_url: str | None, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
    settings = CommonSettings(**({"database_url": database_url} if database_url else {}))

    async def go() -> T:
        try:
            conn = await asyncpg.connect(settings.database_url)
        except (OSError, asyncpg.PostgresError) as exc:
            raise typer.BadParameter(f"cannot connect to {settings.database_url}: {exc}",
                                     param_hint="--database-url") from None
        try:
            return await work(conn)
        finally:
            await conn.close()

    try:
        return asyncio.run(go())
    except GiapranhError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


def _audited(action: str, subject: str | None, work: Callable[[asyncpg.Connection], Awaitable[T]],
             *, unit_code: str | None = None,
             detail: Callable[[T], dict[str, object] | None] | None = None,
             when: Callable[[T], bool] = lambda result: True,
             ) -> Callable[[asyncpg.Connection], Awaitable[T]]:
    """`work` in a transaction that also appends an audit record (by the OS user at the
    CLI), when `when(result)` says something changed."""

    async def run(conn: asyncpg.Connection) -> T:
        async with conn.transaction():
            result = await work(conn)
            if when(result):
                await audit.record(conn, Actor.operator(), action, subject=subject,
                                   unit_code=unit_code,
                                   detail=detail(result) if detail else None)
            return result

    return run


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(1)


def _pepper() -> str:
    return CommonSettings().api_key_pepper.get_secret_value()


@units_app.command("list")
def units_list(database_url: DatabaseUrl = None) -> None:
    """Every unit of the directory."""
    units = _run(database_url, list_units)
    table = Table("code", "name", "kind", "parent", "status")
    for unit in units:
        status = (f"merged into {unit.successor_code} {unit.active_to:%Y-%m-%d}"
                  if unit.active_to else "active")
        table.add_row(unit.code, unit.name, unit.kind, unit.parent_code or "", status)
    console.print(table)


@units_app.command("add")
def units_add(
    code: str, name: str,
    kind: Annotated[str, typer.Option(help="commune_police, province_police, border_guard, "
                                           "military or ministry")] = "commune_police",
    parent: Annotated[str | None, typer.Option(help="Code of the parent unit.")] = None,
    lat: Annotated[float | None, typer.Option(help="Latitude of the unit's area centre.")] = None,
    lon: Annotated[float | None, typer.Option(help="Longitude of the unit's area centre.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Add a unit, e.g. `giapranh units add CA-30292 "Công an phường Bình Đức" --parent CAT-91`."""
    try:
        unit = UnitIn(code=code, name=name, kind=kind, parent_code=parent,  # type: ignore[arg-type]
                      lat=lat, lon=lon)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    created = _run(database_url, _audited("directory.unit.add", code,
                   lambda conn: create_unit(conn, unit), unit_code=code,
                   detail=lambda _: unit.model_dump(mode="json")))
    console.print(f"added unit {created.code} ({created.name})")


@units_app.command("rename")
def units_rename(code: str, name: str, database_url: DatabaseUrl = None) -> None:
    """Rename a unit from now on (alerts raised before keep the old name)."""
    _run(database_url, _audited("directory.unit.rename", code,
                                lambda conn: rename_unit(conn, code, name), unit_code=code,
                                detail=lambda _: {"name": name}))
    console.print(f"{code} is now {name}")


@units_app.command("move")
def units_move(
    code: str,
    parent: Annotated[str | None, typer.Option(help="The new parent; omit for none.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put a unit under another parent unit (escalations follow)."""
    _run(database_url, _audited("directory.unit.move", code,
                                lambda conn: reparent_unit(conn, code, parent), unit_code=code,
                                detail=lambda _: {"parent": parent}))
    console.print(f"{code} is now under {parent or 'no parent'}")


@units_app.command("merge")
def units_merge(
    code: str,
    into: Annotated[str, typer.Option(help="The unit that takes over CODE's territory.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Merge CODE into another unit: CODE ends, its neighbours and alerts go to the other,
    its API keys stop working; its past alerts and history stay."""
    _run(database_url, _audited("directory.unit.merge", code,
                                lambda conn: merge_unit(conn, code, into), unit_code=code,
                                detail=lambda _: {"into": into}))
    console.print(f"{code} merged into {into}")


@units_app.command("history")
def units_history(code: str, database_url: DatabaseUrl = None) -> None:
    """Renames, moves and merges of a unit."""
    changes = _run(database_url, lambda conn: unit_history(conn, code))
    table = Table("when", "unit", "change", "from", "to")
    for change in changes:
        table.add_row(f"{change.changed_at:%Y-%m-%d %H:%M}", change.unit_code, change.change,
                      change.old_value or "", change.new_value or "")
    console.print(table)


@adjacency_app.command("add")
def adjacency_add(a: str, b: str, note: Annotated[str | None, typer.Option()] = None,
                  database_url: DatabaseUrl = None) -> None:
    """Record that the territories of A and B share a border."""
    added = _run(database_url, _audited("directory.adjacency.add", f"{a} {b}",
                                        lambda conn: add_adjacency(conn, a, b, note),
                                        when=bool))
    console.print(f"{a} and {b} are adjacent" + ("" if added else " (known already)"))


@adjacency_app.command("remove")
def adjacency_remove(a: str, b: str, database_url: DatabaseUrl = None) -> None:
    if not _run(database_url, _audited("directory.adjacency.remove", f"{a} {b}",
                                       lambda conn: remove_adjacency(conn, a, b), when=bool)):
        _fail(f"{a} and {b} were not adjacent")
    console.print(f"{a} and {b} are no longer adjacent")


@adjacency_app.command("list")
def adjacency_list(unit: Annotated[str | None, typer.Argument()] = None,
                   database_url: DatabaseUrl = None) -> None:
    """Adjacent pairs, all or those of UNIT."""
    pairs = _run(database_url, lambda conn: list_adjacency(conn, unit))
    table = Table("unit", "unit", "note")
    for pair in pairs:
        table.add_row(pair.unit_a, pair.unit_b, pair.note or "")
    console.print(table)


@agreements_app.command("add")
def agreements_add(
    title: str,
    party: Annotated[list[str], typer.Option("--party", help="A party unit; repeat.")],
    valid_from: Annotated[str, typer.Option(help="YYYY-MM-DD")],
    valid_to: Annotated[str | None, typer.Option(help="YYYY-MM-DD; omit for open-ended.")] = None,
    category: Annotated[list[str] | None, typer.Option(
        help="A shared category; repeat; omit for all.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Record a coordination agreement ("quy chế phối hợp") between two or more units."""
    try:
        agreement = AgreementIn(title=title, parties=tuple(party), valid_from=valid_from,  # type: ignore[arg-type]
                                valid_to=valid_to, categories=tuple(category or ()))  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    created = _run(database_url, _audited(
        "directory.agreement.add", title, lambda conn: create_agreement(conn, agreement),
        detail=lambda _: agreement.model_dump(mode="json")))
    console.print(f"agreement {created.id}: {created.title}")


@agreements_app.command("list")
def agreements_list(database_url: DatabaseUrl = None) -> None:
    agreements = _run(database_url, list_agreements)
    table = Table("id", "title", "parties", "categories", "valid")
    for a in agreements:
        table.add_row(str(a.id), a.title, ", ".join(a.parties),
                      ", ".join(a.categories) or "all",
                      f"{a.valid_from} – {a.valid_to or ''}")
    console.print(table)


@keys_app.command("issue")
def keys_issue(
    unit: str,
    person: Annotated[str | None, typer.Option(
        help="The officer or desk the key is for (default: the unit's duty desk).")] = None,
    role: Annotated[str, typer.Option(
        help="reporter, desk, unit_admin or province_admin.")] = "desk",
    admin: Annotated[bool, typer.Option(
        "--admin", help="Short for --role province_admin (may manage the directory).")] = False,
    label: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
    expires_days: Annotated[float | None, typer.Option(
        "--expires-days", min=0.001, help="The key stops working after this many days.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Issue a new API key for a person of UNIT and print it once (only its hash is
    stored). The first key of a deployment: `giapranh keys issue CAT-91 --person "..."
    --role province_admin`."""
    role = "province_admin" if admin else role
    if role not in ROLES:
        raise typer.BadParameter(f"one of {', '.join(ROLES)}", param_hint="--role")
    expires_at = (datetime.now(UTC) + timedelta(days=expires_days)) if expires_days else None

    async def work(conn: asyncpg.Connection) -> tuple[int, str]:
        if not await conn.fetchval("SELECT 1 FROM units WHERE code = $1 AND active_to IS NULL",
                                   unit):
            raise typer.BadParameter(f"no active unit {unit}", param_hint="UNIT")
        return await issue_api_key_row(conn, unit, _pepper(), role=role, person=person,
                                       label=label, expires_at=expires_at)

    key_id, key = _run(database_url, _audited(
        "key.issue", None, work, unit_code=unit,
        detail=lambda result: {"key": result[0], "person": person, "role": role,
                               "expires_at": expires_at}))
    console.print(f"API key {key_id} for {person or 'the duty desk'} of {unit} ({role}); "
                  "store it now, it is not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(
    unit: Annotated[str | None, typer.Argument(help="Only this unit's keys.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Keys by id and prefix (never the key itself), with their person and last use."""
    keys = _run(database_url, lambda conn: list_api_keys(conn, unit))
    table = Table("id", "unit", "person", "prefix", "role", "label", "created", "last used",
                  "expires", "revoked")

    def when(moment: datetime | None) -> str:
        return f"{moment:%Y-%m-%d %H:%M}" if moment else ""

    for key in keys:
        table.add_row(str(key.id), key.unit_code, key.person_name, key.key_prefix + "…",
                      key.role, key.label or "", when(key.created_at), when(key.last_used_at),
                      when(key.expires_at), when(key.revoked_at))
    Console(width=max(console.width, 180)).print(table)  # wide: not cut when piped


@keys_app.command("rotate")
def keys_rotate(
    key_id: int,
    grace_hours: Annotated[float, typer.Option(
        min=0, max=24 * 30, help="How long the old key keeps working.")] = 24,
    database_url: DatabaseUrl = None,
) -> None:
    """Replace key KEY_ID by a new one for the same person and role; the old one keeps
    working for the grace period. Prints the new key once."""

    async def work(conn: asyncpg.Connection) -> tuple[int, str, datetime] | None:
        return await rotate_api_key(conn, key_id, _pepper(), timedelta(hours=grace_hours))

    rotated = _run(database_url, _audited(
        "key.rotate", str(key_id), work, when=lambda result: result is not None,
        detail=lambda result: {"new_key": result[0], "old_key_stops_at": result[2]}
        if result else None))
    if rotated is None:
        _fail(f"no working key with id {key_id}")
    new_id, key, stops = rotated
    console.print(f"key {key_id} replaced by key {new_id}; {key_id} stops working at "
                  f"{stops:%Y-%m-%d %H:%M %Z}. The new key, shown once:")
    print(key)


@keys_app.command("revoke")
def keys_revoke(key_id: int, database_url: DatabaseUrl = None) -> None:
    """Revoke key KEY_ID (see `giapranh keys list`): it stops working at once, and its
    open alert streams close."""
    if not _run(database_url, _audited("key.revoke", str(key_id),
                                       lambda conn: revoke_api_key(conn, key_id), when=bool)):
        _fail(f"no active key with id {key_id}")
    console.print(f"revoked key {key_id}")


@webhooks_app.command("set")
def webhooks_set(
    unit: str, url: str,
    format: Annotated[str, typer.Option("--format", help="json or cap (CAP 1.2 XML)")] = "json",
    database_url: DatabaseUrl = None,
) -> None:
    """Register UNIT's webhook (replacing any) and print its new signing secret once."""
    from services.notifier.api import WebhookIn
    from services.notifier.settings import NotifierSettings
    from services.notifier.webhooks import Destination, Webhooks

    try:
        hook = WebhookIn(url=url, format=format)  # type: ignore[arg-type]
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    async def work(conn: asyncpg.Connection) -> str:
        if not await conn.fetchval("SELECT 1 FROM units WHERE code = $1 AND active_to IS NULL",
                                   unit):
            raise typer.BadParameter(f"no active unit {unit}", param_hint="UNIT")
        destination = Destination(NotifierSettings().allowed_networks())
        return await Webhooks(conn, destination).register(unit, str(hook.url), hook.format)

    secret = _run(database_url, work)
    console.print(f"webhook of {unit}: {hook.url} ({hook.format}); signing secret, shown once:")
    print(secret)


@webhooks_app.command("list")
def webhooks_list(database_url: DatabaseUrl = None) -> None:
    """Webhooks with their delivery counts (pending, delivered, dead)."""
    from services.notifier.webhooks import Webhooks

    hooks = _run(database_url, lambda conn: Webhooks(conn).stats())
    table = Table("unit", "url", "format", "pending", "delivered", "dead")
    for hook in hooks:
        table.add_row(hook.unit_code, hook.url, hook.format, str(hook.pending),
                      str(hook.delivered), str(hook.dead))
    console.print(table)


@webhooks_app.command("retry")
def webhooks_retry(
    unit: Annotated[str | None, typer.Argument(help="Only this unit's deliveries.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Queue dead-lettered webhook deliveries again (after the receiver is fixed)."""
    from services.notifier.webhooks import Webhooks

    count = _run(database_url, lambda conn: Webhooks(conn).retry_dead(unit))
    console.print(f"re-queued {count} dead delivery(ies)")


@webhooks_app.command("remove")
def webhooks_remove(unit: str, database_url: DatabaseUrl = None) -> None:
    from services.notifier.webhooks import Webhooks

    if not _run(database_url, lambda conn: Webhooks(conn).remove(unit)):
        _fail(f"{unit} has no webhook")
    console.print(f"removed the webhook of {unit}")


audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)


@audit_app.command("verify")
def audit_verify(database_url: DatabaseUrl = None) -> None:
    """Recompute the audit log's hash chain from its first record; name the first record
    that does not match (exit 1). Keep the head hash it prints outside the database: a log
    cut at its end still verifies, and only an outside copy of the head tells."""
    from rich.progress import Progress

    async def work(conn: asyncpg.Connection) -> audit.Verification:
        total = await conn.fetchval("SELECT count(*) FROM audit_log")
        with Progress(console=console, transient=True) as progress:
            task = progress.add_task("verifying the audit log", total=total)
            return await audit.verify(
                conn, progress=lambda done: progress.update(task, completed=done))

    result = _run(database_url, work)
    if not result.ok:
        _fail(f"the audit log is broken at record {result.broken_at}: {result.reason} "
              f"({result.checked} record(s) before it verified)")
    head = result.head.hex() if result.head else "none (the log is empty)"
    console.print(f"audit log verified: {result.checked} record(s); head hash {head}")


@audit_app.command("list")
def audit_list(
    unit: Annotated[str | None, typer.Argument(help="Only this unit's records.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 50,
    database_url: DatabaseUrl = None,
) -> None:
    """The latest records, newest first."""

    async def work(conn: asyncpg.Connection) -> list[asyncpg.Record]:
        return await conn.fetch(
            """SELECT id, at, unit_code, person_name, action, subject, detail FROM audit_log
                WHERE $1::text IS NULL OR unit_code = $1 ORDER BY id DESC LIMIT $2""",
            unit, limit)

    table = Table("id", "when", "unit", "person", "action", "subject", "detail")
    for row in _run(database_url, work):
        table.add_row(str(row["id"]), f"{row['at']:%Y-%m-%d %H:%M:%S}", row["unit_code"] or "",
                      row["person_name"] or "", row["action"], row["subject"] or "",
                      row["detail"] if len(row["detail"]) < 80 else row["detail"][:77] + "…")
    console.print(table)
