"""`giapranh units ...` and `giapranh keys ...`: directory and credentials administration.

They talk to PostgreSQL directly (GIAPRANH_DATABASE_URL or --database-url), so the first
admin key of a new deployment can be issued before any API key exists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, NoReturn, TypeVar

import asyncpg
import typer
from rich.console import Console
from rich.table import Table

from shared.auth import issue_api_key, list_api_keys, revoke_api_key
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
    created = _run(database_url, lambda conn: create_unit(conn, unit))
    console.print(f"added unit {created.code} ({created.name})")


@units_app.command("rename")
def units_rename(code: str, name: str, database_url: DatabaseUrl = None) -> None:
    """Rename a unit from now on (alerts raised before keep the old name)."""
    _run(database_url, lambda conn: rename_unit(conn, code, name))
    console.print(f"{code} is now {name}")


@units_app.command("move")
def units_move(
    code: str,
    parent: Annotated[str | None, typer.Option(help="The new parent; omit for none.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Put a unit under another parent unit (escalations follow)."""
    _run(database_url, lambda conn: reparent_unit(conn, code, parent))
    console.print(f"{code} is now under {parent or 'no parent'}")


@units_app.command("merge")
def units_merge(
    code: str,
    into: Annotated[str, typer.Option(help="The unit that takes over CODE's territory.")],
    database_url: DatabaseUrl = None,
) -> None:
    """Merge CODE into another unit: CODE ends, its neighbours and alerts go to the other,
    its API keys stop working; its past alerts and history stay."""
    _run(database_url, lambda conn: merge_unit(conn, code, into))
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
    added = _run(database_url, lambda conn: add_adjacency(conn, a, b, note))
    console.print(f"{a} and {b} are adjacent" + ("" if added else " (known already)"))


@adjacency_app.command("remove")
def adjacency_remove(a: str, b: str, database_url: DatabaseUrl = None) -> None:
    if not _run(database_url, lambda conn: remove_adjacency(conn, a, b)):
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
    created = _run(database_url, lambda conn: create_agreement(conn, agreement))
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
    admin: Annotated[bool, typer.Option("--admin", help="The key may manage the directory.")] = False,
    label: Annotated[str | None, typer.Option(help="What the key is for.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Issue a new API key for UNIT and print it once (only its hash is stored)."""

    async def work(conn: asyncpg.Connection) -> str:
        if not await conn.fetchval("SELECT 1 FROM units WHERE code = $1", unit):
            raise typer.BadParameter(f"no unit {unit}", param_hint="UNIT")
        return await issue_api_key(conn, unit, _pepper(), role="admin" if admin else "unit",
                                   label=label)

    key = _run(database_url, work)
    console.print(f"API key for {unit}{' (admin)' if admin else ''}; store it now, it is "
                  "not shown again:")
    print(key)


@keys_app.command("list")
def keys_list(
    unit: Annotated[str | None, typer.Argument(help="Only this unit's keys.")] = None,
    database_url: DatabaseUrl = None,
) -> None:
    """Keys by id and prefix (never the key itself)."""
    keys = _run(database_url, lambda conn: list_api_keys(conn, unit))
    table = Table("id", "unit", "prefix", "role", "label", "created", "revoked")
    for key in keys:
        table.add_row(str(key.id), key.unit_code, key.key_prefix + "…", key.role,
                      key.label or "", f"{key.created_at:%Y-%m-%d %H:%M}",
                      f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "")
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int, database_url: DatabaseUrl = None) -> None:
    """Revoke key KEY_ID (see `giapranh keys list`): it stops working at once."""
    if not _run(database_url, lambda conn: revoke_api_key(conn, key_id)):
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
