"""Drives the installed LayerDiffuse plugin in a real Krita, for the end-to-end test.

Installed only into the test's temporary Krita profile, next to the plugin from the
built zip. When the window exists it runs the scenario `LAYERDIFFUSE_TEST_SCENARIO`
names: `sd15` (the default; against an SD1.5 backend) or `sdxl` (against an SDXL
backend, the family switched to SDXL in the docker). A scenario is a generator whose
steps run on Krita's own event loop, one `QTimer.singleShot` after another (a nested
`processEvents` loop would break layer activation, krita.md §4.3b). It triggers the
plugin's actions for real through `Krita.instance().action(...)`, checks the layers they
insert, writes every check to the JSON file `LAYERDIFFUSE_TEST_RESULTS` names, grabs
the docker into `LAYERDIFFUSE_SCREENSHOT` (sd15), and quits Krita with `file_quit`.
"""

from __future__ import annotations

import json
import os
import re
import time
import traceback

from krita import Extension, Krita, Selection

# Qt as the plugin imports it: PyQt6 in Krita 6, PyQt5 in Krita 5.
from layerdiffuse.qt import (
    QCheckBox,
    QComboBox,
    QCoreApplication,
    QDockWidget,
    QLabel,
    QListWidget,
    QPlainTextEdit,
    QPoint,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTimer,
    QToolButton,
    QWidget,
)

RESULTS = os.environ.get("LAYERDIFFUSE_TEST_RESULTS", "")
SCREENSHOT = os.environ.get("LAYERDIFFUSE_SCREENSHOT", "")
WINDOW_SCREENSHOT = os.environ.get("LAYERDIFFUSE_WINDOW_SCREENSHOT", "")
RESTART_REQUEST = os.environ.get("LAYERDIFFUSE_RESTART_REQUEST", "")
WIDTH, HEIGHT = 160, 120
PROMPT = "a glass bottle, high quality"
USER_LAYER = "User Paint"
ACTIONS = (
    "layerdiffuse_generate_layer",
    "layerdiffuse_generate_background",
    "layerdiffuse_generate_foreground",
    "layerdiffuse_cancel",
)
POLL_MS = 200
STEP_TIMEOUT = 90.0


class Wait:
    """A step that waits until `condition()` is true (polled), or fails after a timeout."""

    def __init__(self, what, condition, timeout=STEP_TIMEOUT):
        self.what = what
        self.condition = condition
        self.timeout = timeout


class Sleep:
    def __init__(self, seconds):
        self.seconds = seconds


class Runner:
    """Runs a scenario generator on Krita's event loop, one timer tick per step."""

    def __init__(self, scenario):
        self.results = {"checks": {}, "error": None, "finished": False}
        self.scenario = scenario(self)
        self.waiting = None
        self.deadline = 0.0
        self.started = False

    def check(self, name, ok, detail=""):
        self.results["checks"][name] = {"ok": bool(ok), "detail": str(detail)}

    def start(self):
        if self.started:  # windowCreated may fire twice
            return
        self.started = True
        self.save()  # tells the test that the driver runs
        QTimer.singleShot(0, self.tick)

    def tick(self):
        try:
            if self.waiting is not None:
                if not self.waiting.condition():
                    if time.monotonic() > self.deadline:
                        raise TimeoutError(f"timed out waiting for {self.waiting.what}")
                    QTimer.singleShot(POLL_MS, self.tick)
                    return
                self.waiting = None
            step = next(self.scenario)
        except StopIteration:
            self.results["finished"] = True
            self.finish()
            return
        except Exception:
            self.results["error"] = traceback.format_exc()
            self.finish()
            return
        if isinstance(step, Sleep):
            QTimer.singleShot(int(step.seconds * 1000), self.tick)
        else:
            self.waiting = step
            self.deadline = time.monotonic() + step.timeout
            QTimer.singleShot(0, self.tick)

    def save(self):
        if RESULTS:
            with open(RESULTS, "w", encoding="utf-8") as file:
                json.dump(self.results, file, indent=1)

    def finish(self):
        self.save()
        app = Krita.instance()
        # The quit is scheduled first: nothing below may keep Krita from closing (a
        # document the scenario closed can still be listed, and raise when touched).
        # Again every few seconds: under load Krita may refuse a quit while the image is
        # still busy with the scenario's last stroke (seen once in 5.1.5 and in 5.3), and
        # a refused quit is not retried by Krita itself.
        for delay in QUIT_ATTEMPTS_MS:
            QTimer.singleShot(delay, _trigger_quit)
        QTimer.singleShot(QUIT_FALLBACK_MS, _quit_anyway)
        _documents_clean(app)


# Helpers -------------------------------------------------------------------------------------


def uid(node):
    return node.uniqueId().toString()


def walk(node):
    for child in node.childNodes():
        yield child
        yield from walk(child)


def ids(document):
    return [uid(node) for node in walk(document.rootNode())]


def names(document):
    """Top-level layer names, bottom first (without the global selection's mask)."""
    return [
        node.name() for node in document.rootNode().childNodes() if node.type() != "selectionmask"
    ]


def by_name(document, name):
    for node in walk(document.rootNode()):
        if node.name() == name:
            return node
    raise LookupError(name)


def snapshot(document, nodes):
    """The pixels and visibility of the given layers (to prove they are unchanged)."""
    return {
        uid(node): (
            bytes(node.pixelData(0, 0, document.width(), document.height())),
            node.visible(),
        )
        for node in nodes
    }


def alpha_box(node, document):
    from layerdiffuse.geometry import Extent
    from layerdiffuse.pixels import alpha_bounds

    data = bytes(node.pixelData(0, 0, document.width(), document.height()))
    return alpha_bounds(data, Extent(document.width(), document.height()))


def docker_widget(name, kind):
    window = Krita.instance().activeWindow().qwindow()
    dock = window.findChild(QDockWidget, "layerdiffuse_docker")
    return dock.findChild(kind, name) if dock is not None else None


def message():
    label = docker_widget("message", QLabel)
    return label.text() if label is not None else ""


def activate(document, node):
    """Make `node` active; asked again while waiting, as Krita may still be activating a
    layer it just added (after an insert or a redo) and override the first request."""
    wanted = uid(node)

    def active():
        current = document.activeNode()
        if current is not None and uid(current) == wanted:
            return True
        document.setActiveNode(node)
        return False

    document.setActiveNode(node)
    return Wait(f"{node.name()} to become active", active, 20.0)


# Shared steps ---------------------------------------------------------------------------------


