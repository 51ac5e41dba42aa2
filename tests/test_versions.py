"""The profile table: lookups, and that it says what upstream's sources say."""

from __future__ import annotations

import pytest

from ggml_rpc_spec.protocol import PROFILES, Command, UnsupportedVersion, message_spec, parse_version, profile_for


def test_lookup():
    assert profile_for((3, 6, 1)).name == "3.6.1"
    assert profile_for("3.6").name == "3.6.1"  # major.minor picks the newest patch
    assert profile_for("v7.0.0").name == "7.0.0"
    assert parse_version("4.0") == (4, 0, 2)


def test_unknown_versions_name_what_is_supported():
    with pytest.raises(UnsupportedVersion, match=r"6\.0\.0 is not supported; supported: 2\.0\.0, 3\.6\.0, 3\.6\.1"):
        profile_for((6, 0, 0))
    with pytest.raises(UnsupportedVersion, match="not a version"):
        profile_for("latest")
    with pytest.raises(UnsupportedVersion):
        profile_for((3, 6, 2))


def test_unknown_patch_maps_leniently_when_asked():
    assert profile_for((3, 6, 9), lenient_patch=True).name == "3.6.1"
    assert profile_for((7, 0, 3), lenient_patch=True).name == "7.0.0"
    with pytest.raises(UnsupportedVersion):
        profile_for((7, 1, 0), lenient_patch=True)


def test_profiles_are_ordered_and_unique():
    versions = [p.version for p in PROFILES]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_command_sets_follow_upstream_enums():
    counts = {p.name: len(p.commands) for p in PROFILES}
    assert counts["2.0.0"] == 15 and counts["3.6.1"] == 17 and counts["5.0.0"] == 18 and counts["7.0.0"] == 18
    for p in PROFILES:
        assert Command.HELLO in p.commands


def test_one_way_commands_per_version():
    def one_way(name):
        p = profile_for(name)
        return {c.name for c in p.commands if not message_spec(p, c).has_reply}

    assert one_way("2.0.0") == {"SET_TENSOR"}
    assert one_way("3.6.1") == {"SET_TENSOR", "GRAPH_COMPUTE", "GRAPH_RECOMPUTE"}
    assert one_way("7.0.0") == {"SET_TENSOR", "GRAPH_COMPUTE", "GRAPH_RECOMPUTE", "FREE_BUFFER", "BUFFER_CLEAR",
                                "INIT_TENSOR", "MEMSET_TENSOR"}
