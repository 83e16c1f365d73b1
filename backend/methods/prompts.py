"""Prompt encoding for the CLIP text encoders, as A1111 and Forge encode a prompt.

- Emphasis: `(words)` weighs them ×1.1, `[words]` ÷1.1, `(words:1.3)` ×1.3; brackets nest
  and multiply, `\\(` and the like are literal, unclosed brackets close at the end
  (`parse_prompt_attention`, A1111's `prompt_parser.parse_prompt_attention`).
- Chunks: the weighted fragments are tokenized one by one and laid into chunks of 75
  tokens, each encoded on its own as BOS + chunk + EOS + padding (77 tokens) and
  concatenated, so long prompts are not cut off. A chunk that fills up within 20 tokens of
  a comma breaks after that comma and carries the rest over (A1111's "prompt word wrap
  length limit", 20 by default); `BREAK` ends a chunk at once (`tokenize_prompt`).
- Weights ("Original" emphasis, A1111's default): each chunk's hidden states are
  multiplied token by token by their weights, then rescaled so that the chunk keeps the
  mean it had (`sd_emphasis.EmphasisOriginal`). A prompt without weights encodes exactly
  as diffusers' pipelines encode it.
- Rows of other lengths: attention over a context repeated k times equals attention over
  it once, so rows of 1, 2 or 3 chunks are repeated to a common length (the least common
  multiple, as Forge batches a cond with an uncond of another length) and each row
  attends as it would alone. Should that length exceed `MAX_REPEATED_CHUNKS`, rows are
  padded with encodings of an empty chunk instead (A1111's `pad_cond_uncond`).

SDXL takes both encoders' second-to-last layers side by side, each weighted on its own,
and the second's pooled, projected embedding of the first chunk, unweighted.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

CHUNK_TOKENS = 75
"""Prompt tokens per chunk; with BOS and EOS a chunk is 77 tokens."""

COMMA_BACKTRACK = 20
"""A chunk that fills up within this many tokens of a comma breaks after the comma."""

MAX_REPEATED_CHUNKS = 12
"""Rows are repeated to a common length up to this many chunks, else padded."""

ROUND_BRACKET = 1.1
SQUARE_BRACKET = 1 / 1.1

_ATTENTION = re.compile(
    r"""
    \\\( | \\\) | \\\[ | \\\] | \\\\ | \\   # escapes: a literal bracket or backslash
    | \( | \[                                # openers
    | :\s*([+-]?[.\d]+)\s*\)                 # ":1.3)" closes a weighted round bracket
    | \) | \]                                # closers
    | [^\\()\[\]:]+                          # text
    | :                                      # a colon that weighs nothing
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_BREAK_MARK = ("BREAK", -1.0)


def layer_prompt(layer_text: str, prompt: str) -> str:
    """The original's per-layer prompt: "<layer text>, <prompt>", or the prompt alone."""
    return f"{layer_text}, {prompt}" if layer_text else prompt


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs, as A1111 does.

    `BREAK` (the word, in capitals) becomes the run ("BREAK", -1). Neighbouring runs of
    the same weight merge; an empty prompt is [("", 1.0)].

    >>> parse_prompt_attention("a (red:1.2) apple BREAK sky")
    [('a ', 1.0), ('red', 1.2), (' apple', 1.0), ('BREAK', -1.0), ('sky', 1.0)]
    """
    runs: list[list[str | float]] = []
    round_open: list[int] = []
    square_open: list[int] = []

    def weigh_from(start: int, factor: float) -> None:
        for run in runs[start:]:
            run[1] = float(run[1]) * factor

    for match in _ATTENTION.finditer(text):
        part, weight = match.group(0), match.group(1)
        if part.startswith("\\"):
            runs.append([part[1:], 1.0])
        elif part == "(":
            round_open.append(len(runs))
        elif part == "[":
            square_open.append(len(runs))
        elif weight is not None and round_open:
            weigh_from(round_open.pop(), float(weight))
        elif part == ")" and round_open:
            weigh_from(round_open.pop(), ROUND_BRACKET)
        elif part == "]" and square_open:
            weigh_from(square_open.pop(), SQUARE_BRACKET)
        else:
            for index, piece in enumerate(_BREAK.split(part)):
                if index:
                    runs.append(list(_BREAK_MARK))
                runs.append([piece, 1.0])
    for start in round_open:
        weigh_from(start, ROUND_BRACKET)
    for start in square_open:
        weigh_from(start, SQUARE_BRACKET)

    merged: list[tuple[str, float]] = []
    for piece, weight in runs or [["", 1.0]]:
        if merged and merged[-1][1] == weight:
            merged[-1] = (merged[-1][0] + str(piece), float(weight))
        else:
            merged.append((str(piece), float(weight)))
    return merged


@dataclass(frozen=True)
class PromptChunk:
    """One 77-token chunk: BOS, up to 75 prompt tokens, EOS padding, EOS; and their weights."""

    tokens: tuple[int, ...]
    weights: tuple[float, ...]


def tokenize_prompt(tokenizer: CLIPTokenizer, text: str) -> list[PromptChunk]:
    """A prompt's chunks, as A1111's `tokenize_line` lays them out (no embeddings).

    Padding inside a chunk is EOS, as in A1111; `_chunk_ids` turns it into the
    tokenizer's pad token where that differs (SDXL's second encoder).
    """
    runs = parse_prompt_attention(text)
    ids = tokenizer(
        [piece for piece, _ in runs], add_special_tokens=False, truncation=False, verbose=False
    ).input_ids
    comma = tokenizer.get_vocab().get(",</w>")
    begin, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    chunks: list[PromptChunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def close() -> None:
        nonlocal tokens, weights, last_comma
        pad = CHUNK_TOKENS - len(tokens)
        chunks.append(
            PromptChunk(
                tokens=(begin, *tokens, *[end] * pad, end),
                weights=(1.0, *weights, *[1.0] * pad, 1.0),
            )
        )
        tokens, weights, last_comma = [], [], -1

    for (piece, weight), piece_ids in zip(runs, ids, strict=True):
        if (piece, weight) == _BREAK_MARK:
            close()
            continue
        for token in piece_ids:
            if token == comma:
                last_comma = len(tokens)
            elif (
                len(tokens) == CHUNK_TOKENS
                and last_comma != -1
                and len(tokens) - last_comma <= COMMA_BACKTRACK
            ):
                cut = last_comma + 1
                carried = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                close()
                tokens, weights = list(carried[0]), list(carried[1])
            if len(tokens) == CHUNK_TOKENS:
                close()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        close()
    return chunks


def chunk_count(tokenizer: CLIPTokenizer, prompts: list[str]) -> int:
    """Chunks the longest prompt needs (at least one)."""
    return max([1] + [len(tokenize_prompt(tokenizer, text)) for text in prompts])


def _chunk_ids(tokenizer: CLIPTokenizer, chunks: list[PromptChunk]) -> torch.Tensor:
    """(len(chunks), 77) ids; everything after a chunk's first EOS becomes the pad token."""
    end = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else end
    rows = []
    for chunk in chunks:
        row = list(chunk.tokens)
        first_end = row.index(end)
        rows.append(row[: first_end + 1] + [pad] * (len(row) - first_end - 1))
    return torch.tensor(rows, dtype=torch.long)