class Scene:
    """The document every scenario starts from, and the checks on it."""

    def __init__(self, run, app, window, document):
        self.run = run
        self.app = app
        self.window = window
        self.document = document
        self.originals = snapshot(
            document, [by_name(document, "Background"), by_name(document, USER_LAYER)]
        )

    def users_unchanged(self):
        document = self.document
        now = snapshot(document, [by_name(document, USER_LAYER), by_name(document, "Background")])
        return now == self.originals

    def generate(self, action_name, expected_new, anchor, label):
        """Activate `anchor`, trigger the action, wait for `expected_new` new layers."""
        run, document = self.run, self.document
        before = set(ids(document))
        yield activate(document, anchor)
        action = self.app.action(action_name)
        # (A disabled action ignores the trigger, and the message before it would pass
        # for the answer: the check says so.)
        enabled, tooltip = action.isEnabled(), action.toolTip()
        action.trigger()
        yield Wait(
            f"{action_name} to insert {expected_new} layer(s)",
            lambda: (
                message().startswith(("Inserted", "Cancelled"))
                or docker_widget("message", QLabel).styleSheet().find("#c0392b") >= 0
            ),
        )
        new = [node for node in walk(document.rootNode()) if uid(node) not in before]
        run.check(
            f"{label}:message",
            message().startswith("Inserted"),
            message() if enabled else f"{message()} (the action was disabled: {tooltip})",
        )
        run.check(f"{label}:count", len(new) == expected_new, [n.name() for n in new])
        return new

    def check_layer(self, label, node, region):
        run = self.run
        box = alpha_box(node, self.document)
        run.check(f"{label}:alpha_not_empty", box is not None, box)
        inside = (
            box is not None
            and box.x >= region[0]
            and box.y >= region[1]
            and box.x + box.width <= region[0] + region[2]
            and box.y + box.height <= region[1] + region[3]
        )
        run.check(f"{label}:inside_region", inside, (box, region))
        # The result came back at the region's size: its content spans most of it.
        spans = box is not None and box.width * 2 >= region[2] and box.height * 2 >= region[3]
        run.check(f"{label}:region_sized", spans, (box, region))
        # What tells results apart comes first: "foreground · seed 7 · a glass bottle, …"
        run.check(
            f"{label}:name",
            re.match(r"(foreground|background|blended) · seed \d+ · ", node.name()) is not None
            and PROMPT[:20] in node.name(),
            node.name(),
        )

    # The three actions, as both scenarios run them -----------------------------------------

    def transparent_layer(self):
        """generate_layer: one transparent layer directly above the painter's layer."""
        run, document = self.run, self.document
        [layer] = yield from self.generate(
            "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "layer"
        )
        run.check(
            "layer:above_active",
            names(document) == ["Background", USER_LAYER, layer.name()],
            names(document),
        )
        self.check_layer("layer", layer, CANVAS)
        run.check("layer:users_unchanged", self.users_unchanged(), "")
        return layer

    def background_in_selection(self, layer_name):
        """generate_background in a selection: one opaque layer directly below the
        painter's layer, inside the selection (which stays selected)."""
        run, document = self.run, self.document
        selection = Selection()
        selection.select(*SELECTION, 255)
        document.setSelection(selection)
        [background] = yield from self.generate(
            "layerdiffuse_generate_background", 1, by_name(document, USER_LAYER), "background"
        )
        order = names(document)
        run.check(
            "background:below_active",
            order == ["Background", background.name(), USER_LAYER, layer_name],
            order,
        )
        run.check("background:role_in_name", "background" in background.name(), background.name())
        run.check(
            "background:opaque",
            is_opaque_in(background, document, SELECTION),
            alpha_box(background, document),
        )
        self.check_layer("background", background, SELECTION)
        run.check("background:users_unchanged", self.users_unchanged(), "")
        return background

    def deselect(self):
        """Select > Deselect, asked again each second while the selection stays: Krita 6
        once ignored it right after a redo (the selection was still there 10 s later)."""
        action = self.app.action("deselect")
        asked = [time.monotonic()]

        def gone():
            if self.document.selection() is None:
                return True
            if time.monotonic() - asked[0] > 1.0:
                action.trigger()
                asked[0] = time.monotonic()
            return False

        action.trigger()
        yield Wait("the selection to go", gone, 10.0)

    def foreground_into_scene(self, background_name, layer_name):
        """generate_foreground: one layer directly above the painter's layer; the
        transparent layer above it was hidden for the read and is visible again."""
        run, document = self.run, self.document
        [foreground] = yield from self.generate(
            "layerdiffuse_generate_foreground", 1, by_name(document, USER_LAYER), "foreground"
        )
        order = names(document)
        run.check(
            "foreground:above_active",
            order == ["Background", background_name, USER_LAYER, foreground.name(), layer_name],
            order,
        )
        run.check("foreground:role_in_name", "foreground" in foreground.name(), foreground.name())
        self.check_layer("foreground", foreground, CANVAS)
        run.check(
            "foreground:layers_above_visible_again", by_name(document, layer_name).visible(), ""
        )
        run.check("foreground:users_unchanged", self.users_unchanged(), "")
        return foreground


def open_scene(run):
    """A document with a white background and one painted layer of the user's; the
    docker, connected; the actions, with their texts from the .action file."""
    app = Krita.instance()
    yield Wait("the window", lambda: app.activeWindow() is not None, 30.0)
    window = app.activeWindow()

    document = app.createDocument(WIDTH, HEIGHT, "layerdiffuse-e2e", "RGBA", "U8", "", 72.0)
    window.addView(document)
    yield Wait("the document to be active", lambda: app.activeDocument() is not None, 20.0)
    user = document.createNode(USER_LAYER, "paintlayer")
    painted = bytearray(WIDTH * HEIGHT * 4)
    for y in range(20, 90):
        for x in range(30, 120):
            offset = (y * WIDTH + x) * 4
            painted[offset : offset + 4] = bytes((40, 60, 200, 255 if x < 80 else 128))  # B G R A
    user.setPixelData(bytes(painted), 0, 0, WIDTH, HEIGHT)
    document.rootNode().addChildNode(user, None)
    document.waitForDone()
    scene = Scene(run, app, window, document)

    yield Wait("the docker", lambda: docker_widget("connection_status", QLabel) is not None, 30.0)
    dock = window.qwindow().findChild(QDockWidget, "layerdiffuse_docker")
    dock.show()
    yield Wait(
        "the docker to connect",
        lambda: "Connected" in docker_widget("connection_status", QLabel).toolTip(),
        30.0,
    )
    run.check("docker_connected", True, docker_widget("connection_status", QLabel).toolTip())
    prompt = docker_widget("prompt", QPlainTextEdit)
    run.check("docker_prompt_from_settings", PROMPT in prompt.toPlainText(), prompt.toPlainText())
    found = {name: app.action(name) for name in ACTIONS}
    run.check(
        "actions_registered",
        all(action is not None for action in found.values()),
        {name: action is not None for name, action in found.items()},
    )
    # (The tooltip says why an action is off, when it is: the file's texts are also in
    # "What's This".)
    whats_this = found["layerdiffuse_generate_background"].whatsThis()
    run.check("actions_file_loaded", "directly below" in whats_this, whats_this)
    menu_bar = window.qwindow().menuBar()
    tools = next(a.menu() for a in menu_bar.actions() if a.objectName() == "tools")
    scripts = next(a.menu() for a in tools.actions() if a.objectName() == "scripts")
    in_menu = {a.objectName() for a in scripts.actions()}
    run.check("actions_in_tools_scripts", set(ACTIONS) <= in_menu, sorted(in_menu))
    yield from check_layout(run, window, dock)
    return scene, dock


# The widgets a painter needs without scrolling, at Krita's default window size.
ESSENTIAL_WIDGETS = (
    ("prompt", QPlainTextEdit),
    ("method", QComboBox),
    ("generate", QPushButton),
    ("connection_status", QLabel),
    ("message_line", QLabel),  # the progress bar takes its place while a job runs
)


