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

from collections.abc import Sequence

from krita import Document, Krita, Node

from ..errors import EmptyRegion, NoActiveLayer, NoDocument, PluginError, UnsupportedDocument
from ..geometry import Bounds, Extent, work_region
from ..pixels import check_size, has_visible_pixels
from ..placement import Capture, InputSource, NewLayer
from ..qt import QIcon
from .layers import insert_layers
from .nodes import document_id, node_id

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
        return capture(source)

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


def capture(source: InputSource) -> Capture:
    """Read the active document's work region for a job, now.

    Args:
        source: which pixels the job sends.

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
    return capture_from(document, anchor, source)


def capture_from(document: Document, anchor: Node, source: InputSource) -> Capture:
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
        document.waitForDone()
        pixels = bytes(anchor.projectionPixelData(*_rect(region)))
        if not has_visible_pixels(pixels):
            raise EmptyRegion(
                f"The layer “{anchor.name()}” has nothing visible in the work area, so there "
                "is no foreground to make a background for. Select the layer you painted, "
                "or an area where it has content."
            )
    elif source is InputSource.SCENE:
        pixels = read_scene(document, anchor, region)
    if pixels is not None:
        check_size(pixels, region.extent)
    return Capture(document_id(document), node_id(anchor), anchor.name(), region, pixels)


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
        if hidden:
            document.refreshProjection()
        document.waitForDone()
        pixels = bytes(document.pixelData(*_rect(region)))
    finally:
        for node in hidden:
            node.setVisible(True)
        if hidden:
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
