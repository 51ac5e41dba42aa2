"""The command rows are complete, and every handler table agrees with them.

A command is one row (protocol/commands.py) plus its handlers; a missing piece must show up
here, not as an AttributeError or KeyError in a running server or bridge.
"""

from __future__ import annotations

import itertools

import pytest

from ggml_rpc_spec.protocol.columns import COLUMNS
from ggml_rpc_spec.protocol.commands import ROWS, Absent, By, Command
from ggml_rpc_spec.protocol.messages import message_spec
from ggml_rpc_spec.protocol.translation import DECLINES, EMULATIONS
from ggml_rpc_spec.protocol.versions import PROFILES
from ggml_rpc_spec.server.session import HANDLERS

OLDEST = min(p.version for p in PROFILES)


def test_one_row_per_command_in_wire_order():
    assert [row.command for row in ROWS] == list(Command)


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_every_variant_table_covers_its_columns(row):
    """A `By` names real columns and has a layout for every combination of their values that
    a profile of a version having the command can hold."""
    for layouts in (row.request, row.reply):
        if not isinstance(layouts, By):
            continue
        assert set(layouts.columns) <= set(COLUMNS), layouts.columns
        for profile in PROFILES:
            if row.command in profile.commands:
                assert layouts.key(profile) in layouts.table, (profile.name, layouts.key(profile))
        for key in layouts.table:
            values = key if isinstance(key, tuple) else (key,)
            assert len(values) == len(layouts.columns)
            for column, value in zip(layouts.columns, values, strict=True):
                assert value in set(COLUMNS[column]), (column, value)


@pytest.mark.parametrize("profile", PROFILES, ids=str)
def test_every_command_of_every_profile_resolves(profile):
    for command in profile.commands:
        spec = message_spec(profile, command)
        assert spec.request.sizeof() >= 0
        assert spec.reply is None or spec.reply.sizeof() >= 0


def test_data_tails_and_data_replies_say_how_long_they_are():
    for row in ROWS:
        if row.reply_tail == "data":
            assert row.data_size is not None, row.name


def test_commands_follow_from_the_rows():
    """A profile has exactly the commands whose rows begin at its version or earlier."""
    for profile, row in itertools.product(PROFILES, ROWS):
        assert (row.command in profile.commands) == (row.since <= profile.version)


def test_the_server_handles_every_command():
    assert set(HANDLERS) == set(Command)
    for command, handler in HANDLERS.items():
        assert callable(handler), command


@pytest.mark.parametrize("row", ROWS, ids=lambda r: r.name)
def test_the_bridge_knows_what_to_do_for_a_server_without_the_command(row):
    if row.since == OLDEST:
        assert row.absent is Absent.NEVER
        return
    assert row.absent is not Absent.NEVER, f"{row.name} is newer than {OLDEST}: a bridge meets servers without it"
    assert (row.absent is Absent.EMULATE) == (row.command in EMULATIONS)
    assert (row.absent is Absent.DECLINE) == (row.command in DECLINES)
    if row.absent in (Absent.ANSWER, Absent.DECLINE):
        assert row.local_reply is not None


def test_replies_one_side_may_lack_have_a_local_answer():
    """A reply that exists in some versions and not others (acks, the graph status) needs
    the answer a bridge gives where only the client's version has it."""
    for row in ROWS:
        if isinstance(row.reply, By) and None in row.reply.table.values():
            assert row.local_reply is not None, row.name