def check_layout(run, window, dock):
    """The docker as Krita first shows it (default window size, the docker stacked in
    the right dock column): nothing is cut off on the right, no horizontal scrollbar, and
    the prompt, what to make, Generate, the connection status and the message line (the
    progress bar while a job runs) are fully visible without scrolling; with its sections
    open, nothing is cut off either. Grabs the whole window into
    LAYERDIFFUSE_WINDOW_SCREENSHOT."""
    yield Sleep(1.0)  # let the layout settle after the docker's first show
    qwindow = window.qwindow()
    panel = dock.widget()
    scroll = panel.findChild(QScrollArea, "settings_scroll")
    viewport = scroll.viewport()
    # Krita opens its window at 2/3 of the screen, 1066x666 here (Krita 5.3 and 6 make it
    # taller on their own). Dockers whose smallest sizes do not fit make it grow: the
    # docker must keep Krita's smallest window within 1066x666.
    smallest_with = qwindow.minimumSizeHint().height()
    dock.hide()
    yield Sleep(0.5)
    smallest_without = qwindow.minimumSizeHint().height()
    dock.show()
    yield Sleep(1.0)
    run.check(
        "layout:docker_does_not_make_the_window_taller",
        qwindow.width() == 1066 and smallest_with <= 666,
        f"window {qwindow.width()}x{qwindow.height()}, smallest {smallest_with} with the "
        f"docker, {smallest_without} without; docker {dock.width()}x{dock.height()}, "
        f"panel {panel.width()}x{panel.height()}, settings viewport "
        f"{viewport.width()}x{viewport.height()}",
    )
    run.check(
        "layout:no_horizontal_scrollbar",
        not scroll.horizontalScrollBar().isVisible()
        and scroll.widget().width() <= viewport.width(),
        f"settings {scroll.widget().width()} wide in a {viewport.width()} px viewport",
    )
    for name, kind in ESSENTIAL_WIDGETS:
        widget = docker_widget(name, kind)
        top_left = widget.mapTo(panel, QPoint(0, 0))
        inside = (
            widget.isVisible()
            and top_left.y() >= 0
            and top_left.y() + widget.height() <= panel.height()
            and not scroll.isAncestorOf(widget)
        )
        run.check(
            f"layout:{name}_visible_without_scrolling",
            inside,
            f"y {top_left.y()}..{top_left.y() + widget.height()} of {panel.height()}",
        )
    if WINDOW_SCREENSHOT:
        qwindow.grab().save(WINDOW_SCREENSHOT, "PNG")
        run.check("layout:screenshot_saved", os.path.isfile(WINDOW_SCREENSHOT), WINDOW_SCREENSHOT)
    yield from check_nothing_clipped(run, "layout", panel, scroll)
    sections = ("settings_open_button", "connection_open_button")
    for name in sections:
        docker_widget(name, QToolButton).click()
    yield from check_nothing_clipped(run, "layout_open", panel, scroll)
    for name in sections:
        docker_widget(name, QToolButton).click()


def check_nothing_clipped(run, label, panel, scroll):
    """Every visible widget of the docker lies within its width: the panel's, and for
    what is in the scroll area, its viewport's (the scroll area never scrolls sideways)."""
    yield Sleep(0.3)
    viewport = scroll.viewport()
    clipped = []
    for widget in panel.findChildren(QWidget):
        if not widget.isVisibleTo(panel) or widget.width() <= 0:
            continue
        area = viewport if viewport.isAncestorOf(widget) else panel
        left = widget.mapTo(area, QPoint(0, 0)).x()
        if left < 0 or left + widget.width() > area.width():
            name = widget.objectName() or type(widget).__name__
            clipped.append(f"{name}: {left}+{widget.width()} of {area.width()}")
    run.check(f"{label}:nothing_clipped_on_the_right", not clipped, clipped)


def check_settings_shown(run, label, shown, hidden):
    """The Settings section shows exactly the settings that apply (by object name)."""
    visible = {}
    for name in (*shown, *hidden):
        widget = docker_widget(name, QWidget)
        visible[name] = widget is not None and widget.isVisible()
    run.check(
        f"settings:{label}",
        all(visible[name] for name in shown) and not any(visible[name] for name in hidden),
        visible,
    )


def open_settings(open_):
    """Open (or close) the docker's Settings section, as a click on its title does."""
    button = docker_widget("settings_open_button", QToolButton)
    if button.isChecked() != open_:
        button.click()
    yield Sleep(0.3)


def seed_reuse(scene):
    """Random on: the result's seed shows in the seed box and as the last result;
    "Reuse seed" turns Random off with that seed, and the next layer has it again.
    Also: the Settings section shows only what applies to SD1.5's methods."""
    run, document = scene.run, scene.document
    yield from open_settings(True)
    check_settings_shown(
        run,
        "sd15_transparent_layer",
        shown=("steps", "cfg_scale", "seed", "sampler", "stop_at", "negative_prompt"),
        hidden=("weight", "sdxl_transparent_model", "foreground_prompt", "insert_blended"),
    )
    method = docker_widget("method", QComboBox)
    method.setCurrentIndex(method.findData("together"))
    yield Sleep(0.3)
    check_settings_shown(
        run,
        "sd15_together",
        shown=("foreground_prompt", "background_prompt", "blended_prompt", "insert_blended"),
        hidden=("weight", "sdxl_transparent_model"),
    )
    method.setCurrentIndex(method.findData("transparent_layer"))
    random_box = docker_widget("random_seed", QCheckBox)
    random_box.setChecked(True)
    [first] = yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "seed"
    )
    seed = int(re.search(r"seed (\d+)", first.name()).group(1))
    seed_box = docker_widget("seed", QSpinBox)
    last = docker_widget("last_seed", QLabel)
    run.check("seed:seed_box_shows_the_last_seed", seed_box.value() == seed, seed_box.value())
    run.check("seed:last_result_shown", last.isVisible() and str(seed) in last.text(), last.text())
    preview = docker_widget("preview", QLabel)
    pixmap = preview.pixmap()
    run.check("seed:preview_stays_after_the_job", pixmap is not None and not pixmap.isNull(), "")
    docker_widget("reuse_seed", QPushButton).click()
    run.check(
        "seed:reuse_turns_random_off",
        not random_box.isChecked() and seed_box.value() == seed,
        (random_box.isChecked(), seed_box.value()),
    )
    [again] = yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "seed"
    )
    run.check("seed:same_seed_again", f"seed {seed} ·" in again.name(), again.name())
    # Tidy up: the later steps expect the layers they started with.
    removed = {uid(again), uid(first)}
    for node in (again, first):
        node.remove()
    yield Wait("the removal", lambda: not removed & set(ids(document)), 10.0)
    yield from open_settings(False)


def tray(scene):
    run, app, document = scene.run, scene.app, scene.document
    yield from open_settings(True)
    insert_at_once = docker_widget("insert_results", QCheckBox)
    insert_at_once.setChecked(False)
    tray_list = docker_widget("tray", QListWidget)
    shown_before = tray_list.count()
    before = set(ids(document))
    yield activate(document, by_name(document, USER_LAYER))
    app.action("layerdiffuse_generate_layer").trigger()
    yield Wait("the result in the tray", lambda: "in the tray" in message())
    run.check("tray:nothing_inserted_at_once", set(ids(document)) == before, names(document))
    run.check(
        "tray:result_shown_first",
        tray_list.isVisible() and tray_list.count() == min(shown_before + 1, 8),
        tray_list.count(),
    )
    tooltip = tray_list.item(0).toolTip()
    run.check(
        "tray:tooltip_names_the_layer",
        re.match(r"foreground · seed \d+ · a glass bottle", tooltip) is not None,
        tooltip,
    )
    tray_list.itemClicked.emit(tray_list.item(0))  # what a click on it emits
    yield Wait("the tray's layer", lambda: len(set(ids(document)) - before) == 1, 20.0)
    [new] = [node for node in walk(document.rootNode()) if uid(node) not in before]
    run.check(
        "tray:click_inserts_above_the_layer_it_was_made_for",
        names(document).index(new.name()) == names(document).index(USER_LAYER) + 1,
        names(document),
    )
    run.check("tray:users_unchanged", scene.users_unchanged(), "")
    new_id = uid(new)
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: new_id not in ids(document), 10.0)
    run.check("tray:one_undo_step", set(ids(document)) == before, names(document))
    insert_at_once.setChecked(True)
    yield from open_settings(False)


