"""serving.properties parsing follows Java .properties rules (plus trailing-space trimming)."""
from container.config.properties import PropertiesSyntaxError, parse_properties

import pytest


def test_comments_separators_and_whitespace():
    text = """
# a comment
! another comment
engine = Python
option.model_id:/opt/ml/model
option.dtype   fp16
   option.rolling_batch=auto
batch_size=4
"""
    assert parse_properties(text) == {
        "engine": "Python", "option.model_id": "/opt/ml/model", "option.dtype": "fp16",
        "option.rolling_batch": "auto", "batch_size": "4"}


def test_trailing_spaces_are_trimmed():
    # DJL users lose hours to `engine=MPI ` with an invisible trailing space.
    assert parse_properties("engine=MPI   \t\n")["engine"] == "MPI"


def test_line_continuation_and_escapes():
    text = "option.long=first,\\\n    second,\\\n  third\nkey\\ with\\ spaces=a\\tb\\u0041\n"
    parsed = parse_properties(text)
    assert parsed["option.long"] == "first,second,third"
    assert parsed["key with spaces"] == "a\tbA"


def test_escaped_separator_in_key_and_later_keys_win():
    parsed = parse_properties("a\\=b=1\nx=1\nx=2\n")
    assert parsed == {"a=b": "1", "x": "2"}


def test_even_backslashes_do_not_continue():
    parsed = parse_properties("path=C:\\\\\nnext=1\n")
    assert parsed == {"path": "C:\\", "next": "1"}


def test_comment_marker_inside_a_continued_value_is_kept():
    assert parse_properties("k=a\\\n#b\n")["k"] == "a#b"


def test_malformed_unicode_escape():
    with pytest.raises(PropertiesSyntaxError, match="line 1"):
        parse_properties("k=\\u12\n")
