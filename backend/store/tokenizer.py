"""The exact CLIP tokenizer with no hub: built from the BPE merges CLIP was trained with.

Stable Diffusion's tokenizers (SD1.5's, and both of SDXL's) are OpenAI CLIP's byte-level
BPE. Its merges ship in the `open_clip_torch` package (MIT) as
`bpe_simple_vocab_16e6.txt.gz`, vendored here beside its licence. The vocabulary follows
from the merges the way CLIP derives it:

1. merges = lines 1 .. 48894 of the file (the first line is a header), each a pair;
2. vocabulary = the 256 byte symbols, the same 256 with `</w>` appended, each merge
   joined, then `<|startoftext|>` and `<|endoftext|>`: 49,408 entries in that order.

`vocab.json` and `merges.txt` are written once into a cache folder and loaded with
`transformers.CLIPTokenizer`. SDXL's second tokenizer differs only in its pad token, `!`.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from backend.store.download import default_cache_dir

if TYPE_CHECKING:
    from transformers import CLIPTokenizer

log = logging.getLogger(__name__)

CLIP_BPE_FILE = Path(__file__).parent / "configs" / "clip_bpe" / "bpe_simple_vocab_16e6.txt.gz"
"""The vendored merges file (from open_clip_torch 3.3.0, MIT; licence beside it)."""

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
SDXL_SECOND_PAD_TOKEN = "!"
"""The pad token of SDXL's second tokenizer (OpenCLIP bigG); id 0."""

MAX_LENGTH = 77
VOCAB_SIZE = 49_408
_MERGE_COUNT = 49_152 - 256 - 2
_FILE_NAMES = ("vocab.json", "merges.txt", "tokenizer_config.json")
_STAMP = "source.sha256"


def byte_symbols() -> list[str]:
    """The 256 printable stand-ins of byte-level BPE, in CLIP's vocabulary order.

    Bytes that are printable Latin-1 characters stand for themselves and come first, in
    byte order; the other 68 bytes map to code points from 256 upwards, in byte order.

    Returns:
        256 one-character strings; the first is `!` (byte 33).
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in printable]
    return [chr(byte) for byte in printable] + [chr(256 + index) for index in range(len(others))]


def clip_vocabulary(bpe_file: Path = CLIP_BPE_FILE) -> tuple[list[str], list[tuple[str, str]]]:
    """Derive CLIP's vocabulary and merges from the gzipped merges file.

    Args:
        bpe_file: `bpe_simple_vocab_16e6.txt.gz`.

    Returns:
        (tokens in id order, 49,408 of them; merges in rank order, 48,894 of them).

    Raises:
        ValueError: The file does not hold the expected number of merges.
    """
    with gzip.open(bpe_file, "rt", encoding="utf-8") as stream:
        lines = stream.read().split("\n")
    merges: list[tuple[str, str]] = []
    for line in lines[1 : _MERGE_COUNT + 1]:
        first, second = line.split()
        merges.append((first, second))
    if len(merges) != _MERGE_COUNT:
        raise ValueError(f"{bpe_file} holds {len(merges)} merges, expected {_MERGE_COUNT}")
    symbols = byte_symbols()
    tokens = [
        *symbols,
        *(symbol + "</w>" for symbol in symbols),
        *(first + second for first, second in merges),
        START_TOKEN,
        END_TOKEN,
    ]
    return tokens, merges


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_tokenizer_files(folder: Path, bpe_file: Path = CLIP_BPE_FILE) -> Path:
    """Write `vocab.json`, `merges.txt` and `tokenizer_config.json` unless already there.

    The folder holds a stamp with the merges file's sha256; files from another source are
    rewritten.

    Args:
        folder: Where to write; created when missing.
        bpe_file: The gzipped merges file.

    Returns:
        The folder.
    """
    source_sha256 = hashlib.sha256(bpe_file.read_bytes()).hexdigest()
    stamp = folder / _STAMP
    complete = all((folder / name).is_file() for name in _FILE_NAMES)
    if complete and stamp.is_file() and stamp.read_text(encoding="utf-8") == source_sha256:
        return folder
    log.info("writing the clip tokenizer files into %s", folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokens, merges = clip_vocabulary(bpe_file)
    vocabulary = {token: index for index, token in enumerate(tokens)}
    _write_atomically(folder / "vocab.json", json.dumps(vocabulary, ensure_ascii=False))
    merge_lines = "".join(f"{first} {second}\n" for first, second in merges)
    _write_atomically(folder / "merges.txt", "#version: 0.2\n" + merge_lines)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_LENGTH,
        "bos_token": START_TOKEN,
        "eos_token": END_TOKEN,
        "unk_token": END_TOKEN,
        "pad_token": END_TOKEN,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
    }
    _write_atomically(folder / "tokenizer_config.json", json.dumps(config, indent=2))
    _write_atomically(stamp, source_sha256)
    return folder


def clip_tokenizer(*, pad_token: str = END_TOKEN, cache_dir: Path | None = None) -> CLIPTokenizer:
    """Build CLIP's tokenizer from the vendored merges, with no network access.

    Args:
        pad_token: `<|endoftext|>` for SD1.5 and SDXL's first tokenizer, `!` for SDXL's
            second (`SDXL_SECOND_PAD_TOKEN`).
        cache_dir: Where the generated files are kept; None uses
            `default_cache_dir() / "clip_tokenizer"`.

    Returns:
        A new tokenizer with model_max_length 77 and 49,408 tokens.
    """
    from transformers import CLIPTokenizer

    folder = write_tokenizer_files(cache_dir or default_cache_dir() / "clip_tokenizer")
    return CLIPTokenizer.from_pretrained(str(folder), pad_token=pad_token, local_files_only=True)
