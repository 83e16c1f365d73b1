"""What a job reads from the document and where its layers go (pure data, no Krita).

The canvas package fills a `Capture` when an action is triggered and later inserts the
`NewLayer`s next to the layer that was active then (the *anchor*), found again by its id.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .geometry import Bounds
from .pixels import Buffer

__all__ = ["Capture", "InputSource", "NewLayer", "Placement"]


class InputSource(Enum):
    """The pixels a job sends."""

    NOTHING = "nothing"
    """Prompt only (a transparent layer, foreground and background together)."""
    ACTIVE_LAYER = "active_layer"
    """The active layer as it composites (with its masks): the foreground."""
    SCENE = "scene"
    """What is visible from the bottom of the stack up to and including the active layer."""


class Placement(Enum):
    """Where a new layer goes, relative to the anchor (the layer active at trigger time)."""

    ABOVE = "above"
    BELOW = "below"


@dataclass(frozen=True)
class Capture:
    """What an action read from the document when it was triggered.

    Attributes:
        document_id: identifies the document (its root node's unique id).
        anchor_id: unique id of the active layer (new layers go next to it).
        anchor_name: its name, for messages.
        region: the work region in document pixels (the selection's bounds, else the canvas).
        pixels: the region's BGRA bytes of the `InputSource`, or None for `NOTHING`.
        selection: the selection over the region, one byte per pixel (Krita's 8-bit
            selection, soft edges kept), or None when nothing is selected or the whole
            region is (a rectangle): then nothing needs masking.
    """

    document_id: str
    anchor_id: str
    anchor_name: str
    region: Bounds
    pixels: Buffer | None = None
    selection: bytes | None = None


@dataclass(frozen=True)
class NewLayer:
    """A result layer to insert: a paint layer covering the capture's region.

    Attributes:
        name: the layer's name (prompt, role and seed).
        placement: above or below the anchor. Layers with the same placement are given
            bottom to top: the first `ABOVE` goes directly above the anchor, the next
            above that; the last `BELOW` goes directly below the anchor.
        pixels: BGRA bytes of the region's size.
        visible: whether the layer starts visible.
        group: the name of a new group layer it goes into (None: none). The layers of one
            group are given bottom to top; the group takes the place the first of them
            says, and is inserted whole, in one undo step (a split's layers).
    """

    name: str
    placement: Placement
    pixels: Buffer
    visible: bool = True
    group: str | None = None
