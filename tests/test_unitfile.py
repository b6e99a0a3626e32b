"""The unit-file model: lossless parsing, systemd's reading rules, and escaping that keeps every
value inside its field (checked against our mirror of systemd's parser with hypothesis, and
against the real systemd with `systemd-analyze verify`)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from rktd_units.unitfile import (
    LONG_LINE_MAX,
    MAX_ARG_STRLEN,
    Raw,
    UnitFile,
    UnitFileError,
    escape_specifiers,
    exec_line,
    expand_env,
    expand_specifiers,
    parse,
    quote_word,
    split_exec,
)
from tests.helpers import systemd_units

# Text a manifest could carry: anything but NUL and lone surrogates (the JSON parser refuses those).
ARG_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40)
HOSTILE = [
    "",
    " ",
    "a b",
    "line\nExecStartPre=/bin/evil",
    "cr\rreturn",
    "trailing\\",
    "\\",
    "\\\\",
    '"',
    "'",
    "\"quoted\" 'single'",
    "%n",
    "%%",
    "%",
    "100%",
    "$VAR",
    "$",
    "$$",
    "${HOME}",
    ";",
    "\\;",
    "a;b",
    "--net=evil; /bin/sh",
    "tab\there",
    "bell\a\x1b[31m",
    "del\x7f",
    "é ü 漢字 🐳",
    "\u2028line separator",
    "\x0bvt\x0cff",
    "x" * 5000,
]


# -- Parsing ---------------------------------------------------------------------------------------

LOSSLESS = [
    "",
    "[Unit]\nDescription=x\n",
    "# head\n; also a comment\n\n[Unit]\n  Description = spaced  \n\n[Service]\nExecStart=/bin/true\n",
    "[Service]\nExecStart=/bin/echo a \\\n    b \\\n# comment inside\n    c\nType=simple",
    "[A]\r\nK=v\r\n[B]\rK2=v2\rK3=v3\x00[C]\nk=\n",
    "[Service]\nEnvironment=A=1 \\\\\nUser=x\n",
    "[X]\nk=v\\",
]


@pytest.mark.parametrize("text", LOSSLESS)
def test_parse_is_lossless(text: str) -> None:
    assert str(parse(text)) == text


def test_continuation_lines_join_as_systemd_reads_them() -> None:
    unit = parse(LOSSLESS[3])
    # The backslash becomes a space and the comment line inside the continuation is dropped.
    assert unit.get("Service", "ExecStart") == ["/bin/echo a      b      c"]
    assert unit.get("Service", "Type") == ["simple"]
    assert split_exec(unit.get("Service", "ExecStart")[0])[1] == [["/bin/echo", "a", "b", "c"]]


def test_an_even_number_of_backslashes_does_not_continue() -> None:
    unit = parse(LOSSLESS[5])
    assert unit.get("Service", "Environment") == ["A=1 \\\\"]
    assert unit.get("Service", "User") == ["x"]


def test_line_ends_are_systemds_not_pythons() -> None:
    unit = parse(LOSSLESS[4])
    assert unit.section_names() == ["A", "B", "C"]
    assert unit.get("B", "K3") == ["v3"]
    # Python's other line breaks (U+2028, \v, \f) are ordinary characters to systemd.
    assert parse("[A]\nk=a\u2028b\x0bc\n").get("A", "k") == ["a\u2028b\x0bc"]


def test_keys_and_sections_repeat_in_order() -> None:
    unit = parse("[S]\nk=1\n[T]\nk=x\n[S]\nk=2\nk=3\n")
    assert unit.get("S", "k") == ["1", "2", "3"]
    assert unit.last("S", "k") == "3"
    assert unit.last("S", "missing") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k=v\n", "outside of a section"),
        ("[Unit]\njunk\n", "missing '='"),
        ("[Unit\n", "invalid section header"),
        ("[Unit]\nk=" + "x" * LONG_LINE_MAX + "\n", "longer than"),
    ],
)
def test_parse_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(UnitFileError, match=message) as e:
        parse(text, "x.service")
    assert "x.service:" in str(e.value)


# -- Building --------------------------------------------------------------------------------------


def test_add_builds_sections_that_parse_back() -> None:
    unit = UnitFile()
    unit.add_comment("generated")
    unit.add("Unit", "Description", "d")
    unit.add("Service", "ExecStart", exec_line(["/bin/x", "a b"]))
    unit.add("Unit", "After", "y.service")
    text = str(unit)
    assert text == (
        '# generated\n\n[Unit]\nDescription=d\nAfter=y.service\n\n[Service]\nExecStart=/bin/x "a b"\n'
    )
    again = parse(text)
    assert str(again) == text
    assert again.get("Unit", "After") == ["y.service"]


@pytest.mark.parametrize(
    "value",
    ["a\nb", "a\rb", "a\x00b", "a\x1bb", "trailing\\", " lead", "trail ", "bad\udcffutf8"],
)
def test_add_refuses_values_systemd_would_read_differently(value: str) -> None:
    with pytest.raises(UnitFileError, match=r"Unit\.Description"):
        UnitFile().add("Unit", "Description", value)


def test_add_refuses_lines_over_systemds_limit() -> None:
    UnitFile().add("Unit", "Description", "x" * (LONG_LINE_MAX - 100))
    with pytest.raises(UnitFileError, match="line limit"):
        UnitFile().add("Unit", "Description", "x" * LONG_LINE_MAX)


@pytest.mark.parametrize("key", ["", "a b", "a=b", "Kéy", "[x]"])
def test_add_refuses_bad_keys(key: str) -> None:
    with pytest.raises(UnitFileError):
        UnitFile().add("Unit", key, "v")


# -- Escaping --------------------------------------------------------------------------------------


@pytest.mark.parametrize("word", HOSTILE)
def test_hostile_words_read_back_as_themselves(word: str) -> None:
    line = exec_line(["/usr/bin/rktd", word, "next"])
    assert split_exec(line) == ("", [["/usr/bin/rktd", word, "next"]])
    unit = UnitFile()
    unit.add("Service", "ExecStart", line)  # and it is a single, valid unit-file line
    assert parse(str(unit)).get("Service", "ExecStart") == [line]


def test_quoting_examples() -> None:
    assert quote_word("plain-word_1.2/x:y=z,@+") == "plain-word_1.2/x:y=z,@+"
    assert quote_word("") == '""'
    assert quote_word("%n") == '"%%n"'
    assert quote_word("$X") == '"$$X"'
    assert quote_word("$X", env=False) == '"$X"'
    assert quote_word('a"b\\c\nd\x01') == '"a\\"b\\\\c\\nd\\x01"'
    assert quote_word(Raw("%i")) == "%i"
    assert exec_line(["/bin/x", ";"], "-") == '-/bin/x ";"'


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["relative"], "absolute"),
        (["/bin/sp ace"], "plain"),
        (["/bin/x", "a\x00b"], "NUL"),
        (["/bin/x", "\udcff"], "UTF-8"),
        (["/bin/x", "x" * MAX_ARG_STRLEN], "argument limit"),
    ],
)
def test_exec_line_refuses(argv: list[str], message: str) -> None:
    with pytest.raises(UnitFileError, match=message):
        exec_line(argv)


@given(st.lists(ARG_TEXT, max_size=6), st.sampled_from(["", "-", "@", "+", "-!"]))
@example(HOSTILE, "-")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_random_argv_round_trips_through_a_unit_file(args: list[str], prefix: str) -> None:
    argv = ["/usr/bin/rktd", *args]
    unit = UnitFile()
    unit.add("Service", "ExecStart", exec_line(argv, prefix))
    again = parse(str(unit))
    assert again.section_names() == ["Service"]
    assert [a.key for _, a in again.assignments()] == ["ExecStart"]
    assert split_exec(again.get("Service", "ExecStart")[0]) == (prefix, [argv])


@given(ARG_TEXT)
def test_specifier_escaping_round_trips(text: str) -> None:
    assert expand_specifiers(escape_specifiers(text), {}) == text


@given(st.text(max_size=60))
@example("\\")  # a lone continuation at the end of the file (found by this test)
@example("[A]\nK=v\n \\")
def test_parse_of_any_text_is_lossless_or_an_error(text: str) -> None:
    try:
        unit = parse(text)
    except UnitFileError:
        return
    assert str(unit) == text


# -- Reading command lines as systemd does ----------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "prefix", "commands"),
    [
        ("/bin/a b ; /bin/c d", "", [["/bin/a", "b"], ["/bin/c", "d"]]),
        ("/bin/a \\; b", "", [["/bin/a", ";", "b"]]),
        ('/bin/a ";" b', "", [["/bin/a", ";", "b"]]),
        ("-@/bin/a x", "-@", [["/bin/a", "x"]]),
        ("/bin/a \"b c\"d'e f'", "", [["/bin/a", "b cde f"]]),
        ("/bin/a \\x41\\101\\u00e9\\s", "", [["/bin/a", "AAé "]]),
        ("/bin/a %% $$x ${Y}z $Y", "", [["/bin/a", "%", "$x", "y1 y2z", "y1", "y2"]]),
    ],
)
def test_split_exec_follows_systemd(line: str, prefix: str, commands: list[list[str]]) -> None:
    assert split_exec(line, env={"Y": "y1 y2"}) == (prefix, commands)


@pytest.mark.parametrize("line", ['/bin/a "open', "/bin/a \\q", "/bin/a \\x0", "/bin/a \\x00", "/bin/a %n"])
def test_split_exec_refuses_what_systemd_refuses(line: str) -> None:
    with pytest.raises(UnitFileError):
        split_exec(line)


def test_expand_env_mirrors_runtime_expansion() -> None:
    assert expand_env(["$$", "a$b", "${X}", "$X", "$1"], {"X": "p q"}) == ["$", "a$b", "p q", "p", "q", "$1"]


# -- The real systemd ------------------------------------------------------------------------------


def _random_words(rng: random.Random, n: int) -> list[str]:
    alphabet = "ab \t\n\r\"'\\%$;{}~#!*?é漢🐳\x01\x7f"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))) for _ in range(n)]


@pytest.mark.skipif(not systemd_units.available(), reason="systemd-analyze is not installed")
def test_real_systemd_reads_our_command_lines_back(tmp_path: Path) -> None:
    rng = random.Random(4242)
    cases = {f"hostile{i}.service": ["/usr/bin/rktd", "run", w, "end"] for i, w in enumerate(HOSTILE)}
    cases.update({f"random{i}.service": ["/usr/bin/rktd", *_random_words(rng, 6)] for i in range(40)})
    cases["long.service"] = ["/usr/bin/rktd", "x" * (MAX_ARG_STRLEN - 1)]
    files = {}
    for name, argv in cases.items():
        unit = UnitFile()
        unit.add("Unit", "Description", escape_specifiers("test %n 100%"))
        unit.add("Service", "ExecStart", exec_line(argv))
        files[name] = str(unit)
    result = systemd_units.SystemdRoot(tmp_path / "root").verify(files)
    assert result.clean, result.stderr
    for name, argv in cases.items():
        parsed = result.exec_argv(name, "ExecStart")
        # The dump shows argv before run-time `$` expansion, which turns `$$` back into `$`.
        assert [expand_env(a, {}) for a in parsed] == [argv], name
        assert result.field(name, "Description") == ["test %n 100%"]
