import pytest

from autofeedback.judges import parsing
from autofeedback.judges.parsing import ParseError, parse


@pytest.mark.parametrize("text,aligned", [
    ('{"rationale": "ok", "aligned": true}', True),
    ('```json\n{"aligned": false, "rationale": "two, not three"}\n```', False),
    ('Sure! Here is my verdict: {"rationale": "fine", "aligned": true} Hope that helps.', True),
    ("Yes", True),
    ("Answer: no", False),
    ('"aligned": false, because the count is wrong', False),
])
def test_binary_answers(text, aligned):
    assert parse("pointwise_binary", text).aligned is aligned


@pytest.mark.parametrize("text,score", [
    ('{"rationale": "x", "score": 7}', 7), ("Score: 8/10", 8), ("I'd give it 6 / 10.", 6), ('{"score": "9"}', 9),
])
def test_score_answers(text, score):
    assert parse("pointwise_score", text).score == score


@pytest.mark.parametrize("text,choice", [
    ('{"choice": "B", "rationale": "B has two circles"}', "B"), ('{"choice": "image a"}', "A"),
    ("Choice: tie", "tie"), ("B", "B"), ("Winner: Image A", "A"),
])
def test_pairwise_answers(text, choice):
    assert parse("pairwise", text, n_images=2).choice == choice


@pytest.mark.parametrize("text", [
    "", "   ", "I think the first one is nicer but the second one is closer.", '{"choice": "C"}',
    '{"score": 11}', '{"aligned": "maybe"}', "Image A or image B, hard to say: A? B?",
])
def test_unparseable_answers_raise_never_default(text):
    task = "pairwise" if "choice" in text or "Image" in text or "first" in text else (
        "pointwise_score" if "score" in text else "pointwise_binary")
    with pytest.raises(ParseError):
        parse(task, text, n_images=2)


def test_ambiguous_free_text_is_rejected():
    with pytest.raises(ParseError, match="ambiguous"):
        parse("pairwise", "Choice: A\nActually, choice: B", n_images=2)


def test_listwise_permutation_is_validated():
    assert parse("listwise", '{"ranking": [3, 1, 2]}', n_images=3).ranking == [3, 1, 2]
    assert parse("listwise", "ranking: [2, 1]", n_images=2).ranking == [2, 1]
    assert parse("listwise", "2 > 3 > 1", n_images=3).ranking == [2, 3, 1]
    for bad in ('{"ranking": [1, 1, 2]}', '{"ranking": [1, 2]}', '{"ranking": [0, 1, 2]}', '{"ranking": [1, 2, 4]}'):
        with pytest.raises(ParseError, match="not a permutation"):
            parse("listwise", bad, n_images=3)


def test_vqa_answer_count_is_checked():
    assert parse("vqa", '{"answers": ["2", "red"]}', n_questions=2).answers == ["2", "red"]
    assert parse("vqa", '{"answers": [2, "red"]}', n_questions=2).answers == ["2", "red"]
    with pytest.raises(ParseError, match="1 answers for 2 questions"):
        parse("vqa", '{"answers": ["2"]}', n_questions=2)


def test_truncated_json_is_a_parse_error():
    with pytest.raises(ParseError):
        parse("pointwise_binary", '{"rationale": "the image shows two red circ')


def test_refusal_detection():
    assert parsing.looks_like_refusal("I'm sorry, but I can't help with that.")
    assert parsing.looks_like_refusal("I cannot assist with this request.")
    assert not parsing.looks_like_refusal('{"aligned": false, "rationale": "I\'m sorry, it is wrong"}')
    assert not parsing.looks_like_refusal("Yes")


@pytest.mark.parametrize("expected,answer,ok", [
    ("2", "two", True), ("2", "There are 2 shapes.", True), ("red", "Red.", True), ("circle", "circles", True),
    ("2", "3", False), ("red", "reddish purple and blue", False), ("blue", "light blue", True), ("3", "", False),
])
def test_vqa_answer_matching(expected, answer, ok):
    assert parsing.answers_match(expected, answer) is ok


def test_response_format_is_a_strict_schema():
    fmt = parsing.response_format("pairwise")
    schema = fmt["json_schema"]["schema"]
    assert fmt["json_schema"]["strict"] and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"rationale", "choice"}
