"""The CLIP tokenizer built from the vendored merges matches the released one."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from backend.store.tokenizer import (
    CLIP_BPE_FILE,
    SDXL_SECOND_PAD_TOKEN,
    byte_symbols,
    clip_tokenizer,
    clip_vocabulary,
    write_tokenizer_files,
)

# the sha256 of bpe_simple_vocab_16e6.txt.gz as OpenAI CLIP and open_clip ship it
BPE_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"


def test_the_vendored_merges_are_clips_with_their_licence() -> None:
    assert hashlib.sha256(CLIP_BPE_FILE.read_bytes()).hexdigest() == BPE_SHA256
    licence = (CLIP_BPE_FILE.parent / "LICENSE.open_clip").read_text(encoding="utf-8")
    assert "Permission is hereby granted, free of charge" in licence


def test_the_vocabulary_has_clips_size_and_order() -> None:
    tokens, merges = clip_vocabulary()
    assert (len(tokens), len(merges), len(set(tokens))) == (49_408, 48_894, 49_408)
    symbols = byte_symbols()
    assert (len(set(symbols)), symbols[0], symbols[64]) == (256, "!", "a")
    assert tokens[320] == "a</w>"
    assert tokens[-2:] == ["<|startoftext|>", "<|endoftext|>"]


@pytest.mark.usefixtures("no_network")
def test_a_photo_of_a_cat_gets_the_released_ids() -> None:
    tokenizer = clip_tokenizer()
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert (len(tokenizer), tokenizer.model_max_length) == (49_408, 77)
    assert tokenizer.pad_token_id == 49407


@pytest.mark.usefixtures("no_network")
def test_sdxls_second_tokenizer_pads_with_exclamation_marks() -> None:
    tokenizer = clip_tokenizer(pad_token=SDXL_SECOND_PAD_TOKEN)
    assert tokenizer.pad_token_id == 0
    padded = tokenizer("a cat", padding="max_length", max_length=6).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0]


def test_long_prompts_are_cut_at_77_tokens() -> None:
    ids = clip_tokenizer()("cat " * 100, truncation=True).input_ids
    assert (len(ids), ids[0], ids[-1]) == (77, 49406, 49407)


def test_the_files_are_written_once(tmp_path: Path) -> None:
    folder = write_tokenizer_files(tmp_path / "tokenizer")
    vocab = folder / "vocab.json"
    first = vocab.stat().st_mtime_ns
    write_tokenizer_files(folder)
    assert vocab.stat().st_mtime_ns == first
    (folder / "source.sha256").write_text("from another source", encoding="utf-8")
    vocab.write_text("{}", encoding="utf-8")
    write_tokenizer_files(folder)
    assert len(vocab.read_text(encoding="utf-8")) > 100_000


def test_the_default_cache_lives_under_xdg_cache_home(isolated_caches: Path) -> None:
    clip_tokenizer()
    xdg = isolated_caches.parent / "xdg-cache"
    assert (xdg / "krita-layerdiffuse" / "clip_tokenizer" / "merges.txt").is_file()
