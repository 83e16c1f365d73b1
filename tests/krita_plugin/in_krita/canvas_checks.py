"""Checks of `krita_plugin.canvas` on the real libkis API, run inside `kritarunner`.

Not a pytest module: `test_canvas.py` runs `kritarunner -s canvas_checks -f main <out>`
(offscreen, no window), and this module writes one record per check to `<out>` (JSON):
`{name: {"ok": bool, "detail": str}}`. Each check builds its own document and closes it.

kritarunner has no window, so no active document, no active layer and no actions
(`edit_undo`, `move_layer_down`): the checks call `capture_from` with an explicit layer,
and undo is checked in the GUI end-to-end test.
"""

from __future__ import annotations

import asyncio
import json
import sys
import traceback

from krita import Krita, Selection

from krita_plugin.canvas.document import capture_from, check_color, read_scene, selection_bounds
from krita_plugin.canvas.layers import insert_layers
from krita_plugin.canvas.nodes import document_id, find_document, find_node, node_id
from krita_plugin.errors import DocumentClosed, EmptyRegion, UnsupportedDocument
from krita_plugin.geometry import Bounds, Extent
from krita_plugin.pixels import crop
from krita_plugin.placement import InputSource, NewLayer, Placement

W, H = 64, 48
CHECKS = []


def check(function):
    CHECKS.append(function)
    return function


def new_document(name="canvas", model="RGBA"):
    return Krita.instance().createDocument(W, H, name, model, "U8", "", 72.0)


def solid(width, height, bgra):
    return bytes(bgra) * (width * height)


def add_layer(document, name, pixels, bounds=None, parent=None, above=None):
    bounds = bounds or Bounds(0, 0, W, H)
    node = document.createNode(name, "paintlayer")
    node.setPixelData(pixels, bounds.x, bounds.y, bounds.width, bounds.height)
    (parent or document.rootNode()).addChildNode(node, above)
    document.waitForDone()
    return find_node(document.rootNode(), node_id(node))


def layer_bytes(document, node):
    return bytes(node.pixelData(0, 0, W, H))


def names(node):
    return [child.name() for child in node.childNodes() if child.type() != "selectionmask"]


def all_layers(document):
    found = []

    def walk(node):
        for child in node.childNodes():
            found.append(child)
            walk(child)

    walk(document.rootNode())
    return found


def state_of(document):
    """Pixels, visibility and order of every layer: what must not change."""
    return [(n.name(), n.visible(), layer_bytes(document, n)) for n in all_layers(document)]


# Byte order, regions, selection -------------------------------------------------------------


@check
def byte_order_is_bgra_straight_alpha(results):
    document = new_document()
    layer = add_layer(document, "red", solid(W, H, (0, 0, 255, 128)))  # B G R A: half red
    captured = capture_from(document, layer, InputSource.ACTIVE_LAYER)
    document.refreshProjection()
    document.waitForDone()
    over_white = bytes(document.pixelData(0, 0, 1, 1))
    document.close()
    ok = captured.pixels == solid(W, H, (0, 0, 255, 128)) and over_white == bytes(
        (127, 127, 255, 255)
    )
    return ok, f"first pixel {captured.pixels[:4]!r}, over white {over_white!r}"


@check
def capture_reads_the_whole_canvas_without_a_selection(results):
    document = new_document()
    pattern = bytes((x * 4 + y) % 256 for y in range(H) for x in range(W * 4))
    layer = add_layer(document, "pattern", pattern)
    captured = capture_from(document, layer, InputSource.ACTIVE_LAYER)
    document.close()
    return (
        captured.region == Bounds(0, 0, W, H) and captured.pixels == pattern,
        captured.region,
    )


@check
def capture_reads_the_selection_bounds(results):
    document = new_document()
    pattern = bytes((x * 7 + y * 3) % 251 for y in range(H) for x in range(W * 4))
    layer = add_layer(document, "pattern", pattern)
    selection = Selection()
    selection.select(10, 6, 20, 12, 255)
    document.setSelection(selection)
    captured = capture_from(document, layer, InputSource.ACTIVE_LAYER)
    expected = crop(pattern, Extent(W, H), Bounds(10, 6, 20, 12))
    anchor_ok = captured.anchor_id == node_id(layer) and captured.anchor_name == "pattern"
    document.close()
    return (
        captured.region == Bounds(10, 6, 20, 12) and captured.pixels == expected and anchor_ok,
        captured.region,
    )


