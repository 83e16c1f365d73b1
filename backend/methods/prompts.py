"""Prompt encoding for the CLIP text encoders, with prompts longer than 75 tokens.

A prompt is split into chunks of 75 tokens; each chunk is encoded on its own as
BOS + chunk + EOS + padding (77 tokens) and the encodings are concatenated, as
A1111 and Forge do, so long prompts such as the seed README's are not cut off.
Rows of one batch are padded with encodings of empty chunks to the same length.
A prompt of up to 75 tokens encodes exactly as diffusers' own pipelines encode it.
"""

from __future__ import annotations

import math

import torch
from transformers import CLIPTextModel, CLIPTokenizer

CHUNK_TOKENS = 75


def layer_prompt(layer_text: str, prompt: str) -> str:
    """The original's per-layer prompt: "<layer text>, <prompt>", or the prompt alone."""
    return f"{layer_text}, {prompt}" if layer_text else prompt


@torch.no_grad()
def encode_prompts(
    text_encoder: CLIPTextModel, tokenizer: CLIPTokenizer, prompts: list[str]
) -> torch.Tensor:
    """Encode prompts to the UNet's `encoder_hidden_states`.

    Args:
        text_encoder: CLIP text model; its last hidden state (final layer norm
            applied) is the context, as SD1.5 uses it.
        tokenizer: its tokenizer.
        prompts: one text per batch row.

    Returns:
        (len(prompts), 77 * chunks, hidden) in the text encoder's dtype and device.
    """
    token_lists = [
        tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
        for text in prompts
    ]
    chunks = max([1] + [math.ceil(len(tokens) / CHUNK_TOKENS) for tokens in token_lists])
    length = tokenizer.model_max_length
    begin, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    rows = []
    for tokens in token_lists:
        for index in range(chunks):
            piece = tokens[index * CHUNK_TOKENS : (index + 1) * CHUNK_TOKENS]
            row = [begin, *piece, end]
            rows.append(row + [pad] * (length - len(row)))
    device = text_encoder.device
    ids = torch.tensor(rows, dtype=torch.long, device=device)
    hidden = text_encoder(ids).last_hidden_state
    return hidden.reshape(len(prompts), chunks * length, hidden.shape[-1])
