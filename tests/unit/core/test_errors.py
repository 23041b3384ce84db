"""Tests for asdtool/core/errors.py: what AsdError carries and prints, and the one-line helpers few and quote."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from asdtool.core.errors import QUOTE_LIMIT, AsdError, few, quote


# ----------------------------------------------------------------------------- AsdError


def test_an_error_without_a_path_is_its_problem():
    e = AsdError("no training clips found")
    assert str(e) == "no training clips found"
    assert e.problem == "no training clips found" and e.path is None
    assert isinstance(e, Exception) and e.args == ("no training clips found",)


@pytest.mark.parametrize("given", ["data/fan/attributes_00.csv", Path("data/fan/attributes_00.csv")])
def test_an_error_with_a_path_names_it_first(given):
    e = AsdError("line 3 has more columns than the header", given)
    assert str(e) == "data/fan/attributes_00.csv: line 3 has more columns than the header"
    assert e.path == Path("data/fan/attributes_00.csv") and isinstance(e.path, Path)
    assert e.problem == "line 3 has more columns than the header"


def test_the_message_is_one_line_and_the_problem_kept_as_given():
    e = AsdError("cannot read it\n(truncated)\n", Path("a\nb.wav"))
    assert str(e) == "a b.wav: cannot read it (truncated) "
    assert "\n" not in str(e)
    assert e.problem == "cannot read it\n(truncated)\n" and e.path == Path("a\nb.wav")


def test_it_is_raised_and_matched_like_any_exception(tmp_path):
    with pytest.raises(AsdError, match=r"^.*x\.pt: checkpoint file not found$") as info:
        raise AsdError("checkpoint file not found", tmp_path / "x.pt")
    assert info.value.path == tmp_path / "x.pt"
    with pytest.raises(Exception, match="boom"):
        raise AsdError("boom")


def test_an_empty_path_string_still_counts_as_a_path():
    e = AsdError("problem", "")
    assert str(e) == ": problem" and e.path == Path("")


def test_the_message_survives_pickling():  # how an error crosses from a worker process
    e = pickle.loads(pickle.dumps(AsdError("score file is empty", "s/anomaly_score_fan_section_00_test.csv")))
    assert type(e) is AsdError and str(e) == "s/anomaly_score_fan_section_00_test.csv: score file is empty"


# ----------------------------------------------------------------------------- few


def test_few_lists_up_to_n_items_sorted_and_counts_the_rest():
    assert few([]) == ""
    assert few(["b"]) == "b"
    assert few(["c", "a", "b"]) == "a, b, c"
    assert few(["e", "d", "c", "b", "a"]) == "a, b, c and 2 more"
    assert few(["e", "d", "c", "b", "a"], 1) == "a and 4 more"
    assert few(["b", "a"], 2) == "a, b"


def test_few_shows_and_sorts_items_as_strings():
    assert few([10, 9, 2, Path("x/y")]) == "10, 2, 9 and 1 more"  # "10" < "2" < "9" < "x/y"
    assert few({"only"}) == "only"
    assert few((i for i in range(5)), 2) == "0, 1 and 3 more"  # any iterable, once


def test_few_with_n_zero_or_negative_only_counts():
    assert few(["a", "b"], 0) == "2 more"
    assert few(["a", "b"], -3) == "2 more"
    assert few([], 0) == ""


# ----------------------------------------------------------------------------- quote


def test_quote_is_the_repr_of_a_short_value():
    assert quote("abc") == "'abc'"
    assert quote(3) == "3" and quote(None) == "None" and quote(b"\x00a") == "b'\\x00a'"
    assert quote([1, "a"]) == "[1, 'a']" and quote({"k": 1}) == "{'k': 1}"


def test_quote_cuts_a_long_value_to_the_limit():
    text = quote("x" * 1000)
    assert len(text) == QUOTE_LIMIT == 80 and text == "'" + "x" * 76 + "..."
    assert quote("abcdefghij", limit=8) == "'abcd..."
    assert quote("abcdef", limit=8) == "'abcdef'"  # exactly the limit: whole


def test_quote_puts_whitespace_on_one_line():
    assert quote(["a\nb", "c"]) == "['a\\nb', 'c']"  # a string's repr escapes its newlines already
    assert quote(3.5) == "3.5"

    class Shown:
        def __repr__(self):
            return "first line\n  second\tline"

    assert quote(Shown()) == "first line second line"


def test_quote_of_a_huge_value_costs_nothing():
    huge = "y" * 50_000_000
    nested = [[list(range(100_000))] * 1000] * 100  # ten billion items if expanded
    a, b = quote(huge), quote(nested)  # a full repr of `nested` would not fit in memory
    assert a == "'" + "y" * 76 + "..." and len(b) <= QUOTE_LIMIT and b.startswith("[[[0, 1, 2, 3, 4, 5, ...")
