"""Prompt encoding for the CLIP text encoders, with prompts longer than 75 tokens.

A prompt is split into chunks of 75 tokens; each chunk is encoded on its own as
BOS + chunk + EOS + padding (77 tokens) and the encodings are concatenated, as
A1111 and Forge do, so long prompts such as the seed README's are not cut off.
Rows of one batch are padded with encodings of empty chunks to the same length.
A prompt of up to 75 tokens encodes exactly as diffusers' own pipelines encode it.
SDXL takes both encoders' second-to-last layers side by side, and the second's pooled,
projected embedding of the first chunk.
"""

from __future__ import annotations

import math

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CHUNK_TOKENS = 75


def layer_prompt(layer_text: str, prompt: str) -> str:
    """The original's per-layer prompt: "<layer text>, <prompt>", or the prompt alone."""
    return f"{layer_text}, {prompt}" if layer_text else prompt


def _chunked_ids(
    tokenizer: CLIPTokenizer, prompts: list[str], chunks: int | None = None
) -> torch.Tensor:
    """(len(prompts) · chunks, 77) token ids: 75-token chunks with BOS, EOS and padding."""
    token_lists = [
        tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for text in prompts
    ]
    if chunks is None:
        chunks = chunk_count(tokenizer, prompts)
    length = tokenizer.model_max_length
    begin, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    rows = []
    for tokens in token_lists:
        for index in range(chunks):
            piece = tokens[index * CHUNK_TOKENS : (index + 1) * CHUNK_TOKENS]
            row = [begin, *piece, end]
            rows.append(row + [pad] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long)


def chunk_count(tokenizer: CLIPTokenizer, prompts: list[str]) -> int:
    """Chunks of 75 tokens the longest prompt needs (at least one)."""
    lengths = [
        len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids)
        for text in prompts
    ]
    return max([1] + [math.ceil(length / CHUNK_TOKENS) for length in lengths])


@torch.no_grad()
def encode_prompts(
    text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str]
) -> torch.Tensor:
    """Encode prompts to an SD1.5 UNet's `encoder_hidden_states`.

    Args:
        text_encoder: CLIP text model; its last hidden state (final layer norm
            applied) is the context, as SD1.5 uses it.
        tokenizer: its tokenizer.
        prompts: one text per batch row.

    Returns:
        (len(prompts), 77 * chunks, hidden) in the text encoder's dtype and device.
    """
    ids = _chunked_ids(tokenizer, prompts).to(text_encoder.device)
    hidden = text_encoder(ids).last_hidden_state
    return hidden.reshape(len(prompts), -1, hidden.shape[-1])


@torch.no_grad()
def encode_prompts_sdxl(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer_2: CLIPTokenizer,
    prompts: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts for an SDXL UNet: both encoders' penultimate layers, and the pooled text.

    Returns:
        (context, pooled): (len(prompts), 77 * chunks, hidden + hidden_2) — each chunk
        encoded by both encoders, their second-to-last hidden states side by side — and
        (len(prompts), projection) — the second encoder's projected embedding of each
        prompt's first chunk.
    """
    chunks = chunk_count(tokenizer, prompts)
    contexts = []
    pooled = None
    for encoder, chunker in ((text_encoder, tokenizer), (text_encoder_2, tokenizer_2)):
        ids = _chunked_ids(chunker, prompts, chunks).to(encoder.device)
        output = encoder(ids, output_hidden_states=True)
        hidden = output.hidden_states[-2]
        contexts.append(hidden.reshape(len(prompts), -1, hidden.shape[-1]))
        if encoder is text_encoder_2:
            pooled = output.text_embeds.reshape(len(prompts), chunks, -1)[:, 0]
    assert pooled is not None
    return torch.cat(contexts, dim=-1), pooled
