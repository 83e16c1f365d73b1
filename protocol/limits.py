"""The limits one connection works under: the server enforces them, `welcome` advertises them.

Each limit is checked before the bytes it bounds are read or stored: a text frame's
length before it is parsed, an image's announced size before any of its frames is
accepted, a binary frame's header length before the header is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["DEFAULT_LIMITS", "Limits"]


@dataclass(frozen=True)
class Limits:
    """The limits of the protocol; every field is a positive integer.

    Raises:
        ValueError: a field that is not a positive integer (a programming error; the
            codec refuses such a `limits` object on the wire with `invalid_field`).
    """

    max_text_bytes: int = 1_048_576
    """Bytes of one text frame (UTF-8), 1 MiB."""

    max_chunk_bytes: int = 4_194_304
    """Payload bytes of one binary frame, its header not counted, 4 MiB."""

    max_image_side: int = 8192
    """Pixels of the width or the height of any image."""

    max_image_pixels: int = 40_000_000
    """Pixels of any image, width × height."""

    max_inputs: int = 4
    """Input images of one job."""

    max_images: int = 16
    """Results of one job, batch_size × batch_count."""

    max_steps: int = 150
    """Sampler steps of one job."""

    max_queued_jobs: int = 8
    """Unfinished jobs of one session, queued or running."""

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{field.name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = Limits()
"""The defaults of `docs/protocol.md`."""