MASK_DOCUMENT = (3000, 2000)
ELLIPSE = (700, 500, 900, 600)  # x, y, width, height of the selected ellipse


def ellipse_span(y):
    """The columns [start, end) of the ellipse on document row y (empty outside it)."""
    x, top, width, height = ELLIPSE
    dy = (y + 0.5 - (top + height / 2)) / (height / 2)
    if abs(dy) >= 1:
        return 0, 0
    half = (width / 2) * (1 - dy * dy) ** 0.5
    centre = x + width / 2
    start = max(x, int(centre - half + 0.5))
    return start, max(start, min(x + width, int(centre + half + 0.5)))


def ellipse_selection_bytes():
    x, top, width, height = ELLIPSE
    rows = []
    for y in range(top, top + height):
        start, end = ellipse_span(y)
        rows.append(bytes(start - x) + b"\xff" * (end - start) + bytes(x + width - end))
    return b"".join(rows)


def masked_selection(run, app, window):
    """An elliptical selection on a 3000 × 2000 document: the transparent layer is the
    selection's bounds at document resolution, clear outside the ellipse, and nothing
    outside the ellipse differs from the document before, byte for byte."""
    width, height = MASK_DOCUMENT
    document = app.createDocument(width, height, "layerdiffuse-mask", "RGBA", "U8", "", 72.0)
    window.addView(document)
    yield Wait("the mask document", lambda: app.activeDocument().name() == "layerdiffuse-mask")
    user = document.createNode(USER_LAYER, "paintlayer")
    row = bytes((40, 60, 200, 255)) * (width // 3) + bytes(4 * (width - width // 3))
    user.setPixelData(row * height, 0, 0, width, height)
    document.rootNode().addChildNode(user, None)
    document.waitForDone()
    document.refreshProjection()
    before = bytes(document.pixelData(0, 0, width, height))
    user_before = bytes(user.pixelData(0, 0, width, height))
    selection = Selection()
    selection.setPixelData(ellipse_selection_bytes(), *ELLIPSE)
    document.setSelection(selection)
    yield activate(document, by_name(document, USER_LAYER))
    known = set(ids(document))
    app.action("layerdiffuse_generate_layer").trigger()
    yield Wait("the masked layer", lambda: message().startswith("Inserted") or is_error(), 240.0)
    run.check("mask:inserted", message().startswith("Inserted"), message())
    new = [node for node in walk(document.rootNode()) if uid(node) not in known]
    run.check("mask:one_layer", len(new) == 1, [n.name() for n in new])
    if len(new) != 1:
        return
    layer = new[0]
    x, top, w, h = ELLIPSE
    bounds = layer.bounds()
    run.check(
        "mask:layer_within_the_selections_bounds",
        bounds.x() >= x and bounds.y() >= top
        and bounds.x() + bounds.width() <= x + w and bounds.y() + bounds.height() <= top + h,
        (bounds.x(), bounds.y(), bounds.width(), bounds.height()),
    )  # fmt: skip
    alpha = bytes(layer.pixelData(x, top, w, h))[3::4]
    outside = inside = 0
    for row_index in range(h):
        start, end = ellipse_span(top + row_index)
        row_alpha = alpha[row_index * w : (row_index + 1) * w]
        outside += len(row_alpha[: start - x].strip(b"\0")) + len(row_alpha[end - x :].strip(b"\0"))
        inside += len(row_alpha[start - x : end - x].strip(b"\0"))
    run.check("mask:alpha_zero_outside_the_ellipse", outside == 0, outside)
    run.check("mask:something_inside", inside > 0, inside)
    document.refreshProjection()
    after = bytes(document.pixelData(0, 0, width, height))
    stride = width * 4
    changed = 0
    for y in range(height):
        start, end = ellipse_span(y)
        row_before = before[y * stride : (y + 1) * stride]
        row_after = after[y * stride : (y + 1) * stride]
        if row_before[: start * 4] != row_after[: start * 4]:
            changed += 1
        if row_before[end * 4 :] != row_after[end * 4 :]:
            changed += 1
    run.check("mask:nothing_outside_the_ellipse_changed", changed == 0, f"{changed} row parts")
    run.check(
        "mask:users_layer_unchanged",
        bytes(user.pixelData(0, 0, width, height)) == user_before,
        "",
    )
    document.setModified(False)
    document.close()
    yield Wait("the scene document again", lambda: app.activeDocument() is not None, 20.0)


def floating_messages(window):
    """The texts Krita shows as floating messages on the canvas now."""
    return [
        widget
        for widget in window.qwindow().findChildren(QWidget)
        if widget.metaObject().className() == "KisFloatingMessage" and widget.isVisible()
    ]


def floating_refusal(scene):
    """Background for an empty layer, from the menu's action: the refusal is in the
    docker and floats on the canvas; nothing is inserted."""
    run, app, document = scene.run, scene.app, scene.document
    empty = document.createNode("Empty", "paintlayer")
    document.rootNode().addChildNode(empty, by_name(document, USER_LAYER))
    yield Wait("the empty layer", lambda: "Empty" in names(document), 10.0)
    yield activate(document, by_name(document, "Empty"))
    before = set(ids(document))
    shown_before = len(floating_messages(scene.window))
    app.action("layerdiffuse_generate_background").trigger()
    yield Wait("the refusal", is_error, 10.0)
    run.check("floating:refusal_in_the_docker", "nothing visible" in message(), message())
    yield Wait("a floating message", lambda: len(floating_messages(scene.window)) > shown_before)
    run.check(
        "floating:refusal_on_the_canvas",
        len(floating_messages(scene.window)) > shown_before,
        len(floating_messages(scene.window)),
    )
    run.check("floating:nothing_inserted", set(ids(document)) == before, names(document))
    removed = uid(empty)
    empty.remove()
    yield Wait("the removal", lambda: removed not in ids(document), 10.0)
    yield activate(document, by_name(document, USER_LAYER))


def reconnect(scene):
    """The backend process is replaced (the test restarts it when asked): the dot leaves
    green, comes back by itself, and a job runs on the new backend."""
    run, document = scene.run, scene.document
    status = docker_widget("connection_status", QLabel)
    with open(RESTART_REQUEST, "w", encoding="utf-8"):
        pass
    yield Wait("the backend to go", lambda: "Connected" not in status.toolTip(), 60.0)
    run.check("reconnect:lost_is_shown", "Connected" not in status.toolTip(), status.toolTip())
    yield Wait("the plugin to reconnect", lambda: "Connected" in status.toolTip(), 90.0)
    run.check("reconnect:connected_again", "Connected" in status.toolTip(), status.toolTip())
    yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "reconnect"
    )
    run.check("reconnect:users_unchanged", scene.users_unchanged(), "")


CANVAS = (0, 0, WIDTH, HEIGHT)
SELECTION = (40, 24, 64, 48)


# The SD1.5 scenario -------------------------------------------------------------------------