@check
def selection_partly_outside_is_clipped_to_the_canvas(results):
    document = new_document()
    layer = add_layer(document, "grey", solid(W, H, (90, 90, 90, 255)))
    selection = Selection()
    selection.select(50, 40, 40, 40, 255)
    document.setSelection(selection)
    bounds = selection_bounds(document)
    captured = capture_from(document, layer, InputSource.ACTIVE_LAYER)
    document.close()
    return captured.region == Bounds(50, 40, 14, 8), (bounds, captured.region)


@check
def no_selection_means_none(results):
    document = new_document()
    bounds = selection_bounds(document)
    document.close()
    return bounds is None, bounds


@check
def an_empty_foreground_is_refused(results):
    document = new_document()
    layer = add_layer(document, "empty", solid(W, H, (0, 0, 0, 0)))
    try:
        capture_from(document, layer, InputSource.ACTIVE_LAYER)
    except EmptyRegion as error:
        document.close()
        return "nothing visible" in str(error), str(error)
    document.close()
    return False, "no error"


@check
def a_document_that_is_not_rgba8_is_refused(results):
    document = new_document("gray", "GRAYA")
    try:
        capture_from(document, document.rootNode().childNodes()[0], InputSource.NOTHING)
    except UnsupportedDocument as error:
        document.close()
        return error.model == "GRAYA" and "8-bit RGBA" in str(error), str(error)
    document.close()
    return False, "no error"


@check
def check_color_accepts_only_rgba_u8(results):
    refused = []
    for model, depth in (("RGBA", "U16"), ("RGBA", "F32"), ("CMYKA", "U8"), ("GRAYA", "U8")):
        try:
            check_color(model, depth)
        except UnsupportedDocument:
            refused.append((model, depth))
    check_color("RGBA", "U8")
    return len(refused) == 4, refused


# The scene under and including the active layer --------------------------------------------


def scene_document():
    """White background; a red layer; a group with [green (anchor), yellow]; blue on top."""
    document = new_document("scene")
    red = add_layer(document, "red", solid(32, 48, (0, 0, 255, 255)), Bounds(0, 0, 32, 48))
    group = document.createGroupLayer("group")
    document.rootNode().addChildNode(group, None)
    group = find_node(document.rootNode(), node_id(group))
    green = add_layer(
        document, "green", solid(20, 20, (0, 255, 0, 255)), Bounds(20, 10, 20, 20), parent=group
    )
    add_layer(document, "yellow", solid(10, 10, (0, 255, 255, 255)), Bounds(25, 15, 10, 10), group)
    add_layer(document, "blue", solid(W, 10, (255, 0, 0, 255)), Bounds(0, 0, W, 10))
    document.refreshProjection()
    document.waitForDone()
    return document, red, group, green


@check
def the_scene_hides_what_is_above_the_active_layer(results):
    document, _, _, green = scene_document()
    before = state_of(document)
    projection_before = bytes(document.pixelData(0, 0, W, H))
    scene = read_scene(document, green, Bounds(0, 0, W, H))
    after = state_of(document)
    document.refreshProjection()
    document.waitForDone()
    projection_after = bytes(document.pixelData(0, 0, W, H))

    def pixel(x, y):
        offset = (y * W + x) * 4
        return tuple(scene[offset : offset + 4])

    expected = {
        (5, 5): (0, 0, 255, 255),  # red, the blue band above is hidden
        (30, 20): (0, 255, 0, 255),  # green, the yellow above it (same group) is hidden
        (50, 40): (255, 255, 255, 255),  # the white background
        (50, 5): (255, 255, 255, 255),  # no blue band
    }
    got = {point: pixel(*point) for point in expected}
    unchanged = before == after and projection_before == projection_after
    document.close()
    return got == expected and unchanged, {"pixels": got, "layers unchanged": unchanged}


@check
def the_scene_of_the_top_layer_is_the_whole_projection(results):
    document = scene_document()[0]
    top = find_node(document.rootNode(), node_id(document.rootNode().childNodes()[-1]))
    projection = bytes(document.pixelData(0, 0, W, H))
    scene = read_scene(document, top, Bounds(0, 0, W, H))
    document.close()
    return scene == projection, len(scene)


