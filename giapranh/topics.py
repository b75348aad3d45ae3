"""`giapranh topics ...`: the deployment's topics on the broker (GIAPRANH_KAFKA_* and
GIAPRANH_TOPIC_PREFIX, as the services read them).

PostgreSQL is the system of record and the topics a cache of it: after a point-in-time
restore of the database their logs carry events of the history the restore left behind,
and `empty` deletes them (the services, started again, create them and publish again from
PostgreSQL what was not processed).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Annotated

import typer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaConnectionError, KafkaError
from aiokafka.structs import TopicPartition
from rich.console import Console
from rich.table import Table

from services.matcher.settings import MatcherSettings
from services.notifier.settings import NotifierSettings
from shared.kafka import client_options
from shared.settings import CommonSettings
from shared.topics import ALL_TOPICS, DEAD_LETTER, TopicSpec

topics_app = typer.Typer(help="The deployment's topics on the broker: list them, empty them "
                         "after a point-in-time restore of the database.", no_args_is_help=True)
console = Console()


@dataclass(frozen=True)
class Group:
    group_id: str
    members: int | None
    """None: the broker could not describe the group (whether a service is in it is not
    known)."""


def service_groups() -> tuple[str, ...]:
    """The consumer groups of the matcher and the notifier, as the services name them
    (`GIAPRANH_MATCHER_GROUP_ID`, `GIAPRANH_NOTIFIER_GROUP_ID`)."""
    matcher = MatcherSettings().matcher_group_id
    notifier = NotifierSettings().notifier_group_id
    return (matcher, f"{matcher}.reports", notifier, f"{notifier}-incidents")


async def _admin(settings: CommonSettings) -> AIOKafkaAdminClient:
    admin = AIOKafkaAdminClient(client_id="giapranh-topics", request_timeout_ms=10_000,
                                **client_options(settings))
    try:
        await admin.start()
    except (KafkaError, OSError) as exc:
        await admin.close()
        raise typer.BadParameter(
            f"cannot reach the broker at {settings.kafka_bootstrap_servers}: {exc!r}",
            param_hint="GIAPRANH_KAFKA_BOOTSTRAP_SERVERS") from None
    return admin


async def ours(admin: AIOKafkaAdminClient, settings: CommonSettings,
               specs: tuple[TopicSpec, ...] = ALL_TOPICS) -> list[str]:
    """The registry's topics (of `specs`) under the prefix that the broker lists."""
    listed = set(await admin.list_topics())
    return [settings.topic(spec.name) for spec in specs
            if settings.topic(spec.name) in listed]


async def groups_with_members(settings: CommonSettings,
                              group_ids: tuple[str, ...]) -> list[Group]:
    """The services' consumer groups that have members now (a matcher or a notifier
    still running, or stopped less than a session timeout ago), and those the broker could
    not describe (`members` None: counted as busy, since deleting is not undone). Each is
    described by name (a broker may not list a group that has committed nothing yet) and
    alone, on a connection of its own: Tansu answers a description of several groups, one
    of them unknown, with a message aiokafka cannot read."""
    found = []
    for group_id in group_ids:
        admin = await _admin(settings)
        try:
            [response] = await admin.describe_consumer_groups([group_id])
        except KafkaConnectionError:
            await _admin_answers(settings)  # (the broker itself is there)
            found.append(Group(group_id, None))
            continue
        finally:
            await admin.close()
        for group in response.groups:
            error_code, described, _state, _protocol_type, _protocol, members = group[:6]
            if error_code != 0:
                found.append(Group(described, None))
            elif members:
                found.append(Group(described, len(members)))
    return found


async def _admin_answers(settings: CommonSettings) -> None:
    admin = await _admin(settings)
    try:
        await admin.list_topics()
    finally:
        await admin.close()


