import pytest

from psaguard import InvalidPromptError
from psaguard.conversation import count_image_parts, judged_text, to_conversation, with_hint


def _chat():
    return [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "first question"}]},
        {"role": "assistant", "content": "an answer"},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "second question"}]},
    ]


def test_a_string_becomes_one_user_turn_with_its_images_first():
    conversation = to_conversation("what is it ?", 2)
    assert conversation == [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "what is it ?"}]}
    ]


def test_the_head_reads_every_user_turn_but_not_system_or_assistant_text():
    assert judged_text(to_conversation(_chat(), 2)) == "first question\nsecond question"


def test_hint_goes_to_the_last_user_turn_and_the_input_is_not_mutated():
    chat = _chat()
    hinted = with_hint(to_conversation(chat, 2), " HINT")
    assert hinted[3]["content"][1]["text"] == "second question HINT"
    assert hinted[1] == chat[1] and chat[3]["content"][1]["text"] == "second question"
    image_only = with_hint([{"role": "user", "content": [{"type": "image"}]}], "\nHINT")
    assert image_only[0]["content"][-1] == {"type": "text", "text": "HINT"}
    assert with_hint([{"role": "user", "content": "plain"}], " HINT")[0]["content"] == "plain HINT"


@pytest.mark.parametrize(
    "bad",
    [
        [],
        [{"role": "assistant", "content": "no user turn"}],
        [{"role": "user"}],
        [{"role": "user", "content": [{"type": "video"}]}],
        [{"role": "user", "content": [{"type": "text", "text": 3}]}],
        42,
    ],
)
def test_malformed_conversations_are_refused(bad):
    with pytest.raises(InvalidPromptError):
        to_conversation(bad, 0)


def test_image_parts_must_match_the_images_given():
    assert count_image_parts(_chat()) == 2
    with pytest.raises(InvalidPromptError, match="2 image parts but 3 images"):
        to_conversation(_chat(), 3)
