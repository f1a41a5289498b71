import copy

import pytest
import torch

from psaguard import InvalidInputError
from psaguard.injection import IGNORE_INDEX, ImageLayout, build_llm_inputs, collapse_image_runs

IMG, PAD = 9, 0
START, BREAK, END = 20, 21, 22


def plain(*lengths):
    return ImageLayout.plain(IMG, lengths)


def test_processor_runs_collapse_to_one_placeholder_per_image():
    assert collapse_image_runs([[1, IMG, IMG, IMG, IMG, 2, IMG, IMG]], plain(2, 2, 2)) == [[1, IMG, IMG, 2, IMG]]
    with pytest.raises(InvalidInputError, match="do not belong together"):
        collapse_image_runs([[1, IMG, IMG, IMG]], plain(2, 2))


def test_runs_of_images_with_different_lengths_collapse_across_rows_in_order():
    # Any-resolution families: 2 + 3 placeholders for two adjacent images, then 1 in the next row.
    rows = [[1, IMG, IMG, IMG, IMG, IMG, 2], [IMG, 3]]
    assert collapse_image_runs(rows, plain(2, 3, 1)) == [[1, IMG, IMG, 2], [IMG, 3]]
    with pytest.raises(InvalidInputError, match="do not belong together"):
        collapse_image_runs(rows, plain(3, 3))  # same total, other split
    with pytest.raises(InvalidInputError, match="3 images but pixel_values 4"):
        collapse_image_runs(rows, plain(2, 3, 1, 1))


def test_each_placeholder_becomes_llm_tokens_then_image_embeddings_left_padded():
    llm_tokens = torch.full((1, 2, 4), 7.0)
    embeds = [torch.ones(3, 4), 2 * torch.ones(3, 4), 3 * torch.ones(3, 4)]
    inputs = build_llm_inputs(
        [[1, IMG, 2], [1, IMG, IMG, 2, 5]], embeds, layout=plain(3, 3, 3), pad_token_id=PAD, llm_tokens=llm_tokens
    )
    assert inputs.prompt_lengths == [2 + 5, 3 + 2 * 5]
    assert inputs.input_ids.shape == (2, 13)
    assert inputs.input_ids[0, :6].tolist() == [PAD] * 6 and inputs.attention_mask[0].tolist() == [0] * 6 + [1] * 7
    assert (inputs.input_ids[1] == IMG).sum() == 10 and inputs.attention_mask[1].all()
    for feature, embed in zip(inputs.image_features, embeds):
        assert torch.equal(feature, torch.cat([llm_tokens[0], embed]))
    kwargs = inputs.model_kwargs()
    assert kwargs["mm_encoder_outputs"]["image"].pooler_output == inputs.image_features


def test_without_llm_tokens_the_slots_are_only_the_image_embeddings():
    inputs = build_llm_inputs([[IMG, 1]], [torch.ones(3, 4)], layout=plain(3), pad_token_id=PAD, llm_tokens=None)
    assert inputs.input_ids.tolist() == [[IMG, IMG, IMG, 1]]
    with pytest.raises(InvalidInputError):
        build_llm_inputs([[IMG, IMG]], [torch.ones(3, 4)], layout=plain(3), pad_token_id=PAD, llm_tokens=None)


def test_training_rows_are_right_padded_with_image_slots_and_padding_unlabelled():
    llm_tokens = torch.full((1, 2, 4), 7.0)
    inputs = build_llm_inputs(
        [[1, IMG, 6, 7], [1, IMG, 8]],
        [torch.ones(3, 4), torch.zeros(3, 4)],
        layout=plain(3, 3),
        pad_token_id=PAD,
        llm_tokens=llm_tokens,
        labels=[[IGNORE_INDEX, IGNORE_INDEX, 6, 7], [IGNORE_INDEX, IGNORE_INDEX, 8]],
        padding_side="right",
    )
    assert inputs.input_ids.tolist() == [[1, *[IMG] * 5, 6, 7], [1, *[IMG] * 5, 8, PAD]]
    assert inputs.attention_mask.tolist() == [[1] * 8, [1] * 7 + [0]]
    assert inputs.labels.tolist() == [[IGNORE_INDEX] * 6 + [6, 7], [IGNORE_INDEX] * 6 + [8, IGNORE_INDEX]]
    assert torch.equal(inputs.model_kwargs()["labels"], inputs.labels)


def test_the_lm_loss_reaches_llm_tokens_through_the_models_own_image_path(tiny_model):
    model = copy.deepcopy(tiny_model).requires_grad_(False)  # the fixture is shared: leave its grads alone
    image_id = model.config.image_token_id
    llm_tokens = torch.randn(1, 2, 64, requires_grad=True)
    inputs = build_llm_inputs(
        [[1, 5, image_id, 6, 7]],
        [torch.randn(16, 64)],
        layout=ImageLayout.plain(image_id, [16]),
        pad_token_id=PAD,
        llm_tokens=llm_tokens,
        labels=[[IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 6, 7]],
        padding_side="right",
    )
    seen = []
    handle = model.model.language_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"]), with_kwargs=True
    )
    try:
        out = model(**inputs.model_kwargs())
    finally:
        handle.remove()
    slots = inputs.input_ids[0] == image_id  # what the model scattered into the 2 + 16 image slots
    assert slots.sum() == 18
    torch.testing.assert_close(seen[0][0, slots][:2], llm_tokens[0])
    out.loss.backward()
    assert llm_tokens.grad is not None and llm_tokens.grad.abs().sum() > 0


def test_wrapped_runs_with_row_breaks_collapse_and_widen_before_the_first_image_token():
    # A family writing [START] (IMG IMG [BREAK]) (IMG IMG [END]) per image, with another placeholder id.
    placeholder = 30
    run = [START, IMG, IMG, BREAK, IMG, IMG, END]
    layout = ImageLayout(image_token_id=IMG, runs=[run, run], placeholder_id=placeholder)
    assert collapse_image_runs([[1, *run, 2, *run]], layout) == [[1, placeholder, 2, placeholder]]
    with pytest.raises(InvalidInputError, match="do not belong together"):
        collapse_image_runs([[1, START, IMG, IMG, END, 2, *run]], layout)
    inputs = build_llm_inputs(
        [[1, placeholder, 2]],
        [torch.ones(4, 3)],
        layout=ImageLayout(image_token_id=IMG, runs=[run], placeholder_id=placeholder),
        pad_token_id=PAD,
        llm_tokens=torch.zeros(1, 2, 3),
    )
    assert inputs.input_ids.tolist() == [[1, START, IMG, IMG, IMG, IMG, BREAK, IMG, IMG, END, 2]]


def test_the_layout_decides_how_the_features_reach_the_model():
    stacked = ImageLayout(
        image_token_id=IMG, runs=[[IMG] * 2] * 2, model_inputs=lambda feats, ids: {"image_features": torch.stack(feats)}
    )
    inputs = build_llm_inputs(
        [[IMG, 1], [IMG, 2]], [torch.ones(2, 3), torch.ones(2, 3)], layout=stacked, pad_token_id=PAD, llm_tokens=None
    )
    assert inputs.model_kwargs()["image_features"].shape == (2, 2, 3)
    assert "mm_encoder_outputs" not in inputs.model_kwargs()
