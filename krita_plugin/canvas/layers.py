"""Inserting result layers: new paint layers next to the anchor, one undo step each.

Each layer is created with `Document.createNode`, filled with `setPixelData` at the work
region *before* it is in the tree (so filling it is not a separate step), and inserted
with `Node.addChildNode`: one undo step, and the painter's own layers are never written.

`addChildNode(node, above)` puts `node` directly above a sibling, or on top when that is
None; there is no way to insert at the very bottom of a group. A layer that must go
below the bottom-most layer of its group is inserted directly above it and then lowered
one place with Krita's own "Move Layer or Mask Down" action on the active view (a second
undo step). That needs the job's document to be the active one; otherwise the layer
stays directly above, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from krita import Document, Krita, Node

from ..errors import DocumentClosed
from ..pixels import BYTES_PER_PIXEL, check_size, strips
from ..placement import Capture, NewLayer, Placement
from ..timing import timed
from .nodes import document_id, find_document, find_node, node_id, sibling_below

__all__ = ["insert_layers", "lower_layer"]

log = logging.getLogger(__name__)

ACTIVATION_TIMEOUT = 3.0
"""Seconds to wait for Krita to make a layer active (it does so asynchronously)."""


async def insert_layers(capture: Capture, layers: Sequence[NewLayer]) -> list[str]:
    """Insert new layers next to the capture's anchor, in its document.

    Args:
        capture: what the job read (document, anchor, region).
        layers: the layers, in the order `NewLayer.placement` describes.

    Returns:
        The inserted layers' names.

    Raises:
        DocumentClosed: the document is no longer open.
        ValueError: a layer whose bytes do not fit the region.
    """
    document = find_document(capture.document_id)
    if document is None:
        raise DocumentClosed()
    region = capture.region
    for layer in layers:
        check_size(layer.pixels, region.extent)
    # Filled first, strip by strip between event-loop ticks (a 4096² layer is 64 MiB);
    # not yet in the tree, so filling them is no undo step and nothing recomposites.
    nodes = {id(layer): await _new_layer(document, layer, capture) for layer in layers}
    if find_document(capture.document_id) is None:
        raise DocumentClosed()
    root = document.rootNode()
    anchor = find_node(root, capture.anchor_id)
    above = [layer for layer in layers if layer.placement is Placement.ABOVE]
    below = [layer for layer in layers if layer.placement is Placement.BELOW]
    if anchor is None:
        log.warning("layer %r is gone; inserting the results on top", capture.anchor_name)
        for layer in [*below, *above]:
            root.addChildNode(nodes[id(layer)], None)
        return [layer.name for layer in [*below, *above]]
    parent = anchor.parentNode()
    lower = anchor
    for layer in above:  # bottom to top: each directly above the one before
        node = nodes[id(layer)]
        with timed("inserting the layer"):
            parent.addChildNode(node, lower)
        lower = node
    upper = anchor
    for layer in reversed(below):  # top to bottom: each directly below the one before
        node = nodes[id(layer)]
        beneath = sibling_below(parent, upper)
        with timed("inserting the layer"):
            parent.addChildNode(node, beneath if beneath is not None else upper)
        if beneath is None:
            await lower_layer(document, node)
        upper = node
    with timed("waiting for Krita after inserting"):
        document.waitForDone()
    return [layer.name for layer in layers]


async def lower_layer(document: Document, node: Node) -> bool:
    """Move `node` one place down with Krita's "Move Layer or Mask Down" action.

    Returns:
        Whether it moved (False when the document is not the active one or the layer
        did not become active in time).
    """
    app = Krita.instance()
    active = app.activeDocument()
    action = app.action("move_layer_down")
    if active is None or document_id(active) != document_id(document) or action is None:
        log.warning("could not lower %r: its document is not the active one", node.name())
        return False
    document.setActiveNode(node)
    wanted = node_id(node)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + ACTIVATION_TIMEOUT
    while True:
        current = document.activeNode()
        if current is not None and node_id(current) == wanted:
            break
        if loop.time() > deadline:
            log.warning("could not lower %r: it did not become active", node.name())
            return False
        await asyncio.sleep(0.05)
    action.trigger()
    document.waitForDone()
    return True


async def _new_layer(document: Document, layer: NewLayer, capture: Capture) -> Node:
    """A paint layer holding `layer`'s pixels at the region, written a strip per tick."""
    region = capture.region
    node = document.createNode(layer.name, "paintlayer")
    view = memoryview(layer.pixels).cast("B")
    stride = region.width * BYTES_PER_PIXEL
    for index, (top, rows) in enumerate(strips(region.extent)):
        if index:
            await asyncio.sleep(0)
        strip = bytes(view[top * stride : (top + rows) * stride])
        with timed(f"writing {region.width}x{rows} into the new layer"):
            node.setPixelData(strip, region.x, region.y + top, region.width, rows)
    if not layer.visible:
        node.setVisible(False)
    return node
