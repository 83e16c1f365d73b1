"""Prompt encoding: diffusers' encoding up to 75 tokens, A1111's 75-token chunks beyond."""

from __future__ import annotations

import pytest
import torch

from backend.methods.prompts import encode_prompts, layer_prompt
from backend.model_set import ModelSet

SHORT = "an apple, 4k, high quality"
# 7 words that are one token each: 200 words are 200 tokens, so 3 chunks of 75
WORDS = ["a", "red", "apple", "on", "a", "wooden", "table"]
LONG = " ".join(WORDS[index % len(WORDS)] for index in range(200))


def _token_ids(models: ModelSet, text: str) -> list[int]:
    return models.base.tokenizer(text, add_special_tokens=False, verbose=False).input_ids


@torch.no_grad()
def _encode_ids(models: ModelSet, ids: list[int]) -> torch.Tensor:
    return models.base.text_encoder(torch.tensor([ids])).last_hidden_state


def test_the_long_prompt_has_200_tokens(demo_models: ModelSet) -> None:
    assert len(_token_ids(demo_models, LONG)) == 200


def test_a_short_prompt_encodes_as_the_tokenizers_padded_ids(demo_models: ModelSet) -> None:
    base = demo_models.base
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [SHORT])
    ids = base.tokenizer(SHORT, padding="max_length", max_length=77).input_ids
    assert encoded.shape == (1, 77, base.text_encoder.config.hidden_size)
    assert torch.equal(encoded, _encode_ids(demo_models, ids))


def test_an_empty_prompt_is_one_chunk_of_begin_end_and_padding(demo_models: ModelSet) -> None:
    base = demo_models.base
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [""])
    ids = [base.tokenizer.bos_token_id] + [base.tokenizer.eos_token_id] * 76
    assert torch.equal(encoded, _encode_ids(demo_models, ids))


def test_a_200_token_prompt_gives_three_chunks_of_77(demo_models: ModelSet) -> None:
    base = demo_models.base
    tokens = _token_ids(demo_models, LONG)
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [LONG])
    assert encoded.shape == (1, 3 * 77, base.text_encoder.config.hidden_size)
    begin, end = base.tokenizer.bos_token_id, base.tokenizer.eos_token_id
    first = _encode_ids(demo_models, [begin, *tokens[:75], end])
    assert torch.equal(encoded[:, :77], first)
    # the last chunk holds the 50 tokens left, then end and padding
    last = _encode_ids(demo_models, [begin, *tokens[150:], end] + [end] * 25)
    assert torch.equal(encoded[:, 154:], last)


def test_the_first_chunk_equals_encoding_the_first_75_tokens_alone(demo_models: ModelSet) -> None:
    base = demo_models.base
    first_75 = " ".join(LONG.split()[:75])
    alone = encode_prompts(base.text_encoder, base.tokenizer, [first_75])
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [LONG])
    assert alone.shape[1] == 77
    assert torch.equal(encoded[:, :77], alone)


def test_75_tokens_fit_one_chunk_and_76_need_two(demo_models: ModelSet) -> None:
    base = demo_models.base
    words = LONG.split()
    lengths = [
        encode_prompts(base.text_encoder, base.tokenizer, [" ".join(words[:count])]).shape[1]
        for count in (75, 76)
    ]
    assert lengths == [77, 2 * 77]


def test_a_short_and_a_long_prompt_share_the_long_length(demo_models: ModelSet) -> None:
    base = demo_models.base
    both = encode_prompts(base.text_encoder, base.tokenizer, [SHORT, LONG])
    assert both.shape == (2, 3 * 77, base.text_encoder.config.hidden_size)
    short = encode_prompts(base.text_encoder, base.tokenizer, [SHORT])
    empty = encode_prompts(base.text_encoder, base.tokenizer, [""])
    long = encode_prompts(base.text_encoder, base.tokenizer, [LONG])
    # the short row is its own encoding, then encodings of empty chunks
    torch.testing.assert_close(both[0, :77], short[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[0, 77:154], empty[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[0, 154:], empty[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(both[1], long[0], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("layer_text", "prompt", "expected"),
    [
        ("a glass cup", "on a table, 4k", "a glass cup, on a table, 4k"),
        ("", "on a table, 4k", "on a table, 4k"),
        ("a glass cup", "", "a glass cup, "),
    ],
)
def test_a_layer_prompt_is_prepended_to_the_prompt(
    layer_text: str, prompt: str, expected: str
) -> None:
    assert layer_prompt(layer_text, prompt) == expected
