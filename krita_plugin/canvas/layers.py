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
from ..pixels import check_size
from ..placement import Capture, NewLayer, Placement
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
    root = document.rootNode()
    anchor = find_node(root, capture.anchor_id)
    above = [layer for layer in layers if layer.placement is Placement.ABOVE]
    below = [layer for layer in layers if layer.placement is Placement.BELOW]
    if anchor is None:
        log.warning("layer %r is gone; inserting the results on top", capture.anchor_name)
        for layer in [*below, *above]:
            root.addChildNode(_new_layer(document, layer, capture), None)
        return [layer.name for layer in [*below, *above]]
    parent = anchor.parentNode()
    lower = anchor
    for layer in above:  # bottom to top: each directly above the one before
        node = _new_layer(document, layer, capture)
        parent.addChildNode(node, lower)
        lower = node
    upper = anchor
    for layer in reversed(below):  # top to bottom: each directly below the one before
        node = _new_layer(document, layer, capture)
        beneath = sibling_below(parent, upper)
        if beneath is not None:
            parent.addChildNode(node, beneath)
        else:
            parent.addChildNode(node, upper)
            await lower_layer(document, node)
        upper = node
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


def _new_layer(document: Document, layer: NewLayer, capture: Capture) -> Node:
    region = capture.region
    node = document.createNode(layer.name, "paintlayer")
    node.setPixelData(layer.pixels, region.x, region.y, region.width, region.height)
    if not layer.visible:
        node.setVisible(False)
    return node
