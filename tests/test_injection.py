import pytest
import torch

from psaguard import InvalidInputError
from psaguard.injection import build_llm_inputs, collapse_image_runs

IMG, PAD = 9, 0


def test_processor_runs_collapse_to_one_placeholder_per_image():
    assert collapse_image_runs([[1, IMG, IMG, IMG, IMG, 2, IMG, IMG]], IMG, [2, 2, 2]) == [[1, IMG, IMG, 2, IMG]]
    with pytest.raises(InvalidInputError, match="do not belong together"):
        collapse_image_runs([[1, IMG, IMG, IMG]], IMG, [2, 2])


def test_runs_of_images_with_different_lengths_collapse_across_rows_in_order():
    # Any-resolution families: 2 + 3 placeholders for two adjacent images, then 1 in the next row.
    rows = [[1, IMG, IMG, IMG, IMG, IMG, 2], [IMG, 3]]
    assert collapse_image_runs(rows, IMG, [2, 3, 1]) == [[1, IMG, IMG, 2], [IMG, 3]]
    with pytest.raises(InvalidInputError, match="do not belong together"):
        collapse_image_runs(rows, IMG, [3, 3])  # same total, other split
    with pytest.raises(InvalidInputError, match="3 images but pixel_values 4"):
        collapse_image_runs(rows, IMG, [2, 3, 1, 1])


def test_each_placeholder_becomes_llm_tokens_then_image_embeddings_left_padded():
    llm_tokens = torch.full((1, 2, 4), 7.0)
    embeds = [torch.ones(3, 4), 2 * torch.ones(3, 4), 3 * torch.ones(3, 4)]
    inputs = build_llm_inputs(
        [[1, IMG, 2], [1, IMG, IMG, 2, 5]], embeds, image_token_id=IMG, pad_token_id=PAD, llm_tokens=llm_tokens
    )
    assert inputs.prompt_lengths == [2 + 5, 3 + 2 * 5]
    assert inputs.input_ids.shape == (2, 13)
    assert inputs.input_ids[0, :6].tolist() == [PAD] * 6 and inputs.attention_mask[0].tolist() == [0] * 6 + [1] * 7
    assert (inputs.input_ids[1] == IMG).sum() == 10 and inputs.attention_mask[1].all()
    for feature, embed in zip(inputs.image_features, embeds):
        assert torch.equal(feature, torch.cat([llm_tokens[0], embed]))
    kwargs = inputs.generate_kwargs()
    assert kwargs["mm_encoder_outputs"]["image"].pooler_output is inputs.image_features


def test_without_llm_tokens_the_slots_are_only_the_image_embeddings():
    inputs = build_llm_inputs([[IMG, 1]], [torch.ones(3, 4)], image_token_id=IMG, pad_token_id=PAD, llm_tokens=None)
    assert inputs.input_ids.tolist() == [[IMG, IMG, IMG, 1]]
    with pytest.raises(InvalidInputError):
        build_llm_inputs([[IMG, IMG]], [torch.ones(3, 4)], image_token_id=IMG, pad_token_id=PAD, llm_tokens=None)
