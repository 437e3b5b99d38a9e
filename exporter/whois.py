"""`windsurf-exporter whois`: the person behind a `user` label (a hash mode pseudonym, or a name)
or the label of an email, from one whole-team UserPageAnalytics request, so an administrator can
act on an alert while pseudonyms and emails never meet outside the exporter's host."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from exporter.api import Client
from exporter.config import Config
from exporter.sources.people import user_labels
from exporter.sources.user_page import plan
from exporter.sources.user_rows import UserStats, build_report, decode_page


@dataclass(frozen=True)
class Person:
    """One person of the team: the `user` label the exporter gives them, and who they are."""

    label: str
    email: str
    name: str


def team(config: Config, client: Client, now: float) -> list[Person]:
    """Everyone in the team, labelled as the exporter labels them (across the whole team)."""
    (request,) = plan(config, config.windows[:1], "", now)
    page = client.call(request, lambda document: decode_page(document, request))
    users: Sequence[UserStats] = build_report([("", page)], config.limits).users
    labels = user_labels(users, config)
    return [
        Person(label, user.email, user.name) for (label, _), user in zip(labels, users, strict=True)
    ]


def find(people: Sequence[Person], who: str) -> Person | None:
    """The person an email (any case) or a `user` label names."""
    wanted = who.strip()
    for person in people:
        if person.label == wanted or person.email.lower() == wanted.lower():
            return person
    return None


def answer(person: Person, who: str) -> str:
    """An email is answered with its label; a label with the email and name behind it."""
    if person.email.lower() == who.strip().lower() and person.label != who.strip():
        return person.label
    return f"{person.email} ({person.name})" if person.name else person.email


def whois(
    config: Config, who: str, client: Client, clock: Callable[[], float] = time.time
) -> str | None:
    """The answer for `who`, or None when nobody in the team has that label or email."""
    person = find(team(config, client, clock()), who)
    return None if person is None else answer(person, who)
