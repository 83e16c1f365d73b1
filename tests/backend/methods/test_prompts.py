"""Prompt encoding: diffusers' up to 75 tokens, A1111's chunks, syntax and weights beyond."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from backend.methods.prompts import (
    encode_prompts,
    encode_prompts_sdxl,
    layer_prompt,
    parse_prompt_attention,
    tokenize_prompt,
)
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


def test_a_short_and_a_long_prompt_share_a_length_by_repeating(demo_models: ModelSet) -> None:
    """1 and 3 chunks: the short row is repeated 3 times, as Forge batches them."""
    base = demo_models.base
    both = encode_prompts(base.text_encoder, base.tokenizer, [SHORT, LONG])
    assert both.shape == (2, 3 * 77, base.text_encoder.config.hidden_size)
    short = encode_prompts(base.text_encoder, base.tokenizer, [SHORT])
    long = encode_prompts(base.text_encoder, base.tokenizer, [LONG])
    torch.testing.assert_close(both[0], short[0].repeat(3, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(both[1], long[0], rtol=0, atol=1e-6)


def test_two_and_three_chunks_meet_at_six(demo_models: ModelSet) -> None:
    base = demo_models.base
    two = " ".join(LONG.split()[:100])
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [two, LONG])
    alone = encode_prompts(base.text_encoder, base.tokenizer, [two])
    assert encoded.shape[1] == 6 * 77
    torch.testing.assert_close(encoded[0], alone[0].repeat(3, 1), rtol=0, atol=1e-6)


def test_attention_over_a_repeated_context_is_attention_over_it_once() -> None:
    """Why repeating is exact: each key appears k times, softmax weights divide by k."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(1, 8, 16, 32, generator=generator)
    keys, values = torch.randn(2, 1, 8, 77, 32, generator=generator)
    once = F.scaled_dot_product_attention(query, keys, values)
    thrice = F.scaled_dot_product_attention(
        query, keys.repeat(1, 1, 3, 1), values.repeat(1, 1, 3, 1)
    )
    torch.testing.assert_close(once, thrice, rtol=1e-5, atol=1e-6)


def test_chunk_counts_whose_common_multiple_is_too_long_are_padded_with_empty_chunks(
    demo_models: ModelSet,
) -> None:
    base = demo_models.base
    words = (WORDS * 80)[: 5 * 75]
    four, five = " ".join(words[: 4 * 75]), " ".join(words)  # 20 chunks in common > 12
    encoded = encode_prompts(base.text_encoder, base.tokenizer, [four, five])
    empty = encode_prompts(base.text_encoder, base.tokenizer, [""])
    assert encoded.shape[1] == 5 * 77
    torch.testing.assert_close(encoded[0, 4 * 77 :], empty[0], rtol=0, atol=1e-6)


# -- A1111's prompt syntax ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [  # A1111's own examples (prompt_parser.parse_prompt_attention's doctests)
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("[dark] sky", [("dark", 1 / 1.1), (" sky", 1.0)]),
        ("(red:1.5)", [("red", 1.5)]),
        ("a cat BREAK a dog", [("a cat", 1.0), ("BREAK", -1.0), ("a dog", 1.0)]),
        ("BREAK", [("", 1.0), ("BREAK", -1.0), ("", 1.0)]),
        ("a breakfast", [("a breakfast", 1.0)]),  # only the word BREAK, in capitals
        ("", [("", 1.0)]),
    ],
)
def test_prompt_attention_is_parsed_as_a1111_parses_it(
    text: str, expected: list[tuple[str, float]]
) -> None:
    assert parse_prompt_attention(text) == expected


def test_each_token_gets_the_weight_of_its_words(demo_models: ModelSet) -> None:
    tokenizer = demo_models.base.tokenizer
    (chunk,) = tokenize_prompt(tokenizer, "a ((red)) apple on [a] (wooden:0.5) table")
    ids = _token_ids(demo_models, "a red apple on a wooden table")
    assert list(chunk.tokens[1:8]) == ids and len(chunk.tokens) == 77
    expected = [1.0, 1.1 * 1.1, 1.0, 1.0, 1 / 1.1, 0.5, 1.0]
    assert list(chunk.weights[1:8]) == pytest.approx(expected)
    assert chunk.weights[0] == 1.0 and set(chunk.weights[8:]) == {1.0}  # BOS, EOS, padding


def test_break_ends_a_chunk_at_once(demo_models: ModelSet) -> None:
    tokenizer = demo_models.base.tokenizer
    begin, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    first, second = tokenize_prompt(tokenizer, "a red apple BREAK a wooden table")
    assert first.tokens == (begin, *_token_ids(demo_models, "a red apple"), *[end] * 73)
    assert second.tokens[:5] == (begin, *_token_ids(demo_models, "a wooden table"), end)


def test_a_full_chunk_breaks_after_a_comma_less_than_20_tokens_back(
    demo_models: ModelSet,
) -> None:
    tokenizer = demo_models.base.tokenizer
    words = (WORDS * 20)[:80]
    near = " ".join(words[:70]) + ", " + " ".join(words[70:])  # comma after token 70
    first, second = tokenize_prompt(tokenizer, near)
    ids = _token_ids(demo_models, near)
    assert first.tokens[1:72] == tuple(ids[:71])  # up to and with the comma
    assert second.tokens[1:11] == tuple(ids[71:])
    far = " ".join(words[:40]) + ", " + " ".join(words[40:])  # 35 tokens after the comma
    first, second = tokenize_prompt(tokenizer, far)
    assert first.tokens[1:76] == tuple(_token_ids(demo_models, far)[:75])  # a plain cut


@torch.no_grad()
def test_weights_scale_each_tokens_hidden_state_and_keep_the_chunks_mean(
    demo_models: ModelSet,
) -> None:
    base = demo_models.base
    weighted = encode_prompts(base.text_encoder, base.tokenizer, ["a (red:1.5) [apple]"])
    ids = base.tokenizer("a red apple", padding="max_length", max_length=77).input_ids
    plain = _encode_ids(demo_models, ids)[0]
    weights = torch.ones(77)
    weights[2], weights[3] = 1.5, 1 / 1.1
    expected = plain * weights[:, None]
    expected = expected * (plain.mean() / expected.mean())
    torch.testing.assert_close(weighted[0], expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(weighted[0], plain, atol=1e-3)


@torch.no_grad()
def test_sdxl_weighs_both_encoders_and_pools_the_first_chunk_unweighted(
    demo_sdxl_models: ModelSet,
) -> None:
    base = demo_sdxl_models.base
    assert base.text_encoder_2 is not None and base.tokenizer_2 is not None
    encoders = (base.text_encoder, base.tokenizer, base.text_encoder_2, base.tokenizer_2)
    weighted, pooled = encode_prompts_sdxl(*encoders, ["a (red:1.4) apple BREAK a table"])
    plain, plain_pooled = encode_prompts_sdxl(*encoders, ["a red apple BREAK a table"])
    assert weighted.shape[1] == 2 * 77
    torch.testing.assert_close(pooled, plain_pooled)  # the pooled text ignores weights
    width = base.text_encoder.config.hidden_size
    halves = [(weighted[0, :77, :width], plain[0, :77, :width])]
    halves.append((weighted[0, :77, width:], plain[0, :77, width:]))
    for half, other in halves:  # each encoder's own weighting, its chunk's mean kept
        assert not torch.allclose(half, other, atol=1e-4)
        assert half.mean().item() == pytest.approx(other.mean().item(), rel=1e-4)
    torch.testing.assert_close(weighted[0, 77:], plain[0, 77:])  # the unweighted chunk


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
