"""Naming people across the team, apart from reading their rows (user_rows.py) and showing them
(user_page.py): a person's `user` label in the labels.user mode (email, salted hash or name, made
distinct) and info labels, and `People`, which keeps them from rendering to rendering so that a
publish renames only whom a changed report touches."""

from __future__ import annotations

import itertools
import operator
import sys
import threading
from collections import Counter
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping, Sequence

from exporter.config import Config
from exporter.exposition import escape
from exporter.sources.user_rows import GroupReport, UserStats, digest, person_key

_HEX = frozenset("0123456789abcdef")
INFO_BLOCK = 512  # people whose info series are one piece


def user_hash(email: str, salt: str = "") -> str:
    """`hash` mode's pseudonym: follows a user across polls, groups and restarts without
    saying who it is (SHA-256 of the salt and the lower-cased email, in hex)."""
    return digest(salt + email.lower())


def user_labels(
    users: Sequence[UserStats], config: Config
) -> list[tuple[str, list[tuple[str, str]]]]:
    """Each user's `user` label and extra info labels in the configured labels.user mode.

    Only `email` mode shows emails and names. In every mode the labels are distinct (see
    `distinct`): names repeat, and two emails may differ only in case or in what was cut.
    """
    mode = config.labels.user
    salt = config.labels.hash_salt.reveal()
    values = [_value(u, mode, salt) for u in users]
    names = distinct(values, [u.email for u in users], salt)
    return [(name, _info(u, mode)) for name, u in zip(names, users, strict=True)]


def _value(user: UserStats, mode: str, salt: str) -> str:
    """What labels `user` in `mode` before `distinct`: the email, its hash, or the name."""
    if mode == "email":
        return user.email
    return user_hash(user.email, salt) if mode == "hash" else user.name


def _info(user: UserStats, mode: str) -> list[tuple[str, str]]:
    """The info labels `user` has in `mode`."""
    return [(name, getattr(user, name)) for name in _info_names(mode)]


def _info_names(mode: str) -> tuple[str, ...]:
    """The info labels in `mode`, each named as the field it shows: names and emails only in
    `email` mode."""
    return ("name", "email", "role", "team_status") if mode == "email" else ("role", "team_status")


def distinct(values: Sequence[str], emails: Sequence[str], salt: str) -> list[str]:
    """`values` made distinct, whatever they hold: a value that is empty, repeated, or could be
    mistaken for a suffixed one gets ` #` and 8 hex digits of the user's salted email hash,
    independent of the order of the rows; where those collide too, all 64. Emails are distinct."""
    taken = Counter(values)
    out = [_tagged(v, e, salt, taken[v] > 1) for v, e in zip(values, emails, strict=True)]
    again = Counter(out)
    return [
        _retagged(v, e, o, salt, again[o] > 1) for v, e, o in zip(values, emails, out, strict=True)
    ]


def _tagged(value: str, email: str, salt: str, repeated: bool) -> str:
    """`distinct`'s first pass for one value."""
    if repeated or _suffixed(value):
        return f"{value} #{digest(salt + email)[:8]}".lstrip()
    return value


def _retagged(value: str, email: str, tagged: str, salt: str, repeated: bool) -> str:
    """`distinct`'s second pass for one value: `tagged` unless the first pass repeated it."""
    return f"{value} #{digest(salt + email)}".lstrip() if repeated else tagged


def _suffixed(value: str) -> bool:
    """Empty, or ending like a disambiguated value (` #` and 8 or more hex digits)."""
    if value and value[0] != "#" and " #" not in value:
        return False  # the usual: no ` #` at all
    _, sep, tail = (" " + value).rpartition(" #")
    return not value or (bool(sep) and len(tail) >= 8 and all(c in _HEX for c in tail))


_VERSIONS = itertools.count()  # unique across People objects: a version names one state


class _Person:
    """One person's labels and what they were made from."""

    __slots__ = ("groups", "label", "name", "out", "row", "value")

    def __init__(self, row: UserStats, groups: str, value: str) -> None:
        self.row = row  # the row naming them: the team's, else their first group's
        self.groups = groups  # their `groups` label
        self.value = value  # what labels them before `distinct`
        self.out = ""  # after `distinct`'s first pass
        self.name = ""  # their `user` label
        self.label = ""  # the same, escaped for the exposition