async def message_counts(settings: CommonSettings, topics: list[str]) -> dict[str, int]:
    """Messages in each topic's log (end offsets less beginning offsets)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(client_id="giapranh-topics", **client_options(settings))
    await consumer.start()
    try:
        partitions = [TopicPartition(topic, p) for topic in topics
                      for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return dict.fromkeys(topics, 0)
        ends = await consumer.end_offsets(partitions)
        starts = await consumer.beginning_offsets(partitions)
        counts = dict.fromkeys(topics, 0)
        for tp in partitions:
            counts[tp.topic] += ends[tp] - starts[tp]
        return counts
    finally:
        await consumer.stop()


@topics_app.command("list")
def list_topics() -> None:
    """The registry's topics under the prefix: on the broker or not, messages in each log;
    and the services' consumer groups with members."""
    settings = CommonSettings()

    async def go() -> None:
        admin = await _admin(settings)
        try:
            present = await ours(admin, settings)
            busy = await groups_with_members(settings, service_groups())
        finally:
            await admin.close()
        counts = await message_counts(settings, present) if present else {}
        table = Table("topic", "on the broker", "messages")
        for spec in ALL_TOPICS:
            name = settings.topic(spec.name)
            table.add_row(name, "yes" if name in present else "no",
                          str(counts[name]) if name in counts else "")
        console.print(table)
        for group in busy:
            console.print(f"consumer group {group.group_id}: " + (
                "not described by the broker" if group.members is None
                else f"{group.members} member(s)"))

    asyncio.run(go())


@topics_app.command()
def empty(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    force: Annotated[bool, typer.Option(
        help="Delete even while the services' consumer groups have members.")] = False,
    wait: Annotated[float, typer.Option(
        min=0.0, help="Seconds to wait for the members of services just stopped to leave "
        "their groups (a member leaves within the session timeout).")] = 30.0,
    dead_letters: Annotated[bool, typer.Option(
        help="Delete the dead-letter topic too (its parked messages are kept nowhere "
        "else: read them first).")] = False,
) -> None:
    """Delete the registry's topics under the prefix, after a point-in-time restore of the
    database: stop ingest, the matcher and the notifier first, then start them again (they
    create the topics and publish again from PostgreSQL). Topics of other prefixes, and
    the dead-letter topic unless asked, are left alone."""
    settings = CommonSettings()
    specs = tuple(spec for spec in ALL_TOPICS if dead_letters or spec is not DEAD_LETTER)

    async def go() -> int:
        admin = await _admin(settings)
        try:
            groups = service_groups()
            deadline = time.monotonic() + wait
            busy = await groups_with_members(settings, groups)
            if busy and not force:
                with console.status("waiting for the services' consumer groups to empty"):
                    while any(group.members for group in busy) and (
                            time.monotonic() < deadline):
                        await asyncio.sleep(1)
                        busy = await groups_with_members(settings, groups)
            if busy and not force:
                return _refuse(busy)
            present = await ours(admin, settings, specs)
            if not present:
                console.print(f"no topic with the prefix {settings.topic_prefix!r} on "
                              f"{settings.kafka_bootstrap_servers}: nothing to delete")
                return 0
            if not yes and not typer.confirm(
                    f"delete {len(present)} topic(s) from {settings.kafka_bootstrap_servers}: "
                    f"{', '.join(present)}?"):
                console.print("nothing deleted")
                return 1
            if not force and (busy := await groups_with_members(settings, groups)):
                return _refuse(busy)  # (a service started while the question was asked)
            await admin.delete_topics(present)
            # (deletion completes in the background on Apache Kafka)
            with console.status("waiting for the broker to stop listing them"):
                for _ in range(60):
                    left = await ours(admin, settings, specs)
                    if not left:
                        break
                    await asyncio.sleep(0.5)
            if left:
                console.print(f"[red]still listed after 30 s:[/] {', '.join(left)}")
                return 1
            console.print(f"deleted {len(present)} topic(s): {', '.join(present)}; start the "
                          "services again to create them and publish again from PostgreSQL")
            return 0
        finally:
            await admin.close()

    raise typer.Exit(asyncio.run(go()))


def _refuse(busy: list[Group]) -> int:
    for group in busy:
        console.print(f"consumer group {group.group_id}: " + (
            "the broker could not describe it, so whether a service is in it is not known"
            if group.members is None else f"still has {group.members} member(s)"))
    console.print("[red]refused:[/] a matcher or notifier may still be running; stop ingest, "
                  "the matcher and the notifier first (--force deletes all the same)")
    return 1
