"""The active document: colour check, work region, and reading its pixels.

Pixels are read as Krita hands them out for 8-bit RGBA: B, G, R, A bytes, straight alpha,
rows packed, which is the protocol's `bgra8`, so they go to the backend unchanged.

Reading the *scene* (what is visible from the bottom of the stack up to and including
the active layer) uses Krita's own compositing: the visible layers above the active one
(its siblings above it, and those above each of its parent groups) are hidden for the
read, the projection is recomputed (`refreshProjection`, synchronous), read with
`Document.pixelData`, and the layers are shown again and the projection recomputed.
Visibility is a layer property, not pixels, and is not an undo step in Krita 5.1/5.2;
the document's modified flag is restored. Composing layers in Python instead would have
to reimplement every blending mode, mask and filter layer.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence

from krita import Document, Krita, Node

from ..errors import (
    DocumentClosed,
    EmptyRegion,
    NoActiveLayer,
    NoDocument,
    PluginError,
    UnsupportedDocument,
)
from ..geometry import Bounds, Extent, work_region
from ..pixels import BYTES_PER_PIXEL, check_size, has_visible_pixels, lazy_buffer, strips
from ..placement import Capture, InputSource, NewLayer
from ..qt import QIcon
from ..timing import timed
from .layers import insert_layers
from .nodes import document_id, find_document, find_node, node_id

__all__ = [
    "KritaCanvas",
    "capture",
    "capture_from",
    "check_color",
    "read_scene",
    "selection_bounds",
]

FLOATING_MESSAGE_MS = 8000
"""How long a floating message stays on the canvas."""
FLOATING_PRIORITY = 1
"""Krita's floating-message priority: 0 high, 1 medium, 2 low."""
_MASK_TYPES = ("transparencymask", "filtermask", "transformmask", "selectionmask", "colorizemask")


class KritaCanvas:
    """The `state.Canvas` of the running Krita: reads the active document, inserts layers."""

    def capture(self, source: InputSource) -> Capture:
        return capture(source, read_layer=False)

    async def complete(self, capture: Capture, source: InputSource) -> Capture:
        if source is InputSource.ACTIVE_LAYER and capture.pixels is None:
            return await read_layer(capture)
        return capture

    async def insert(self, capture: Capture, layers: Sequence[NewLayer]) -> list[str]:
        return await insert_layers(capture, layers)

    def document_problem(self) -> PluginError | None:
        document = Krita.instance().activeDocument()
        if document is None:
            return NoDocument()
        try:
            check_color(document.colorModel(), document.colorDepth())
        except UnsupportedDocument as error:
            return error
        if document.activeNode() is None:
            return NoActiveLayer()
        return None

    def tell(self, text: str) -> None:
        window = Krita.instance().activeWindow()
        view = window.activeView() if window is not None else None
        if view is not None:
            view.showFloatingMessage(text, QIcon(), FLOATING_MESSAGE_MS, FLOATING_PRIORITY)


def check_color(model: str, depth: str) -> None:
    """Raise UnsupportedDocument unless the colour model is 8-bit RGBA."""
    if model != "RGBA" or depth != "U8":
        raise UnsupportedDocument(model, depth)


def selection_bounds(document: Document) -> Bounds | None:
    """The bounds of the document's selection, or None when nothing is selected."""
    selection = document.selection()
    if selection is None:
        return None
    bounds = Bounds(selection.x(), selection.y(), selection.width(), selection.height())
    return None if bounds.is_empty else bounds


def capture(source: InputSource, read_layer: bool = True) -> Capture:
    """Read the active document's work region for a job, now.

    Args:
        source: which pixels the job sends.
        read_layer: also read the active layer's pixels now (else `read_layer` does,
            strip by strip).

    Raises:
        NoDocument / UnsupportedDocument / NoActiveLayer / EmptyRegion: the sentence says
            what to do.
    """
    document = Krita.instance().activeDocument()
    if document is None:
        raise NoDocument()
    check_color(document.colorModel(), document.colorDepth())
    anchor = document.activeNode()
    if anchor is None:
        raise NoActiveLayer()
    return capture_from(document, anchor, source, read_layer)


def capture_from(
    document: Document, anchor: Node, source: InputSource, read_layer: bool = True
) -> Capture:
    """`capture` for a given document and active node (kritarunner has no active ones)."""
    check_color(document.colorModel(), document.colorDepth())
    if anchor.type() in _MASK_TYPES:  # a mask is active: work next to its layer
        anchor = anchor.parentNode()
    region = work_region(Extent(document.width(), document.height()), selection_bounds(document))
    if region.is_empty:
        raise EmptyRegion("The selection is outside the canvas. Select an area on the canvas.")
    pixels = None
    if source is InputSource.ACTIVE_LAYER:
        check_color(anchor.colorModel(), anchor.colorDepth())
        if read_layer:
            buffer = _new_buffer(region)
            visible = False
            for strip_visible in _read_strips(document, anchor, region, buffer):
                visible = visible or strip_visible
            pixels = _checked_layer(anchor, buffer, visible)
    elif source is InputSource.SCENE:
        # At once: the layers above are hidden meanwhile, and must not be seen so.
        pixels = read_scene(document, anchor, region)
    if pixels is not None:
        check_size(pixels, region.extent)
    selection = read_selection(document, region)
    return Capture(document_id(document), node_id(anchor), anchor.name(), region, pixels, selection)