@check
def capture_of_the_scene_uses_the_region(results):
    document, _, _, green = scene_document()
    selection = Selection()
    selection.select(24, 12, 8, 8, 255)
    document.setSelection(selection)
    captured = capture_from(document, green, InputSource.SCENE)
    document.close()
    return (
        captured.region == Bounds(24, 12, 8, 8)
        and captured.pixels == solid(8, 8, (0, 255, 0, 255)),
        captured.region,
    )


# Inserting result layers ----------------------------------------------------------------------


def insert(capture, layers):
    return asyncio.run(insert_layers(capture, layers))


@check
def layers_go_above_and_below_the_anchor_at_the_region(results):
    document = new_document("insert")
    user = add_layer(document, "user", solid(W, H, (10, 20, 30, 255)))
    add_layer(document, "top", solid(W, H, (1, 2, 3, 40)))
    before = state_of(document)
    region = Bounds(8, 4, 16, 12)
    captured = capture_from(document, user, InputSource.NOTHING)
    captured = type(captured)(captured.document_id, captured.anchor_id, "user", region)
    pixels = {name: solid(16, 12, (i * 40, 100, 200, 255)) for i, name in enumerate("abcd")}
    inserted = insert(
        captured,
        [
            NewLayer("below 1", Placement.BELOW, pixels["a"]),
            NewLayer("below 2", Placement.BELOW, pixels["b"], visible=False),
            NewLayer("above 1", Placement.ABOVE, pixels["c"]),
            NewLayer("above 2", Placement.ABOVE, pixels["d"]),
        ],
    )
    order = names(document.rootNode())
    expected = ["Background", "below 1", "below 2", "user", "above 1", "above 2", "top"]
    layers = {node.name(): node for node in document.rootNode().childNodes()}
    placed = all(
        bytes(layers[name].pixelData(8, 4, 16, 12)) == pixels[key]
        for name, key in (("below 1", "a"), ("below 2", "b"), ("above 1", "c"), ("above 2", "d"))
    )
    outside = bytes(layers["above 1"].pixelData(0, 0, 8, 4)) == bytes(8 * 4 * 4)
    bounds = layers["above 1"].bounds()
    exact = (bounds.x(), bounds.y(), bounds.width(), bounds.height()) == (8, 4, 16, 12)
    hidden = not layers["below 2"].visible() and layers["below 1"].visible()
    unchanged = [s for s in state_of(document) if s[0] in ("user", "top", "Background")] == [
        s for s in before if s[0] in ("user", "top", "Background")
    ]
    document.close()
    ok = order == expected and placed and outside and exact and hidden and unchanged
    detail = {
        "order": order,
        "inserted": inserted,
        "pixels": placed,
        "transparent outside": outside,
        "bounds": exact,
        "hidden": hidden,
        "user layers unchanged": unchanged,
    }
    return ok, detail


@check
def layers_go_next_to_an_anchor_inside_a_group(results):
    document, _, group, _ = scene_document()
    yellow = find_node(document.rootNode(), node_id(group.childNodes()[1]))
    captured = capture_from(document, yellow, InputSource.NOTHING)
    insert(
        captured,
        [
            NewLayer("bg", Placement.BELOW, solid(W, H, (5, 5, 5, 255))),
            NewLayer("fg", Placement.ABOVE, solid(W, H, (6, 6, 6, 255))),
        ],
    )
    group = find_node(document.rootNode(), node_id(group))
    order = names(group)
    top_level = names(document.rootNode())
    document.close()
    ok = order == ["green", "bg", "yellow", "fg"] and top_level == [
        "Background",
        "red",
        "group",
        "blue",
    ]
    return ok, (order, top_level)