class People:
    """Everyone of the live groups and the team, by lower-cased email (emails differ in case
    between replies): the team's rows, the groups each is in, and their labels, named across
    the whole team so a person has one label. Kept from rendering to rendering under one
    config and brought up to date by `sync` at the cost of the reports that changed. What a
    piece shows has versions (its group's rows, the team's, its people's labels), each bumped
    whenever what it names changes: a piece is kept while they are the same."""

    def __init__(self, config: Config, info: str) -> None:
        self.lock = threading.Lock()
        self.info = info  # the name of the info family whose series info_lines makes
        self.per_user = config.per_user
        self.mode = config.labels.user
        self.salt = config.labels.hash_salt.reveal()
        self.info_of = operator.attrgetter(*_info_names(self.mode))  # a row's info label values
        self.reports: dict[str, GroupReport] = {}
        self.team_report: GroupReport | None = None
        self.team: dict[str, UserStats] = {}  # its last row of each person
        # Only with per_user, where labels are shown:
        self.firsts: dict[str, dict[str, UserStats]] = {}  # group -> person -> first row
        # group -> person -> their block of INFO_BLOCK people, in the order of the rows: a
        # changed label redoes its block's info series, not the group's.
        self.block: dict[str, dict[str, int]] = {}
        self.member_of: dict[str, list[str]] = {}  # a group once per row of the person
        self.order: dict[str, int] = {}  # the live groups' positions
        self.people: dict[str, _Person] = {}
        self.taken: dict[str, int] = {}  # values, as `distinct` counts them
        self.again: dict[str, int] = {}  # first-pass labels, likewise
        self.versions: dict[Hashable, int] = {}

    def version(self, piece: Hashable) -> int:
        return self.versions.setdefault(piece, next(_VERSIONS))

    def _bump(self, piece: Hashable) -> None:
        self.versions[piece] = next(_VERSIONS)

    def blocks(self, group: str) -> int:
        """How many blocks of info series the group's people make (none without per_user)."""
        return -(-len(self.block.get(group, ())) // INFO_BLOCK)

    def in_block(self, group: str, block: int) -> Iterator[str]:
        """The group's people of that block, in the order of its rows."""
        return itertools.islice(self.firsts[group], block * INFO_BLOCK, (block + 1) * INFO_BLOCK)

    def complete(self, groups: Collection[str]) -> bool:
        """Who is in no group is known only when every configured group's members are."""
        return set(self.order) == set(groups)

    def rest(self) -> list[str]:
        """The team's people in no live group."""
        return [p for p in self.team if p not in self.member_of]

    def sync(self, groups: Sequence[tuple[str, GroupReport]], team: GroupReport | None) -> None:
        """Take in the live reports: a report whose rows changed bumps the version of its
        rows, one equal to the one before only takes its place."""
        touched: set[str] = set()
        order = {g: i for i, (g, _) in enumerate(groups)}
        if [g for g in self.order if g in order] != [g for g in order if g in self.order]:
            # Whose row names them (their first group's) may change.
            touched.update(p for p, gs in self.member_of.items() if len(gs) > 1)
        for gone in [g for g in self.reports if g not in order]:
            self._set_group(gone, None, touched)
        self.order = order
        self._sync_team(team, touched)
        for group, report in groups:
            self._sync_group(group, report, touched)
        if self.per_user:
            self._relabel(touched)

    def _sync_team(self, team: GroupReport | None, touched: set[str]) -> None:
        old = self.team_report
        if team is old:
            return
        rows = {person_key(u.email): u for u in team.users} if team else {}
        before, self.team_report, self.team = self.team, team, rows
        if team is not None and old is not None and team == old:
            self._repoint(before, rows)
            return
        self._bump(("team",))
        if self.per_user:
            touched.update(before.keys() - rows.keys())
            touched.update(self._renaming(rows))

    def _sync_group(self, group: str, report: GroupReport, touched: set[str]) -> None:
        old = self.reports.get(group)
        if report is old:
            return
        if old is None or report != old:
            self._set_group(group, report, touched)
            return
        self.reports[group] = report
        if self.per_user:
            firsts = _firsts(report)
            self._repoint(self.firsts[group], firsts)
            self.firsts[group] = firsts

    def _repoint(self, old: Mapping[str, UserStats], new: Mapping[str, UserStats]) -> None:
        """Rows equal to the `old` ones name the people the old ones did, so that the old
        report can go."""
        if not self.per_user:
            return
        for person, row in new.items():
            who = self.people.get(person)
            if who is not None and who.row is old.get(person):
                who.row = row

    def _renaming(self, rows: Mapping[str, UserStats]) -> list[str]:
        """Of these rows' people (their memberships up to date), those whose labels the rows
        may change: new, or named by a row now that shows them otherwise. The others are named
        by their new row from now on, so that the old report can go."""
        out = []
        for person in rows:
            who = self.people.get(person)
            row = self._row(person, self.member_of.get(person, ()))
            if who is None or row is None or _naming(who.row) != _naming(row):
                out.append(person)
            else:
                who.row = row
        return out

    def _set_group(self, group: str, report: GroupReport | None, touched: set[str]) -> None:
        """A group's new report (None: no longer live); its old and new members are
        `touched`."""
        self._bump(("data", group))
        if report is None:
            del self.reports[group]
        else:
            self.reports[group] = report
        if not self.per_user:
            return
        old = self.firsts.pop(group, {})
        self.block.pop(group, None)
        before = {p: len(self.member_of[p]) for p in old}
        for person in old:
            left = [g for g in self.member_of[person] if g != group]
            if left:
                self.member_of[person] = left
            else:
                del self.member_of[person]
        firsts = _firsts(report) if report else {}
        for user in report.users if report else ():
            self.member_of.setdefault(person_key(user.email), []).append(group)
        if report is not None:
            self.firsts[group] = firsts
            self.block[group] = {p: i // INFO_BLOCK for i, p in enumerate(firsts)}
        # Who joined or left the group, or has another number of rows in it (their `groups`
        # label changes), and whose row there names them otherwise.
        touched.update(old.keys() ^ firsts.keys())
        touched.update(p for p, n in before.items() if len(self.member_of.get(p, ())) != n)
        touched.update(self._renaming({p: r for p, r in firsts.items() if p in old}))

    def _row(self, person: str, groups: Sequence[str]) -> UserStats | None:
        """The row naming `person`, in `groups`: the team's, else their first live group's;
        None: gone."""
        row = self.team.get(person)
        if row is None and groups:
            first = groups[0] if len(groups) == 1 else min(groups, key=self.order.__getitem__)
            row = self.firsts[first][person]
        return row

    def _relabel(self, touched: set[str]) -> None:
        """Bring the `touched` people's labels up to date (and whoever's `distinct` makes
        depend on theirs), and bump the versions of the pieces showing a changed one."""
        old, shown = self._refresh(touched)
        renamed = self._rename(old)
        # Who is new is only in reports that changed, whose pieces are redone anyway.
        shown.update(p for p in renamed if old.get(p, ()) is not None)
        infos: set[tuple[str, str, int]] = set()
        seats: set[str] = set()
        for person in shown:
            groups = self.member_of.get(person, ())
            infos.update(("info", g, self.block[g][person]) for g in groups)
            if person in renamed:
                seats.update(groups)
        for info in infos:
            self._bump(info)
        for group in seats:
            self._bump(("group", group))
        if not self.team.keys().isdisjoint(shown):
            self._bump(("no group",))

    def _refresh(self, touched: set[str]) -> tuple[dict[str, tuple[str, str] | None], set[str]]:
        """The `touched` people's rows, groups and values as they are now; returns whose
        value (or email) changed, with their value and first-pass label before (None: new),
        and who stays with other `groups` or info labels."""
        old: dict[str, tuple[str, str] | None] = {}
        shown: set[str] = set()
        info_of = self.info_of
        for person in touched:
            groups = self.member_of.get(person, ())
            row = self._row(person, groups)
            who = self.people.get(person)
            if who is None:
                if row is not None:
                    self.people[person] = _Person(row, _groups_label(groups), self._value(row))
                    old[person] = None
                continue
            if row is None:
                old[person] = (who.value, who.out)
                del self.people[person]
                continue
            same = who.row.email == row.email
            value = who.value if same and self.mode == "hash" else self._value(row)
            if not same or value != who.value:
                old[person] = (who.value, who.out)
            label = _groups_label(groups)
            if label != who.groups or (row is not who.row and info_of(row) != info_of(who.row)):
                shown.add(person)
            who.row, who.groups, who.value = row, label, value
        return old, shown

    def _value(self, row: UserStats) -> str:
        return _value(row, self.mode, self.salt)

    def _rename(self, old: Mapping[str, tuple[str, str] | None]) -> set[str]:
        """`distinct` again where the values of the people in `old` changed (None: new): for
        them, and for whoever's value or first-pass label repeats differently because of
        them. Returns who got another `user` label, or lost theirs."""
        firsts, gone = self._first_pass(old)
        seconds = set(firsts)
        flipped = _recount(self.again, gone, [self.people[p].out for p in firsts])
        if flipped:
            seconds.update(p for p, w in self.people.items() if w.out in flipped)
        renamed = {p for p, was in old.items() if was is None or p not in self.people}
        return renamed.union(self._second_pass(seconds))

    def _first_pass(self, old: Mapping[str, tuple[str, str] | None]) -> tuple[list[str], list[str]]:
        """`distinct`'s first pass for the people in `old` and whoever shares a value whose
        repetition they changed; returns them, and the first-pass labels no longer held."""
        people = self.people
        firsts = [p for p in old if p in people]
        flipped = _recount(
            self.taken, [w[0] for w in old.values() if w], [people[p].value for p in firsts]
        )
        if flipped:
            firsts += [p for p, w in people.items() if w.value in flipped and p not in old]
        gone = [w[1] for w in old.values() if w]
        gone += [people[p].out for p in firsts if p not in old]
        taken = self.taken.get
        for person in firsts:
            who = people[person]
            who.out = _tagged(who.value, who.row.email, self.salt, taken(who.value, 0) > 1)
        return firsts, gone

    def _second_pass(self, seconds: Iterable[str]) -> list[str]:
        """`distinct`'s second pass for these people; returns whose label it changed."""
        renamed = []
        again = self.again.get
        for person in seconds:
            who = self.people[person]
            name = _retagged(who.value, who.row.email, who.out, self.salt, again(who.out, 0) > 1)
            if name != who.name:
                who.name = name
                who.label = escape(name)
                renamed.append(person)
        return renamed

    def info_lines(self, group: str, persons: Iterable[str]) -> list[str]:
        """These people's info series in `group`: the labels many share (role, team status,
        groups) escaped once per render, not once per person."""
        g = escape(group)
        name = self.info
        tails: dict[tuple[str, str, str], str] = {}
        out = []
        for person in persons:
            who = self.people[person]
            row = who.row
            shared = (row.role, row.team_status, who.groups)
            tail = tails.get(shared)
            if tail is None:
                tail = tails[shared] = (
                    f'role="{escape(row.role)}",team_status="{escape(row.team_status)}",'
                    f'groups="{escape(who.groups)}"}} 1\n'
                )
            user = who.label
            if self.mode == "email":  # the labels of _info_names, written out: 4x faster
                out.append(
                    f'{name}{{group="{g}",user="{user}",name="{escape(row.name)}",'
                    f'email="{escape(row.email)}",{tail}'
                )
            else:
                out.append(f'{name}{{group="{g}",user="{user}",{tail}')
        return out


def _firsts(report: GroupReport) -> dict[str, UserStats]:
    """The first row of each person of the report."""
    firsts: dict[str, UserStats] = {}
    for user in report.users:
        firsts.setdefault(person_key(user.email), user)
    return firsts


def _naming(row: UserStats) -> tuple[str, str, str, str]:
    """What of a row may show in its person's labels, in any labels.user mode."""
    return (row.email, row.name, row.role, row.team_status)


def _groups_label(groups: Sequence[str]) -> str:
    """The `groups` label of someone in these groups (each once per row of theirs)."""
    if len(groups) < 2:
        return groups[0] if groups else ""
    return sys.intern(",".join(sorted(g for g in groups if g)))


def _recount(counts: dict[str, int], gone: Sequence[str], new: Sequence[str]) -> set[str]:
    """`counts` less `gone` plus `new`; returns the keys now repeated that were not, or the
    reverse."""
    delta = Counter(new)
    for key in gone:
        delta[key] -= 1
    known = delta.keys() & counts.keys()
    flipped = set()
    for key in known:
        count, step = counts[key], delta[key]
        if count + step:
            counts[key] = count + step
        else:
            del counts[key]
        if (count > 1) != (count + step > 1):
            flipped.add(key)
    # The rest are new: only `new` holds them (what is gone was counted).
    fresh = {key: step for key, step in delta.items() if key not in known}
    counts.update(fresh)
    flipped.update(key for key, step in fresh.items() if step > 1)
    return flipped