def read_selection(document: Document, region: Bounds) -> bytes | None:
    """The selection over `region`, one byte per pixel; None when there is none or it
    covers the whole region (a rectangle selects what its bounds do)."""
    selection = document.selection()
    if selection is None:
        return None
    with timed(f"reading {region.width}x{region.height} of the selection"):
        mask = bytes(selection.pixelData(*_rect(region)))
        if len(mask) != region.extent.pixels:
            raise EmptyRegion("Krita gave no 8-bit selection for the work area.")
        full = mask.count(255) == len(mask)
    return None if full else mask


async def read_layer(capture: Capture) -> Capture:
    """The capture with its anchor layer's pixels, read a strip per event-loop tick so
    that the UI thread is never held for long (a 4096² layer is 64 MiB).

    Raises:
        DocumentClosed / EmptyRegion: the document or the layer went, or the layer has
            nothing visible in the region.
    """
    document = find_document(capture.document_id)
    if document is None:
        raise DocumentClosed()
    anchor = find_node(document.rootNode(), capture.anchor_id)
    if anchor is None:
        raise EmptyRegion(f"The layer “{capture.anchor_name}” was removed before it was read.")
    region = capture.region
    buffer = _new_buffer(region)
    visible = False
    for strip_visible in _read_strips(document, anchor, region, buffer):
        visible = visible or strip_visible
        await asyncio.sleep(0)
    return dataclasses.replace(capture, pixels=_checked_layer(anchor, buffer, visible))


def _new_buffer(region: Bounds) -> memoryview:
    return lazy_buffer(region.extent.pixels * BYTES_PER_PIXEL)


def _read_strips(
    document: Document, anchor: Node, region: Bounds, buffer: memoryview
) -> Iterator[bool]:
    """Read the layer's region into `buffer` strip by strip, yielding after each
    whether it had a visible pixel."""
    with timed("waiting for Krita before reading the layer"):
        document.waitForDone()
    stride = region.width * BYTES_PER_PIXEL
    for top, rows in strips(region.extent):
        with timed(f"reading {region.width}x{rows} of the layer"):
            data = bytes(anchor.projectionPixelData(region.x, region.y + top, region.width, rows))
            buffer[top * stride : (top + rows) * stride] = data
            visible = has_visible_pixels(data)
        yield visible


def _checked_layer(anchor: Node, pixels: memoryview, visible: bool) -> memoryview:
    if not visible:
        raise EmptyRegion(
            f"The layer “{anchor.name()}” has nothing visible in the work area, so there "
            "is nothing to work from (a background needs a foreground, a split a "
            "picture). Select the layer you painted, or an area where it has content."
        )
    return pixels


def read_scene(document: Document, anchor: Node, region: Bounds) -> bytes:
    """The composite of what is visible from the bottom up to and including `anchor`.

    Layers above `anchor` are hidden while the projection is read, then shown again;
    their pixels are never touched and the document's modified flag is restored.
    """
    hidden = _visible_layers_above(document, anchor)
    modified = document.modified()
    try:
        for node in hidden:
            node.setVisible(False)
        with timed("recompositing the scene without the layers above"):
            if hidden:
                document.refreshProjection()
            document.waitForDone()
        with timed(f"reading {region.width}x{region.height} of the scene"):
            pixels = bytes(document.pixelData(*_rect(region)))
    finally:
        for node in hidden:
            node.setVisible(True)
        if hidden:
            with timed("recompositing the scene with the layers above again"):
                document.refreshProjection()
                document.waitForDone()
            document.setModified(modified)
    return pixels


def _visible_layers_above(document: Document, anchor: Node) -> list[Node]:
    root = node_id(document.rootNode())
    above: list[Node] = []
    node = anchor
    while node_id(node) != root:
        parent = node.parentNode()
        siblings = parent.childNodes()  # bottom first
        index = [node_id(sibling) for sibling in siblings].index(node_id(node))
        above.extend(
            sibling
            for sibling in siblings[index + 1 :]
            if sibling.visible() and sibling.type() not in _MASK_TYPES
        )
        node = parent
    return above


def _rect(bounds: Bounds) -> tuple[int, int, int, int]:
    return bounds.x, bounds.y, bounds.width, bounds.height