def scenario_sd15(run):
    scene, dock = yield from open_scene(run)
    app, window, document = scene.app, scene.window, scene.document
    users_unchanged, generate, check_layer = (
        scene.users_unchanged,
        scene.generate,
        scene.check_layer,
    )
    canvas = CANVAS

    # 1. A transparent layer from the prompt: directly above the active layer.
    layer = yield from scene.transparent_layer()
    layer_name = layer.name()

    # One undo removes it (a single undo step), redo brings it back.
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: layer_name not in names(document), 10.0)
    run.check("undo:removes_layer", names(document) == ["Background", USER_LAYER], names(document))
    run.check("undo:users_unchanged", users_unchanged(), "")
    app.action("edit_redo").trigger()
    yield Wait("redo", lambda: layer_name in names(document), 10.0)
    run.check("undo:redo_restores", names(document)[-1] == layer_name, names(document))

    # 2. A background for the user's layer, in a selection: directly below it, inside it.
    background_layer = yield from scene.background_in_selection(layer_name)
    yield from scene.deselect()

    # 3. A foreground into the scene: directly above the active layer.
    foreground = yield from scene.foreground_into_scene(background_layer.name(), layer_name)
    # Hiding and showing layers for the read left no undo step: one undo removes the
    # foreground, and nothing else changes.
    foreground_id = uid(foreground)  # (the transparent layer has the same name)
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: foreground_id not in ids(document), 10.0)
    run.check(
        "foreground:one_undo_step",
        names(document) == ["Background", background_layer.name(), USER_LAYER, layer_name]
        and by_name(document, layer_name).visible()
        and document.selection() is None,  # the deselect before it was not undone
        names(document),
    )
    app.action("edit_redo").trigger()
    yield Wait("redo", lambda: foreground_id in ids(document), 10.0)

    # 4. Foreground and background together, from the docker's method choice.
    method = docker_widget("method", QComboBox)
    method.setCurrentIndex(method.findData("together"))
    before = set(ids(document))
    yield activate(document, by_name(document, USER_LAYER))
    docker_widget("generate", QPushButton).click()
    yield Wait(
        "together to insert",
        lambda: (
            message().startswith("Inserted")
            or "#c0392b" in docker_widget("message", QLabel).styleSheet()
        ),
    )
    new = [node for node in walk(document.rootNode()) if uid(node) not in before]
    run.check("together:count", len(new) == 2, [n.name() for n in new])
    order = names(document)
    user_index = order.index(USER_LAYER)
    pair = order[user_index + 1 : user_index + 3]
    run.check(
        "together:pair_above_active",
        len(pair) == 2 and "background" in pair[0] and "foreground" in pair[1],
        order,
    )
    for node in new:
        check_layer(
            f"together:{'foreground' if 'foreground' in node.name() else 'background'}",
            node,
            canvas,
        )
    run.check("together:users_unchanged", users_unchanged(), "")

    # The docker after a real generation (prompt, status, progress and preview).
    if SCREENSHOT:
        yield from open_settings(True)
        dock.setFloating(True)
        dock.resize(300, 760)
        yield Sleep(1.0)
        dock.grab().save(SCREENSHOT, "PNG")
        dock.setFloating(False)
        yield from open_settings(False)
        run.check("screenshot_saved", os.path.isfile(SCREENSHOT), SCREENSHOT)
    method.setCurrentIndex(method.findData("transparent_layer"))

    # 5. A background for the bottom-most layer, in a selection, goes below it in one undo
    # step (dropped below the Layers docker's last row, then moved to the selection);
    # Undo removes it, Redo brings it back there.
    before_bottom = names(document)
    selection = Selection()
    selection.select(*SELECTION, 255)
    document.setSelection(selection)
    new = yield from generate(
        "layerdiffuse_generate_background", 1, by_name(document, "Background"), "bottom"
    )
    order = names(document)
    run.check("bottom:below_bottom_layer", order[:2] == [new[0].name(), "Background"], order)
    run.check(
        "bottom:in_the_selection",
        is_opaque_in(new[0], document, SELECTION),
        alpha_box(new[0], document),
    )
    check_layer("bottom", new[0], SELECTION)
    run.check("bottom:users_unchanged", users_unchanged(), "")
    bottom_id = uid(new[0])
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: bottom_id not in ids(document), 10.0)
    run.check("bottom:one_undo_step", names(document) == before_bottom, names(document))
    run.check("bottom:undo_users_unchanged", users_unchanged(), "")
    app.action("edit_redo").trigger()
    yield Wait("redo", lambda: bottom_id in ids(document), 10.0)
    run.check("bottom:redo_restores_below", names(document) == order, names(document))
    yield from scene.deselect()  # an undo step of its own: after the undo checks

    # 5b. A random seed is shown after the job and reused in one click.
    yield from seed_reuse(scene)

    # 5c. With "insert results at once" off, a result waits in the tray; a click inserts
    # it in one undo step.
    yield from tray(scene)

    # 6. Cancel: nothing is inserted.
    steps = docker_widget("steps", QSpinBox)
    steps.setValue(150)
    before = set(ids(document))
    yield activate(document, by_name(document, USER_LAYER))
    app.action("layerdiffuse_generate_layer").trigger()
    bar = docker_widget("progress", QProgressBar)
    yield Wait("progress", lambda: bar.value() > 0, 60.0)
    yield Sleep(0.5)
    shown = bar.text()
    run.check(
        "cancel:progress_shows_steps_and_time_left",
        re.fullmatch(r"Step \d+/150 · \d+ (s|min) left", shown) is not None,
        shown,
    )
    generate_button = docker_widget("generate", QPushButton)
    run.check("cancel:generate_turned_cancel", generate_button.text() == "Cancel", "")
    run.check(
        "cancel:progress_replaces_the_message_line",
        bar.isVisible() and not docker_widget("message_line", QLabel).isVisible(),
        "",
    )
    app.action("layerdiffuse_cancel").trigger()
    yield Wait("the cancel", lambda: message().startswith("Cancelled"), 30.0)
    yield Sleep(1.5)
    run.check("cancel:message", message().startswith("Cancelled"), message())
    run.check("cancel:nothing_inserted", set(ids(document)) == before, names(document))
    run.check("cancel:users_unchanged", users_unchanged(), "")
    steps.setValue(5)  # saved in kritarc: the test reads it back after Krita quit

    # 7. A document that is not 8-bit RGBA gets a clear message and no layer.
    gray = app.createDocument(64, 64, "layerdiffuse-gray", "GRAYA", "U8", "", 72.0)
    window.addView(gray)
    yield Wait(
        "the gray document", lambda: app.activeDocument().name() == "layerdiffuse-gray", 20.0
    )
    before = set(ids(gray))
    action = app.action("layerdiffuse_generate_layer")
    generate_button = docker_widget("generate", QPushButton)
    yield Wait("the actions to be disabled", lambda: not action.isEnabled(), 10.0)
    run.check(
        "gray:action_disabled_with_the_reason",
        not action.isEnabled() and "8-bit RGBA" in action.toolTip() and "GRAYA" in action.toolTip(),
        action.toolTip(),
    )
    run.check(
        "gray:generate_disabled_with_the_reason",
        not generate_button.isEnabled() and "8-bit RGBA" in generate_button.toolTip(),
        generate_button.toolTip(),
    )
    action.trigger()  # a disabled action does nothing
    yield Sleep(0.5)
    run.check("gray:nothing_inserted", set(ids(gray)) == before, names(gray))

    # Back on the RGBA document, everything is enabled again.
    gray.close()
    yield Wait("the scene document", lambda: app.activeDocument() is not None, 20.0)
    yield activate(document, by_name(document, USER_LAYER))
    yield Wait("the actions to be enabled", action.isEnabled, 10.0)
    run.check("gray:enabled_again_on_an_rgba_document", action.isEnabled(), action.toolTip())

    # 7b. An elliptical selection shapes the layer on a large document.
    yield from masked_selection(run, app, window)
    yield activate(document, by_name(document, USER_LAYER))

    # 8. A refusal found only at the trigger (nothing visible to make a background for)
    # also shows on the canvas, where a painter using the menu or a shortcut looks.
    yield from floating_refusal(scene)

    # 9. The backend restarts: the docker shows it, reconnects by itself, and generates.
    yield from reconnect(scene)


