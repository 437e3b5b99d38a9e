"""A rendering that reuses the pieces and labels of the one before shows exactly what a
rendering from scratch shows, whatever changed in between: names in one group's reply,
people moving between groups, namesakes, the team or a group going stale and coming back,
the labels config and its salt."""

from __future__ import annotations

import hashlib
import random
from typing import Any

import pytest

from exporter.config import Config, LabelConfig, Secret, Window
from exporter.sources.base import Parts, Rendered
from exporter.sources.team import TEAM
from exporter.sources.user_page import USER_PAGE
from exporter.sources.user_rows import GroupReport, build_report, decode_page
from tests import rows
from tests.conftest import inflated

NOW = 1728640000.0
WEEK, MONTH = Window("7d", 7 * 86400.0), Window("30d", 30 * 86400.0)
GROUPS = ("eng", "ops", "lab")
# Few names, one like a tagged one, so that `distinct` has namesakes to tell apart.
NAMES = ("Ann", "Ann", "Bo", "", "Cy #0123abcd", "Dee")
Live = dict[tuple[str, str], Any]


def row(person: int, name: str, days: int, upper: bool = False) -> dict[str, Any]:
    email = f"p{person}@example.com"
    return {
        **rows.BOB,
        "email": email.upper() if upper else email,
        "name": name,
        "activeDays": days,
        "role": "admin" if person % 3 == 0 else "member",
    }


def report(*pages: tuple[str, list[dict[str, Any]]]) -> GroupReport:
    return build_report([(label, decode_page({"userTableStats": r})) for label, r in pages])


def text(rendered: Rendered) -> dict[str, bytes]:
    """Everything a rendering shows, by family name (ages at NOW)."""
    out = {
        f.name: inflated(c if isinstance(c, tuple) else (c,)) for f, c in rendered.static.items()
    }
    out.update({f.name: b"".join(render(NOW)) for f, render in rendered.dynamic.items()})
    return out


class Team:
    """A random team, its groups' and the team's reports, changed one step at a time."""

    def __init__(self, seed: int, team: bool) -> None:
        self.rng = random.Random(seed)
        self.team = team
        self.names = {p: self.rng.choice(NAMES) for p in range(12)}
        self.days = dict.fromkeys(self.names, 1)
        self.groups = {g: {p for p in self.names if self.rng.random() < 0.4} for g in GROUPS}
        self.upper: set[int] = set()
        self.live: Live = {}
        self.stale: Live = {}
        for group in GROUPS:
            self.poll(group)
        if team:
            self.poll("")

    def poll(self, group: str) -> None:
        """A new report of `group` ("": the team) from the current rows."""
        if not group:
            people = [row(p, n, self.days[p]) for p, n in self.names.items()]
            self.live[(TEAM.name, "")] = report(("7d", people), ("30d", people))
            return
        members = [row(p, self.names[p], self.days[p]) for p in sorted(self.groups[group])]
        members += [row(p, self.names[p], 0, upper=True) for p in sorted(self.upper)]
        pages = [("7d", members)] if self.team else [("7d", members), ("30d", members)]
        self.live[(USER_PAGE.name, group)] = report(*pages)

    def step(self) -> None:
        """One random change, then new reports of whom it concerns."""
        rng, person, group = self.rng, self.rng.choice(list(self.names)), rng_group(self.rng)
        kind = rng.randrange(8)
        if kind == 0:  # a name changes in one group's reply only (the team's, if any)
            self.names[person] = rng.choice(NAMES)
            self.poll(group)
        elif kind == 1:  # someone moves from one group to another
            for g in GROUPS:
                self.groups[g].discard(person)
            self.groups[group].add(person)
            self.poll_all()
        elif kind == 2:  # the team or a group goes stale, or comes back with its last report
            key = (TEAM.name, "") if self.team and rng.random() < 0.5 else (USER_PAGE.name, group)
            if key in self.live:
                self.stale[key] = self.live.pop(key)
            else:
                self.live[key] = self.stale.pop(key)
        elif kind == 3:  # a poll with the same rows
            self.poll(rng.choice([*GROUPS, ""]) if self.team else group)
        elif kind == 4:  # values change
            self.days[person] += 1
            self.poll_all()
        elif kind == 5:  # a second row of someone, their email in capitals, in a group
            self.upper ^= {person}
            self.poll(group)
        elif kind == 6:  # the reports come in another order
            shuffled = list(self.live.items())
            rng.shuffle(shuffled)
            self.live = dict(shuffled)
        else:  # names change everywhere
            self.names[person] = rng.choice(NAMES)
            self.poll_all()

    def poll_all(self) -> None:
        for group in [*GROUPS, *([""] if self.team else [])]:
            key = (USER_PAGE.name if group else TEAM.name, group)
            if key in self.live:
                self.poll(group)


def rng_group(rng: random.Random) -> str:
    return rng.choice(GROUPS)