def _weighted(hidden: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis on (chunks, 77, C): weigh each token, keep each chunk's mean."""
    if bool((weights == 1.0).all()):
        return hidden
    values = hidden.float()
    before = values.mean(dim=(1, 2), keepdim=True)
    values = values * weights[..., None].to(values)
    after = values.mean(dim=(1, 2), keepdim=True)
    return (values * (before / after)).to(hidden.dtype)


def _common_length(rows: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """Rows (1, 77·k_i, C) → (B, L, C): repeated to the least common multiple of their
    chunk counts, or padded with `empty` (1, 77, C) chunks when that is too long."""
    counts = [row.shape[1] // (CHUNK_TOKENS + 2) for row in rows]
    common = math.lcm(*counts)
    pairs = list(zip(rows, counts, strict=True))
    if common <= MAX_REPEATED_CHUNKS:
        return torch.cat([row.repeat(1, common // count, 1) for row, count in pairs])
    longest = max(counts)
    padded = [torch.cat([row, empty.repeat(1, longest - count, 1)], 1) for row, count in pairs]
    return torch.cat(padded)


def _encode_chunks(
    encoder: CLIPTextModel | CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    chunks: list[PromptChunk],
    *,
    penultimate: bool,
) -> tuple[torch.Tensor, object]:
    """Hidden states (len(chunks), 77, C), weighted, and the encoder's output."""
    ids = _chunk_ids(tokenizer, chunks).to(encoder.device)
    output = encoder(ids, output_hidden_states=penultimate)
    hidden = output.hidden_states[-2] if penultimate else output.last_hidden_state
    weights = torch.tensor([chunk.weights for chunk in chunks], device=hidden.device)
    return _weighted(hidden, weights), output


def _layout(tokenizer: CLIPTokenizer, prompts: list[str]) -> tuple[list[PromptChunk], list[slice]]:
    """Every distinct prompt's chunks in one list, an empty chunk last, and each prompt's
    slice of it (a prompt given for many rows is encoded once, as A1111 caches it)."""
    chunks: list[PromptChunk] = []
    places: dict[str, slice] = {}
    for text in prompts:
        if text not in places:
            own = tokenize_prompt(tokenizer, text)
            places[text] = slice(len(chunks), len(chunks) + len(own))
            chunks += own
    chunks += tokenize_prompt(tokenizer, "")
    return chunks, [places[text] for text in prompts]


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
        (len(prompts), 77 * chunks, hidden) in the text encoder's dtype and device, every
        row at one length (see the module docstring).
    """
    chunks, slices = _layout(tokenizer, prompts)
    hidden, _ = _encode_chunks(text_encoder, tokenizer, chunks, penultimate=False)
    rows = [hidden[part].reshape(1, -1, hidden.shape[-1]) for part in slices]
    return _common_length(rows, hidden[-1:])


@torch.no_grad()
def encode_prompts_sdxl(
    text_encoder: CLIPTextModel,
    tokenizer: CLIPTokenizer,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer_2: CLIPTokenizer,
    prompts: list[str],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode prompts for an SDXL UNet: both encoders' penultimate layers, and the pooled text.

    Both encoders get the same chunks (the two tokenizers share one vocabulary; the
    second pads with its own pad token).

    Returns:
        (context, pooled): (len(prompts), 77 * chunks, hidden + hidden_2) — each chunk
        encoded by both encoders, their weighted second-to-last hidden states side by
        side — and (len(prompts), projection) — the second encoder's projected embedding
        of each prompt's first chunk.
    """
    chunks, slices = _layout(tokenizer, prompts)
    first, _ = _encode_chunks(text_encoder, tokenizer, chunks, penultimate=True)
    second, output = _encode_chunks(text_encoder_2, tokenizer_2, chunks, penultimate=True)
    both = torch.cat([first, second], dim=-1)
    rows = [both[part].reshape(1, -1, both.shape[-1]) for part in slices]
    embeds = output.text_embeds  # type: ignore[attr-defined]
    pooled = torch.stack([embeds[part.start] for part in slices])
    return _common_length(rows, both[-1:]), pooled
