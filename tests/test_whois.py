"""`windsurf-exporter whois`: an administrator holding the config and key finds the person
behind a hash mode pseudonym (and an email's pseudonym) with one request to the API, over
loopback to the fake API; the key and salt are never printed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from exporter.cli import main
from exporter.demo import DEMO_SERVICE_KEY, FakeWindsurf
from exporter.sources.people import user_hash

SALT = "pepper-for-the-tests"


@pytest.fixture
def hashed(
    fake_api: FakeWindsurf, write_config: Callable[..., Path], tmp_path: Path
) -> tuple[FakeWindsurf, Path]:
    salt = tmp_path / "salt"
    salt.write_text(SALT)
    config = write_config(
        {
            "api": {"url": fake_api.url, "retries": 0},
            "groups": ["engineering"],
            "labels": {"user": "hash", "hash_salt_file": str(salt)},
        }
    )
    return fake_api, config


def whois(config: Path, who: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["whois", who, "--config.file", str(config)])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_pseudonym_names_its_person_after_one_whole_team_request(
    hashed: tuple[FakeWindsurf, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, config = hashed
    member = next(m for m in fake.team if not m.groups)  # in no group: only the team knows
    code, out, err = whois(config, user_hash(member.email, SALT), capsys)
    assert (code, out, err) == (0, f"{member.email} ({member.name})\n", "")
    (request,) = fake.requests
    assert request.method == "UserPageAnalytics"
    assert "group_name" not in request.body


def test_an_email_gives_its_pseudonym(
    hashed: tuple[FakeWindsurf, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, config = hashed
    member = fake.team[3]
    code, out, _ = whois(config, member.email.upper(), capsys)
    assert (code, out) == (0, user_hash(member.email, SALT) + "\n")


def test_an_unknown_pseudonym_is_no_such_person_and_exit_1(
    hashed: tuple[FakeWindsurf, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, config = hashed
    unknown = user_hash("nobody@nowhere.example", SALT)
    code, out, err = whois(config, unknown, capsys)
    assert (code, out, err) == (1, "", f"no such person: {unknown}\n")


def test_the_key_and_salt_are_never_printed_even_when_the_api_fails(
    hashed: tuple[FakeWindsurf, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    fake, config = hashed
    fake.stop()
    code, out, err = whois(config, "anyone@x.io", capsys)
    assert code == 1
    assert "the Windsurf API failed" in err
    assert DEMO_SERVICE_KEY not in out + err
    assert SALT not in out + err


def test_a_bad_config_names_the_key_path_and_exits_2(
    write_config: Callable[..., Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config({"labels": {"user": "pseudonym"}})
    code, _, err = whois(config, "x", capsys)
    assert code == 2
    assert "labels.user" in err


def test_in_name_mode_a_name_label_gives_the_email(
    fake_api: FakeWindsurf,
    write_config: Callable[..., Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = write_config({"api": {"url": fake_api.url, "retries": 0}, "labels": {"user": "name"}})
    names = [m.name for m in fake_api.team]
    member = next(m for m in fake_api.team if names.count(m.name) == 1)
    code, out, _ = whois(config, member.name, capsys)
    assert (code, out) == (0, f"{member.email} ({member.name})\n")