# The SDXL scenario --------------------------------------------------------------------------


def is_error():
    return "#c0392b" in docker_widget("message", QLabel).styleSheet()


def scenario_sdxl(run):
    """Against an SDXL backend, with the family the painter last chose (SD1.5, in kritarc)
    switched to SDXL in the docker: every action for real, "together" explained."""
    scene, _dock = yield from open_scene(run)
    app, document = scene.app, scene.document
    users_unchanged = scene.users_unchanged
    run.check(
        "docker_connected_to_sdxl",
        "SDXL" in docker_widget("connection_status", QLabel).toolTip(),
        docker_widget("connection_status", QLabel).toolTip(),
    )

    # 0. SD1.5 chosen (from kritarc) against an SDXL backend: a sentence, no layer, no job.
    family = docker_widget("family", QComboBox)
    run.check("family:sd15_from_settings", family.currentData() == "sd15", family.currentData())
    before = set(ids(document))
    yield activate(document, by_name(document, USER_LAYER))
    action = app.action("layerdiffuse_generate_layer")
    yield Wait("the action to be disabled", lambda: not action.isEnabled(), 10.0)
    run.check(
        "family:sd15_refused",
        not action.isEnabled()
        and "sd15_transparent" in action.toolTip()
        and "SD1.5" in action.toolTip(),
        action.toolTip(),
    )
    action.trigger()  # disabled: nothing happens
    yield Sleep(0.5)
    run.check("family:sd15_nothing_inserted", set(ids(document)) == before, names(document))
    # The painter picks SDXL in the docker; it is saved at once.
    family.setCurrentIndex(family.findData("sdxl"))
    saved = app.readSetting("layerdiffuse", "family", "")
    run.check("family:sdxl_chosen", family.currentData() == "sdxl" and saved == "sdxl", saved)

    yield from open_settings(True)
    check_settings_shown(
        run,
        "sdxl_transparent_layer",
        shown=("weight", "sdxl_transparent_model", "stop_at", "steps"),
        hidden=("foreground_prompt", "background_prompt", "blended_prompt", "insert_blended"),
    )
    yield from open_settings(False)

    # 1. A transparent layer (sdxl_transparent_attn): directly above the active layer.
    layer = yield from scene.transparent_layer()
    layer_name = layer.name()

    # 1b. Few-step mode (protocol 1.2): Settings ▸ Speed lists the backend's SDXL LoRAs;
    # picking one sets its steps, sampler and CFG, and the next layer is made with it.
    yield from open_settings(True)
    speed = docker_widget("speed", QComboBox)
    offered = [speed.itemData(index) for index in range(speed.count())]
    run.check(
        "speed:offers_the_backends_loras",
        offered[0] == ""
        and {"sdxl_lightning_4step", "dmd2_sdxl_4step", "hyper_sdxl_8steps"} <= set(offered)
        and not any(name.startswith("hyper_sd15") for name in offered),
        offered,
    )
    speed.setCurrentIndex(speed.findData("sdxl_lightning_4step"))
    steps = docker_widget("steps", QSpinBox)
    sampler = docker_widget("sampler", QComboBox)
    run.check(
        "speed:brings_its_settings",
        steps.value() == 4
        and sampler.currentData() == "euler_sgm_uniform"
        and app.readSetting("layerdiffuse", "speed", "") == "sdxl_lightning_4step",
        (steps.value(), sampler.currentData()),
    )
    yield from open_settings(False)
    fast = yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "speed"
    )
    app.action("edit_undo").trigger()  # the scenario goes on with the painter's layers
    yield Wait("undo", lambda: uid(fast[0]) not in ids(document), 10.0)
    speed.setCurrentIndex(speed.findData(""))
    run.check(
        "speed:full_quality_again",
        steps.value() == 20 and sampler.currentData() == "dpmpp_2m_karras",
        (steps.value(), sampler.currentData()),
    )
    steps.setValue(4)  # the scenario's own count again (the demo runs on a CPU)

    # 2. A background for the user's layer in a selection (sdxl_fg2bg: the blend, then
    # the background, in one job): one layer directly below it, inside it.
    background_layer = yield from scene.background_in_selection(layer_name)
    background_id = uid(background_layer)
    # Two steps, one layer, one undo step.
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: background_id not in ids(document), 10.0)
    run.check(
        "background:one_undo_step",
        names(document) == ["Background", USER_LAYER, layer_name],
        names(document),
    )
    app.action("edit_redo").trigger()
    yield Wait("redo", lambda: background_id in ids(document), 10.0)
    yield from scene.deselect()

    # 3. A foreground into the scene (sdxl_bg2fg: the blend, then the foreground):
    # directly above the active layer.
    yield from scene.foreground_into_scene(background_layer.name(), layer_name)

    # 4. "Together" has no SDXL method: the docker says so and inserts nothing.
    method = docker_widget("method", QComboBox)
    method.setCurrentIndex(method.findData("together"))
    before = set(ids(document))
    yield activate(document, by_name(document, USER_LAYER))
    generate_button = docker_widget("generate", QPushButton)
    yield Wait("Generate to be disabled", lambda: not generate_button.isEnabled(), 10.0)
    generate_button.click()  # disabled: nothing happens
    yield Sleep(0.5)  # (a job started by mistake would have time to show)
    run.check(
        "together:explained",
        "needs an SD1.5 model" in generate_button.toolTip() and "SDXL" in generate_button.toolTip(),
        generate_button.toolTip(),
    )
    run.check("together:nothing_inserted", set(ids(document)) == before, names(document))
    run.check("together:no_job_running", generate_button.text() == "Generate", message())
    run.check("together:users_unchanged", users_unchanged(), "")
    method.setCurrentIndex(method.findData("transparent_layer"))


def scenario_flux(run):
    """Against a FLUX backend (protocol 1.2): the docker names it, a transparent layer is
    made with LayerDiffuse-Flux, the other actions are off saying why, and Settings shows
    only what FLUX reads."""
    scene, _dock = yield from open_scene(run)
    app, document = scene.app, scene.document
    status = docker_widget("connection_status", QLabel)
    run.check("docker_connected_to_flux", "FLUX" in status.toolTip(), status.toolTip())
    layer = yield from scene.transparent_layer()
    background = app.action("layerdiffuse_generate_background")
    yield activate(document, by_name(document, USER_LAYER))
    yield Wait("the background action to be off", lambda: not background.isEnabled(), 10.0)
    run.check(
        "refused:background_says_why",
        "needs an SD1.5 or SDXL model" in background.toolTip(),
        background.toolTip(),
    )
    before = set(ids(document))
    background.trigger()  # disabled: nothing happens
    yield Sleep(0.5)
    run.check("refused:nothing_inserted", set(ids(document)) == before, names(document))
    yield from open_settings(True)
    check_settings_shown(
        run,
        "flux_transparent_layer",
        shown=("steps", "cfg_scale", "seed"),
        hidden=("negative_prompt", "sampler", "speed", "stop_at", "hires", "weight"),
    )
    yield from open_settings(False)
    run.check("layer:kept", layer.name() in names(document), names(document))


def is_opaque_in(node, document, region):
    """Every pixel of `node` inside `region` is fully opaque."""
    x, y, width, height = region
    data = bytes(node.pixelData(x, y, width, height))
    return len(data) == width * height * 4 and all(alpha == 255 for alpha in data[3::4])


QUIT_ATTEMPTS_MS = (300, 5000, 10000, 15000)
QUIT_FALLBACK_MS = 20000


