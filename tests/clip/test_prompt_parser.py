import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nodes.clip.prompt_parser import PromptChunk, parse_prompt, parse_weights, split_top_level


def runs(text):
    return [(r.text, pytest.approx(r.weight)) for r in parse_weights(text)]


def test_plain_text_is_one_run():
    assert runs("a photo of a cat") == [("a photo of a cat", 1.0)]


def test_parentheses_multiply_by_1_1_per_level():
    assert runs("a (b) ((c)) (((d)))") == [("a ", 1.0), ("b", 1.1), (" ", 1.0), ("c", 1.21), (" ", 1.0),
                                            ("d", 1.331)]


def test_explicit_weight_replaces_the_enclosing_weight():
    assert runs("(word:1.3)") == [("word", 1.3)]
    assert runs("((word:0.5))") == [("word", 0.5)]          # explicit weight is absolute
    assert runs("((word):1.5)") == [("word", 1.65)]        # inner group multiplies the explicit one
    assert runs("(a (b:2) c:0.5)") == [("a ", 0.5), ("b", 2.0), (" c", 0.5)]


def test_weight_is_taken_after_the_last_colon_and_must_parse():
    assert runs("(a:1.2:1.4)") == [("a:1.2", 1.4)]
    assert runs("(style:anime)") == [("style:anime", 1.1)]
    assert runs("(:1.2)") == [(":1.2", 1.1)]               # a leading colon is never a separator
    assert runs("(x: 2 )") == [("x", 2.0)]                 # Python float() accepts surrounding spaces


def test_escaped_parentheses_are_literal():
    assert runs(r"\(not weighted\)") == [("(not weighted)", 1.0)]
    assert runs(r"(a \(b\):1.5)") == [("a (b)", 1.5)]


def test_square_brackets_mean_nothing_in_comfyui():
    assert runs("[word] [[x]]") == [("[word] [[x]]", 1.0)]


def test_unmatched_parentheses_stay_literal():
    assert runs("(open") == [("(open", 1.0)]
    # An unmatched ")" leaves the depth negative, so the later group is literal too (ComfyUI quirk).
    assert runs("a) (b)") == [("a) (b)", 1.0)]
    assert split_top_level("x(y)z") == ["x", "(y)", "z"]


def test_empty_group_produces_nothing():
    assert runs("a () b") == [("a ", 1.0), (" b", 1.0)]


def test_deep_nesting_does_not_overflow():
    depth = 3000
    out = parse_weights("(" * depth + "x" + ")" * depth)
    assert [r.text for r in out] == ["x"]


def test_embedding_references():
    assert parse_prompt("cat embedding:foo, dog") == [
        PromptChunk("cat", 1.0), PromptChunk("foo,", 1.0, is_embedding=True, leftover="dog")]
    assert parse_prompt("(embedding:bar:1.2)") == [PromptChunk("bar", 1.2, is_embedding=True)]
    assert parse_prompt("embedding:first\nembedding:second  x  y") == [
        PromptChunk("first", 1.0, is_embedding=True), PromptChunk("second", 1.0, is_embedding=True, leftover="x y")]


def test_embedding_needs_a_space_or_newline_before_it():
    assert parse_prompt("a,embedding:x") == [PromptChunk("a,embedding:x", 1.0)]


def test_empty_embedding_name_is_kept_as_an_empty_reference():
    assert parse_prompt("a embedding:") == [PromptChunk("a", 1.0), PromptChunk("", 1.0, is_embedding=True)]


PROMPT_ALPHABET = st.sampled_from(list("()[]:\\ \n,.ab1209e-") + ["embedding:", "\\(", "\\)", "(x:1.5)", "é", "\x00"])


@settings(max_examples=300, deadline=None)
@given(st.lists(PROMPT_ALPHABET, max_size=60).map("".join))
def test_fuzz_grammar_never_crashes(text):
    for chunk in parse_prompt(text):
        assert isinstance(chunk.weight, float)
        assert isinstance(chunk.text, str)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_arbitrary_unicode_never_crashes(text):
    parse_prompt(text)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_characters="()\\\x00"), max_size=80))
def test_text_without_parentheses_is_kept_verbatim(text):
    joined = "".join(r.text for r in parse_weights(text))
    assert joined == text
    assert all(r.weight == 1.0 for r in parse_weights(text))