def config(mode: str, team: bool, salt: str = "pepper", per_user: bool = True) -> Config:
    return Config(
        groups=GROUPS,
        windows=(WEEK, MONTH),
        team=team,
        per_user=per_user,
        labels=LabelConfig(user=mode, hash_salt=Secret(salt)),  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("mode", ["email", "name", "hash"])
@pytest.mark.parametrize("team", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_a_rendering_reusing_the_last_one_shows_what_one_from_scratch_shows(
    mode: str, team: bool, seed: int
) -> None:
    settings = config(mode, team)
    people = Team(seed, team)
    parts = Parts({})
    for _ in range(60):
        people.step()
        reused = USER_PAGE.render(settings, people.live, parts)
        parts = Parts(parts.kept)
        assert text(reused) == text(USER_PAGE.render(settings, people.live, Parts({})))


def test_a_new_salt_names_everyone_anew() -> None:
    people = Team(1, True)
    parts = Parts({})
    USER_PAGE.render(config("hash", True), people.live, parts)
    resalted = config("hash", True, salt="other")
    reused = USER_PAGE.render(resalted, people.live, Parts(parts.kept))
    fresh = USER_PAGE.render(resalted, people.live, Parts({}))
    assert text(reused) == text(fresh)
    before = USER_PAGE.render(config("hash", True), people.live, Parts({}))
    assert text(reused) != text(before)


@pytest.mark.parametrize(
    "changed",
    [
        config("name", True),
        config("email", True, per_user=False),
        config("hash", False),
    ],
)
def test_a_new_labels_config_or_per_user_redoes_the_lines(changed: Config) -> None:
    people = Team(2, True)
    parts = Parts({})
    USER_PAGE.render(config("email", True), people.live, parts)
    if not changed.team:
        del people.live[(TEAM.name, "")]
    reused = USER_PAGE.render(changed, people.live, Parts(parts.kept))
    assert text(reused) == text(USER_PAGE.render(changed, people.live, Parts({})))


def test_a_name_changed_in_one_groups_reply_changes_it_in_every_group() -> None:
    settings = config("email", False)
    live: Live = {
        (USER_PAGE.name, "eng"): report(("7d", [row(1, "Ann", 1)]), ("30d", [row(1, "Ann", 1)])),
        (USER_PAGE.name, "ops"): report(("7d", [row(1, "Ann", 1)]), ("30d", [row(1, "Ann", 1)])),
    }
    parts = Parts({})
    USER_PAGE.render(settings, live, parts)
    renamed = [row(1, "Anne", 1)]
    live[(USER_PAGE.name, "eng")] = report(("7d", renamed), ("30d", renamed))
    info = text(USER_PAGE.render(settings, live, Parts(parts.kept)))["windsurf_user_info"]
    assert info.count(b'name="Anne"') == 2
    assert b'name="Ann"' not in info


def test_a_tag_no_longer_repeated_is_shortened_for_the_namesake_that_kept_it() -> None:
    # Three Anns get 8 hex digits of their salted email hashes; two of those are the same,
    # so those two get all 64. When the second is renamed in ops' reply, the first, in eng,
    # is told apart by 8 digits again.
    settings = config("name", False)
    first, second = 46942, 47607  # their 8 digits collide under the salt "pepper"
    salt = settings.labels.hash_salt.reveal()
    short = [
        hashlib.sha256(f"{salt}p{p}@example.com".encode()).hexdigest()[:8] for p in (first, second)
    ]
    assert short[0] == short[1]
    groups = {
        "eng": [row(first, "Ann", 1)],
        "ops": [row(second, "Ann", 1)],
        "lab": [row(3, "Ann", 1)],
    }
    live: Live = {(USER_PAGE.name, g): report(("7d", r), ("30d", r)) for g, r in groups.items()}
    parts = Parts({})
    before = text(USER_PAGE.render(settings, live, parts))["windsurf_user_info"]
    assert f'group="eng",user="Ann #{short[0]}"'.encode() not in before
    renamed = [row(second, "Bo", 1)]
    live[(USER_PAGE.name, "ops")] = report(("7d", renamed), ("30d", renamed))
    info = text(USER_PAGE.render(settings, live, Parts(parts.kept)))["windsurf_user_info"]
    assert f'group="eng",user="Ann #{short[0]}"'.encode() in info


def test_an_equal_new_report_takes_the_old_ones_place_without_redoing_lines() -> None:
    # The old report is let go (the new one is what the Snapshot holds): memory stays flat.
    for team in (True, False):
        settings = config("email", team)
        people = Team(3, team)
        parts = Parts({})
        USER_PAGE.render(settings, people.live, parts)
        old = dict(people.live)
        for group in ["", *GROUPS] if team else GROUPS:
            people.poll(group)
        again = Parts(parts.kept)
        USER_PAGE.render(settings, people.live, again)
        assert all(again.kept[k][2] is parts.kept[k][2] for k in parts.kept)
        state = again.kept[("people",)][2]
        held = {id(who.row) for who in state.people.values()}
        assert not held & {id(u) for r in old.values() for u in r.users}