def _documents_clean(app):
    """Every open document done with its strokes, then marked unmodified, in that order:
    a stroke that ends after the mark (the scenario's last deselect, an insertion's last
    update) marks the document modified again, and a quit then asks to save it in a
    dialog nobody answers (seen on 5.2.9 after the Qwen scenario)."""
    for document in app.documents():
        try:
            document.waitForDone()
            document.setModified(False)
        except Exception:
            traceback.print_exc()


def _trigger_quit():
    app = Krita.instance()
    _documents_clean(app)
    action = app.action("file_quit")
    if action is not None:  # (None once the main window is gone)
        action.trigger()


def _quit_anyway():
    """Krita 5.3 under Xvfb sometimes ignores file_quit after the SDXL scenario (no plugin
    shutdown starts); leaving every event loop, a dialog's included, lets it exit
    normally (aboutToQuit, the plugin's stop) instead of hanging to the test's timeout.
    Said in Krita's output, with what may have held it, so that a run that needed it
    shows it."""
    qt_app = QCoreApplication.instance()
    modal = getattr(qt_app, "activeModalWidget", lambda: None)()
    held_by = "no modal dialog"
    if modal is not None:
        held_by = f"a modal {modal.metaObject().className()} {modal.windowTitle()!r}"
    try:
        modified = [doc.name() for doc in Krita.instance().documents() if doc.modified()]
    except Exception as error:  # (a closing document may raise)
        modified = [repr(error)]
    print(
        "layerdiffuse test driver: file_quit did not close Krita in 20 s; quitting "
        f"({held_by}; modified documents: {modified})",
        flush=True,
    )
    qt_app.quit()


# The responsiveness scenario --------------------------------------------------------------


class GapProbe:
    """A 10 ms timer on Krita's UI thread: the longest waits between its ticks are how
    long the UI could not answer (a brush stroke stutters past about 50 ms). Each wait
    over 50 ms is kept with its wall-clock start, to match against the plugin's log
    (which names its own slow steps)."""

    INTERVAL_MS = 10

    def __init__(self):
        self.timer = QTimer()
        self.timer.setInterval(self.INTERVAL_MS)
        self.timer.timeout.connect(self._tick)
        self.gaps, self.stalls, self.last = [], [], 0.0

    def start(self):
        self.gaps, self.stalls, self.last = [], [], time.monotonic()
        self.timer.start()

    def _tick(self):
        now = time.monotonic()
        gap = now - self.last
        self.gaps.append(gap * 1000)
        if gap > 0.05:
            self.stalls.append((round(time.time() - gap, 3), round(gap * 1000)))
        self.last = now

    def stop(self):
        self.timer.stop()
        self._tick()
        gaps = sorted(self.gaps)
        p99 = gaps[min(len(gaps) - 1, int(len(gaps) * 0.99))]
        return {
            "max_ms": round(gaps[-1], 1),
            "p99_ms": round(p99, 1),
            "ticks": len(gaps),
            "stalls": self.stalls,
        }


RESPONSIVE_SIZES = tuple(
    int(side) for side in os.environ.get("LAYERDIFFUSE_RESPONSIVE_SIZES", "4096").split(",")
)