@check
def a_split_goes_into_one_new_group_directly_above_its_source(results):
    """A split's layers, bottom first, in a new group directly above the source layer,
    each holding its pixels at the region; the source and the rest are untouched. A
    layer of that group split again gets its own group directly above it, inside."""
    document = new_document("split")
    user = add_layer(document, "user", solid(W, H, (10, 20, 30, 255)))
    add_layer(document, "top", solid(W, H, (1, 2, 3, 40)))
    before = state_of(document)
    region = Bounds(8, 4, 16, 12)
    captured = capture_from(document, user, InputSource.NOTHING)
    captured = type(captured)(captured.document_id, captured.anchor_id, "user", region)
    pixels = [solid(16, 12, (i * 60, 100, 200, 100 + i * 50)) for i in range(3)]
    inserted = insert(
        captured,
        [
            NewLayer(f"Layer {i + 1}/3", Placement.ABOVE, data, group="Split: user")
            for i, data in enumerate(pixels)
        ],
    )
    root = document.rootNode()
    order = names(root)
    group = next(node for node in root.childNodes() if node.name() == "Split: user")
    children = group.childNodes()
    placed = [bytes(child.pixelData(8, 4, 16, 12)) for child in children] == pixels
    kinds = (group.type(), [child.type() for child in children])
    unchanged = [s for s in state_of(document) if s[0] in ("user", "top", "Background")] == [
        s for s in before if s[0] in ("user", "top", "Background")
    ]
    middle = find_node(root, node_id(children[1]))
    again = capture_from(document, middle, InputSource.NOTHING)
    insert(again, [NewLayer("inner", Placement.ABOVE, solid(W, H, (9, 9, 9, 9)), group="Split 2")])
    group = find_node(root, node_id(group))
    nested = names(group)
    inner = [node.name() for node in group.childNodes()[2].childNodes()]
    document.close()
    ok = (
        inserted == ["Split: user"]
        and order == ["Background", "user", "Split: user", "top"]
        and names(group)[0] == "Layer 1/3"
        and kinds == ("grouplayer", ["paintlayer"] * 3)
        and placed
        and unchanged
        and nested == ["Layer 1/3", "Layer 2/3", "Split 2", "Layer 3/3"]
        and inner == ["inner"]
    )
    detail = {
        "inserted": inserted,
        "order": order,
        "kinds": kinds,
        "pixels": placed,
        "user layers unchanged": unchanged,
        "after the second split": nested,
        "inner": inner,
    }
    return ok, detail


@check
def below_the_bottom_layer_without_a_window_stays_directly_above(results):
    """Lowering needs Krita's action on the active view (checked in the GUI test)."""
    document = new_document("bottom")
    background = document.rootNode().childNodes()[0]
    captured = capture_from(document, background, InputSource.NOTHING)
    inserted = insert(captured, [NewLayer("bg", Placement.BELOW, solid(W, H, (1, 1, 1, 255)))])
    order = names(document.rootNode())
    document.close()
    return inserted == ["bg"] and order == ["Background", "bg"], order


@check
def a_missing_anchor_puts_the_layers_on_top(results):
    document = new_document("gone")
    user = add_layer(document, "user", solid(W, H, (1, 1, 1, 255)))
    captured = capture_from(document, user, InputSource.NOTHING)
    user.remove()
    document.waitForDone()
    insert(captured, [NewLayer("new", Placement.BELOW, solid(W, H, (2, 2, 2, 255)))])
    order = names(document.rootNode())
    document.close()
    return order == ["Background", "new"], order


@check
def a_closed_document_gets_nothing(results):
    document = new_document("closed")
    user = add_layer(document, "user", solid(W, H, (1, 1, 1, 255)))
    captured = capture_from(document, user, InputSource.NOTHING)
    identifier = document_id(document)
    document.close()
    try:
        insert(captured, [NewLayer("new", Placement.ABOVE, solid(W, H, (2, 2, 2, 255)))])
    except DocumentClosed as error:
        return find_document(identifier) is None, str(error)
    return False, "no error"


@check
def a_short_buffer_is_refused_before_krita_reads_it(results):
    document = new_document("short")
    user = add_layer(document, "user", solid(W, H, (1, 1, 1, 255)))
    captured = capture_from(document, user, InputSource.NOTHING)
    try:
        insert(captured, [NewLayer("new", Placement.ABOVE, bytes(10))])
    except ValueError as error:
        order = names(document.rootNode())
        document.close()
        return order == ["Background", "user"], str(error)
    document.close()
    return False, "no error"


def main(args):
    output = args[0] if args else "canvas_checks.json"
    results = {}
    for function in CHECKS:
        try:
            ok, detail = function(results)
        except Exception:
            ok, detail = False, traceback.format_exc()
        results[function.__name__] = {"ok": bool(ok), "detail": repr(detail)}
    with open(output, "w", encoding="utf-8") as file:
        json.dump(results, file, indent=1)
    sys.stdout.flush()
