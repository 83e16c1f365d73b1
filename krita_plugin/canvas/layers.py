"""Inserting result layers: new paint layers next to the anchor, one undo step each.

Each layer is created with `Document.createNode`, filled with `setPixelData` at the work
region *before* it is in the tree (so filling it is not a separate step), and inserted
with `Node.addChildNode`: one undo step, and the painter's own layers are never written.

Layers of one group (a split's) are added to a new group layer while neither is in the
tree, bottom first, and the group is then inserted like one layer: one undo step for the
group and all of it (in Krita 5.1.5 one Undo removes the group with its layers and one
Redo brings them back: `tests/krita_plugin/in_krita/test_split_and_matting_in_krita.py`).

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
from dataclasses import dataclass

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
        The inserted layers' names (a group's name for all of its layers).

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
    units = _grouped(document, layers, nodes)
    root = document.rootNode()
    anchor = find_node(root, capture.anchor_id)
    above = [unit for unit in units if unit.placement is Placement.ABOVE]
    below = [unit for unit in units if unit.placement is Placement.BELOW]
    if anchor is None:
        log.warning("layer %r is gone; inserting the results on top", capture.anchor_name)
        for unit in [*below, *above]:
            root.addChildNode(unit.node, None)
        return [unit.name for unit in [*below, *above]]
    parent = anchor.parentNode()
    lower = anchor
    for unit in above:  # bottom to top: each directly above the one before
        with timed("inserting the layer"):
            parent.addChildNode(unit.node, lower)
        lower = unit.node
    upper = anchor
    for unit in reversed(below):  # top to bottom: each directly below the one before
        beneath = sibling_below(parent, upper)
        with timed("inserting the layer"):
            parent.addChildNode(unit.node, beneath if beneath is not None else upper)
        if beneath is None:
            await lower_layer(document, unit.node)
        upper = unit.node
    with timed("waiting for Krita after inserting"):
        document.waitForDone()
    return [unit.name for unit in units]


@dataclass
class _Unit:
    """What is inserted as one node: a layer, or a new group holding several."""

    name: str
    placement: Placement
    node: Node


def _grouped(document: Document, layers: Sequence[NewLayer], nodes: dict[int, Node]) -> list[_Unit]:
    """The layers as insertion units, in order; the layers of a group go into a new group
    layer (bottom first), which takes the place of the first of them."""
    units: list[_Unit] = []
    groups: dict[str, tuple[Node, Node]] = {}  # name → (group, its top child so far)
    for layer in layers:
        node = nodes[id(layer)]
        if layer.group is None:
            units.append(_Unit(layer.name, layer.placement, node))
            continue
        if layer.group in groups:
            group, top = groups[layer.group]
            group.addChildNode(node, top)  # directly above the one before
        else:
            group = document.createGroupLayer(layer.group)
            group.addChildNode(node, None)
            units.append(_Unit(layer.group, layer.placement, group))
        groups[layer.group] = (group, node)
    return units


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