def scenario_responsive(run):
    """The three actions on a large document while a probe measures the UI thread's
    longest stall per job (figures in the record's `gaps`; the test reports them)."""
    app = Krita.instance()
    yield Wait("the window", lambda: app.activeWindow() is not None, 30.0)
    window = app.activeWindow()
    yield Wait("the docker", lambda: docker_widget("connection_status", QLabel) is not None, 30.0)
    status = docker_widget("connection_status", QLabel)
    yield Wait("the docker to connect", lambda: "Connected" in status.toolTip(), 60.0)
    run.results["gaps"] = {}
    probe = GapProbe()
    for side in RESPONSIVE_SIZES:
        document = app.createDocument(side, side, f"responsive-{side}", "RGBA", "U8", "", 72.0)
        window.addView(document)
        yield Wait("the document", lambda document=document: app.activeDocument() is not None)
        user = document.createNode(USER_LAYER, "paintlayer")
        row = bytes((40, 60, 200, 255)) * (side // 2) + bytes(4 * (side - side // 2))
        user.setPixelData(row * side, 0, 0, side, side)
        document.rootNode().addChildNode(user, None)
        document.waitForDone()
        for action in (
            "layerdiffuse_generate_layer",
            "layerdiffuse_generate_background",
            "layerdiffuse_generate_foreground",
        ):
            yield activate(document, by_name(document, USER_LAYER))
            yield Wait(f"{action} to be enabled", app.action(action).isEnabled, 20.0)
            before = set(ids(document))
            probe.start()
            app.action(action).trigger()
            yield Wait(
                f"{action} at {side}²",
                lambda: message().startswith("Inserted") or is_error(),
                300.0,
            )
            figures = probe.stop()
            new = [node for node in walk(document.rootNode()) if uid(node) not in before]
            label = f"{side}:{action.removeprefix('layerdiffuse_generate_')}"
            run.results["gaps"][label] = figures
            run.check(f"responsive:{label}:inserted", len(new) == 1, message())
            yield Sleep(0.5)
        document.setModified(False)
        document.close()
        yield Sleep(1.0)


# Split into Layers (Qwen-Image-Layered) and the matting fallback --------------------------------


SPLIT_COUNT = 3


def alpha_values(node, document):
    return bytes(node.pixelData(0, 0, document.width(), document.height()))[3::4]


def check_split(run, label, document, group, count, region):
    """`group` is a new group layer of `count` paint layers, "Layer 1/N" at the bottom,
    each with something visible inside `region` and nothing outside it."""
    children = group.childNodes()
    run.check(f"{label}:is_a_group", group.type() == "grouplayer", group.type())
    run.check(
        f"{label}:count_and_order",
        [child.name().split(" · ")[0] for child in children]
        == [f"Layer {index}/{count}" for index in range(1, count + 1)],
        [child.name() for child in children],
    )
    run.check(
        f"{label}:paint_layers",
        [child.type() for child in children] == ["paintlayer"] * count,
        [child.type() for child in children],
    )
    for index, child in enumerate(children, start=1):
        box = alpha_box(child, document)
        inside = (
            box is not None
            and box.x >= region[0]
            and box.y >= region[1]
            and box.x + box.width <= region[0] + region[2]
            and box.y + box.height <= region[1] + region[3]
        )
        run.check(f"{label}:layer{index}_alpha_inside_the_region", inside, (box, region))
        spans = box is not None and box.width * 2 >= region[2] and box.height * 2 >= region[3]
        run.check(f"{label}:layer{index}_region_sized", spans, (box, region))
        alpha = alpha_values(child, document)
        run.check(
            f"{label}:layer{index}_transparent",
            any(value < 255 for value in alpha),
            f"alpha from {min(alpha)} to {max(alpha)}",
        )


def scenario_qwen(run):
    """Against a Qwen-Image-Layered backend: Generate follows it (Split, the layer count
    beside it), the other actions are off saying why; Split into Layers puts N layers in
    one new group directly above the source, which one undo removes whole; a layer of
    that group split again (in a selection) gets its own group directly above it."""
    scene, _dock = yield from open_scene(run)
    app, document = scene.app, scene.document
    status = docker_widget("connection_status", QLabel)
    run.check(
        "docker_connected_to_qwen", "Qwen-Image-Layered" in status.toolTip(), status.toolTip()
    )
    method = docker_widget("method", QComboBox)
    count = docker_widget("split_layers", QSpinBox)
    run.check(
        "follow:generate_splits",
        method.currentData() == "split_layers" and count.isVisible(),
        (method.currentData(), count.isVisible()),
    )
    count.setValue(SPLIT_COUNT)
    saved = app.readSetting("layerdiffuse", "split_layers", "")
    run.check("follow:count_saved", saved == str(SPLIT_COUNT), saved)
    yield from open_settings(True)
    check_settings_shown(
        run,
        "qwen_split",
        shown=("split_steps", "split_cfg", "seed"),
        hidden=("negative_prompt", "sampler", "steps", "cfg_scale", "weight", "speed"),
    )
    yield from open_settings(False)
    layer_action = app.action("layerdiffuse_generate_layer")
    yield activate(document, by_name(document, USER_LAYER))
    yield Wait("the layer action to be off", lambda: not layer_action.isEnabled(), 10.0)
    run.check(
        "refused:layer_action_says_why",
        "Split into layers" in layer_action.toolTip(),
        layer_action.toolTip(),
    )

    # 1. Split into Layers: one group directly above the source, N layers inside.
    before = set(ids(document))
    source_id = uid(by_name(document, USER_LAYER))
    new = yield from scene.generate(
        "layerdiffuse_split_layers", 1 + SPLIT_COUNT, by_name(document, USER_LAYER), "split"
    )
    groups = [node for node in new if node.type() == "grouplayer"]
    run.check("split:one_group", len(groups) == 1, [node.name() for node in new])
    if len(groups) != 1:
        return
    group = groups[0]
    group_id, group_name = uid(group), group.name()
    run.check(
        "split:group_directly_above_the_source",
        names(document) == ["Background", USER_LAYER, group_name],
        names(document),
    )
    run.check(
        "split:group_named_after_the_source",
        group_name == f"Split: {USER_LAYER} · seed 7",
        group_name,
    )
    check_split(run, "split", document, group, SPLIT_COUNT, CANVAS)
    run.check(
        "split:source_untouched",
        scene.users_unchanged() and uid(by_name(document, USER_LAYER)) == source_id,
        "",
    )

    # 2. One undo removes the group and its layers; the source is as it was. Redo.
    app.action("edit_undo").trigger()
    yield Wait("undo", lambda: group_id not in ids(document), 10.0)
    yield Sleep(0.5)  # (a second undo step would have no time to hide)
    run.check(
        "undo:removes_the_whole_split",
        set(ids(document)) == before and names(document) == ["Background", USER_LAYER],
        names(document),
    )
    run.check("undo:source_byte_identical", scene.users_unchanged(), "")
    app.action("edit_redo").trigger()
    yield Wait("redo", lambda: group_id in ids(document), 10.0)
    group = by_name(document, group_name)
    run.check(
        "undo:redo_restores_the_group_and_its_layers",
        len(group.childNodes()) == SPLIT_COUNT and names(document)[-1] == group_name,
        [child.name() for child in group.childNodes()],
    )

    # 3. A layer of the result split again, in a selection: its own group directly above
    # it, inside the first group, its layers within the selection.
    middle = group.childNodes()[1]
    middle_name = middle.name()
    selection = Selection()
    selection.select(*SELECTION, 255)
    document.setSelection(selection)
    outer_before = [child.name() for child in group.childNodes()]
    nested = yield from scene.generate(
        "layerdiffuse_split_layers", 1 + SPLIT_COUNT, middle, "nested"
    )
    inner = [node for node in nested if node.type() == "grouplayer"]
    group = by_name(document, group_name)
    order = [child.name() for child in group.childNodes()]
    run.check(
        "nested:group_directly_above_the_layer_inside_the_first",
        len(inner) == 1
        and order == [*outer_before[:2], inner[0].name(), *outer_before[2:]]
        and inner[0].name().startswith(f"Split: {middle_name[:20]}"),
        order,
    )
    run.check(
        "nested:top_level_unchanged",
        names(document) == ["Background", USER_LAYER, group_name],
        names(document),
    )
    if len(inner) == 1:
        check_split(run, "nested", document, inner[0], SPLIT_COUNT, SELECTION)
    run.check("nested:source_untouched", scene.users_unchanged(), "")
    yield from scene.deselect()


def scenario_illustrious(run):
    """Against an SDXL checkpoint the backend says LayerDiffuse fails on: the docker
    shows the warning (a sign by the connection, the sentence and the matting switch
    below), and a transparent layer is generated on gray and matted, named so, the
    warning floating on the canvas at that first layer."""
    scene, _dock = yield from open_scene(run)
    document = scene.document
    status = docker_widget("connection_status", QLabel)
    warning = docker_widget("model_warning", QLabel)
    matting = docker_widget("matting_fallback", QCheckBox)
    run.check(
        "warning:shown_in_the_docker",
        warning.isVisible() and "Illustrious" in warning.text(),
        (warning.isVisible(), warning.text()),
    )
    run.check(
        "warning:sign_by_the_connection",
        "⚠" in status.text() and "Illustrious" in status.toolTip(),
        (status.text(), status.toolTip()),
    )
    run.check(
        "warning:matting_offered_and_on",
        matting.isVisible() and matting.isChecked(),
        (matting.isVisible(), matting.isChecked()),
    )
    method = docker_widget("method", QComboBox)
    run.check(
        "warning:generate_says_matted", "(matted)" in method.currentText(), method.currentText()
    )
    told_before = len(floating_messages(scene.window))
    [layer] = yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "matted"
    )
    run.check(
        "matted:named_matted",
        layer.name().startswith("foreground (matted) · seed 7 · ") and PROMPT[:20] in layer.name(),
        layer.name(),
    )
    run.check(
        "matted:above_the_active_layer",
        names(document) == ["Background", USER_LAYER, layer.name()],
        names(document),
    )
    run.check("matted:alpha_not_empty", alpha_box(layer, document) is not None, "")
    run.check("matted:users_unchanged", scene.users_unchanged(), "")
    # Once: when the backend connected if the document was open by then (and it may
    # still float), else at this first matted layer.
    floats = len(floating_messages(scene.window))
    run.check(
        "warning:floated_on_the_canvas",
        floats > told_before or told_before > 0,
        (told_before, floats),
    )
    # The switch turns the fallback off: the next layer is LayerDiffuse's, named as usual.
    matting.setChecked(False)
    run.check(
        "unmatted:generate_says_so", "(matted)" not in method.currentText(), method.currentText()
    )
    [plain] = yield from scene.generate(
        "layerdiffuse_generate_layer", 1, by_name(document, USER_LAYER), "unmatted"
    )
    run.check(
        "unmatted:named_as_usual",
        plain.name().startswith("foreground · seed 7 · "),
        plain.name(),
    )
    matting.setChecked(True)


SCENARIOS = {
    "sd15": scenario_sd15,
    "sdxl": scenario_sdxl,
    "flux": scenario_flux,
    "responsive": scenario_responsive,
    "qwen": scenario_qwen,
    "illustrious": scenario_illustrious,
}


def scenario(run):
    """The scenario `LAYERDIFFUSE_TEST_SCENARIO` names (sd15 by default)."""
    return SCENARIOS[os.environ.get("LAYERDIFFUSE_TEST_SCENARIO", "sd15")](run)


class DriverExtension(Extension):
    def __init__(self, parent):
        super().__init__(parent)
        self.runner = Runner(scenario)

    def setup(self):
        notifier = Krita.instance().notifier()
        notifier.setActive(True)
        notifier.windowCreated.connect(lambda: QTimer.singleShot(1500, self.runner.start))

    def createActions(self, window):
        pass


Krita.instance().addExtension(DriverExtension(Krita.instance()))
