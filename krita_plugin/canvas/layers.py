"""Inserting result layers: new paint layers next to the anchor, one undo step each.

Each layer is created with `Document.createNode`, filled with `setPixelData` at the work
region *before* it is in the tree (so filling it is not a separate step), and inserted
with `Node.addChildNode`: one undo step, and the painter's own layers are never written.

Layers of one group (a split's) are added to a new group layer while neither is in the
tree, bottom first, and the group is then inserted like one layer: one undo step for the
group and all of it (in Krita 5.1.5 one Undo removes the group with its layers and one
Redo brings them back: `tests/krita_plugin/in_krita/test_split_and_matting_in_krita.py`).

`addChildNode(node, above)` puts `node` directly above a sibling, or on top when that is
None; no libkis call inserts at the very bottom of a group. Krita's own Layers docker
does: a picture dropped below its last row becomes a new paint layer there, in one undo
step ("Add layer"). So a layer that must go below the bottom-most layer of its group is
dropped there into the docker's model as an image (`_drop_at_bottom`), then renamed and
put at the region. Where that cannot be done (the job's document not the active one, no
Layers docker, a document profile other than the one Krita gives dropped pictures, a
group to insert), it is inserted directly above and lowered one place with Krita's
"Move Layer or Mask Down" action: a second undo step, and the log says so.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from krita import Document, Krita, Node

from ..errors import DocumentClosed
from ..pixels import BYTES_PER_PIXEL, check_size, strips
from ..placement import Capture, NewLayer, Placement
from ..qt import QAbstractItemView, QImage, QMimeData, QModelIndex, Qt
from ..timing import timed
from .nodes import document_id, find_document, find_node, node_id, sibling_below

__all__ = ["insert_layers", "lower_layer"]

log = logging.getLogger(__name__)

ACTIVATION_TIMEOUT = 3.0
"""Seconds to wait for Krita to make a layer active (it does so asynchronously)."""

DROPPED_PICTURE_PROFILE = "sRGB-elle-V2-srgbtrc.icc"
"""The profile of the layer Krita makes of a dropped picture (its default 8-bit RGBA)."""
LAYERS_VIEW = "listLayers"
"""The object name of the Layers docker's layer list."""


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
        if beneath is None and unit.layer is not None:
            with timed("dropping the layer below the bottom one"):
                dropped = _drop_at_bottom(document, parent, unit.layer, capture)
            if dropped is not None:
                upper = dropped
                continue
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
    layer: NewLayer | None = None  # None for a group


def _grouped(document: Document, layers: Sequence[NewLayer], nodes: dict[int, Node]) -> list[_Unit]:
    """The layers as insertion units, in order; the layers of a group go into a new group
    layer (bottom first), which takes the place of the first of them."""
    units: list[_Unit] = []
    groups: dict[str, tuple[Node, Node]] = {}  # name → (group, its top child so far)
    for layer in layers:
        node = nodes[id(layer)]
        if layer.group is None:
            units.append(_Unit(layer.name, layer.placement, node, layer))
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
    action = Krita.instance().action("move_layer_down")
    if not _is_active(document) or action is None:
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


def _drop_at_bottom(
    document: Document, parent: Node, layer: NewLayer, capture: Capture
) -> Node | None:
    """Insert `layer` below every other child of `parent` in one undo step, as a picture
    dropped below the last row of Krita's Layers docker.

    Krita makes the picture a paint layer in its default 8-bit RGBA profile, names it
    itself and centres it on the canvas; it is renamed and moved to the region after
    (both outside the undo stack, which keeps the node: Undo removes the layer, Redo
    brings it back as it was).

    Returns:
        The new layer, or None when nothing was inserted (the caller lowers instead).
    """
    window = Krita.instance().activeWindow()
    if window is None or not _is_active(document):
        return None
    if document.colorProfile() != DROPPED_PICTURE_PROFILE:
        log.info(
            "not dropping %r: the document's profile is %s", layer.name, document.colorProfile()
        )
        return None
    model = _layers_model(window.qwindow())
    index = _model_index(model, document.rootNode(), parent) if model is not None else None
    if model is None or index is None:
        log.info("not dropping %r: the Layers docker does not show this document", layer.name)
        return None
    region = capture.region
    before = {node_id(child) for child in parent.childNodes()}
    data = bytes(layer.pixels)  # kept alive while the picture points into it
    picture = QImage(
        data,
        region.width,
        region.height,
        region.width * BYTES_PER_PIXEL,
        QImage.Format.Format_ARGB32,  # BGRA bytes, straight alpha: Krita's own order
    )
    mime = QMimeData()
    mime.setImageData(picture)
    rows = model.rowCount(index)
    if not model.dropMimeData(mime, Qt.DropAction.CopyAction, rows, 0, index):
        return None
    document.waitForDone()
    children = parent.childNodes()
    added = [child for child in children if node_id(child) not in before]
    if len(added) != 1:
        log.warning("dropping %r added %d layers", layer.name, len(added))
        return added[0] if added else None
    node = added[0]
    if node_id(children[0]) != node_id(node):
        log.warning("Krita put the dropped %r above the bottom layer", layer.name)
    node.setName(layer.name)
    position = node.position()
    moved = (position.x(), position.y()) != (region.x, region.y)
    if moved:
        node.move(region.x, region.y)
    if not layer.visible:
        node.setVisible(False)
    if moved or not layer.visible:
        document.refreshProjection()  # neither property recomposites by itself
    return node


def _is_active(document: Document) -> bool:
    """Whether `document` is the one the active view shows (Krita's actions and the
    Layers docker work on that one)."""
    active = Krita.instance().activeDocument()
    return active is not None and document_id(active) == document_id(document)


def _layers_model(window: Any) -> Any:
    """The model of the Layers docker's list in `window` (a QMainWindow), or None."""
    for view in window.findChildren(QAbstractItemView):
        if view.objectName() == LAYERS_VIEW and view.model() is not None:
            return view.model()
    return None


def _model_index(model: Any, root: Node, parent: Node) -> Any:
    """`parent`'s index in the Layers docker's model (rows top first), or None when the
    model does not mirror the document's tree there."""
    path = []
    node: Node | None = parent
    while node is not None and node_id(node) != node_id(root):
        path.append(node)
        node = node.parentNode()
    if node is None:
        return None
    index, container = QModelIndex(), root
    for node in reversed(path):
        shown = _rows(model, index, container)
        if shown is None:
            return None
        row = len(shown) - 1 - [node_id(sibling) for sibling in shown].index(node_id(node))
        child = model.index(row, 0, index)
        if model.data(child) != node.name():
            return None
        index, container = child, node
    return index if _rows(model, index, container) is not None else None


def _rows(model: Any, index: Any, container: Node) -> list[Node] | None:
    """`container`'s children as the model's rows under `index` show them (bottom first):
    all of them, or all but the global selection's mask, which the docker hides."""
    children = container.childNodes()
    for shown in (children, [child for child in children if child.type() != "selectionmask"]):
        if model.rowCount(index) == len(shown):
            return shown
    return None


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
