"""The Krita extension: the plugin's actions, its docker, and its start and stop.

`register()` runs when Krita imports the plugin: it registers the extension and the
docker factory and does nothing else. Krita then calls `setup()` once (the event loop,
the settings, the client, the log start there) and `createActions()` once per window.
On `applicationClosing` everything stops: the client's task is cancelled and its
websocket closed.
"""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path
from typing import Any

from .canvas.app import (
    Extension,
    KritaSettingsStore,
    krita,
    krita_version,
    register_docker,
    register_extension,
)
from .canvas.document import KritaCanvas
from .client import BackendClient
from .eventloop import EventLoop
from .qt import QAction, QStandardPaths, QTimer
from .recipes import KRITA_ACTIONS, Action
from .settings import SETTINGS_GROUP, load_settings
from .state import DockerState
from .ui.docker import DOCKER_ID, docker_class

__all__ = ["MINIMUM_KRITA", "LayerDiffuseExtension", "LayerDiffusePlugin", "register"]

log = logging.getLogger(__name__)

PACKAGE = __name__.rpartition(".")[0]
MINIMUM_KRITA = (5, 1)
MENU = "tools/scripts"
REFRESH_MS = 500


class LayerDiffusePlugin:
    """The running plugin: its event loop, backend client and docker state.

    Attributes:
        state: the docker state once `start()` ran, else None.
    """

    def __init__(self) -> None:
        self.loop: EventLoop | None = None
        self.client: BackendClient | None = None
        self.state: DockerState | None = None
        self._actions: list[tuple[QAction, Action | None, str]] = []
        self._refresh_timer: QTimer | None = None

    def start(self) -> None:
        """Start logging, the event loop and the client (Krita's `setup()`)."""
        _start_log()
        log.info("starting in Krita %s", krita().version())
        store = KritaSettingsStore(SETTINGS_GROUP)
        settings = load_settings(store)
        self.loop = EventLoop()
        self.loop.start()
        self.client = BackendClient(settings.server_url, settings.token)
        self.state = DockerState(
            store, KritaCanvas(), self.client, self.loop.run, self.loop.set_busy
        )
        self.loop.run(self.client.run())
        self.state.changed.connect(self._on_changed)
        self._show_actions()  # Krita may have created the windows' actions before this
        # Krita says nothing when the active document or its colour model changes: look
        # again twice a second (a few attribute reads, no pixels). The actions are set
        # again each time, as Krita's own action manager enables them again whenever
        # the active layer changes.
        self._refresh_timer = QTimer()
        self._refresh_timer.setInterval(REFRESH_MS)
        self._refresh_timer.timeout.connect(self._refresh)
        self._refresh_timer.start()

    def add_action(self, qaction: QAction, action: Action | None) -> None:
        """A window's Krita action, enabled only when it can run (the reason is its
        tooltip when not)."""
        self._actions.append((qaction, action, qaction.toolTip()))
        self._show_actions()

    def _refresh(self) -> None:
        if self.state is not None:
            self.state.refresh()
            self._show_actions()

    def _on_changed(self, name: str) -> None:
        if name in ("refusals", "running"):
            self._show_actions()

    def _show_actions(self) -> None:
        state = self.state
        if state is None:
            return
        for qaction, action, tooltip in self._actions:
            if action is None:  # cancel
                qaction.setEnabled(state.running)
                continue
            refusal = state.refusals.get(action)
            qaction.setEnabled(refusal is None)
            qaction.setToolTip(tooltip if refusal is None else refusal)

    def stop(self) -> None:
        """Stop the client and the event loop (Krita is closing)."""
        if self._refresh_timer is not None:
            self._refresh_timer.stop()
            self._refresh_timer = None
        if self.loop is not None:
            log.info("stopping")
            self.loop.stop()
            self.loop = None

    def trigger(self, action: Action | None) -> None:
        if self.state is None:
            return
        if action is None:
            self.state.cancel()
        else:
            self.state.generate(action)


class LayerDiffuseExtension(Extension):
    """Krita's view of the plugin: `setup()` once, `createActions()` per window."""

    def __init__(self, parent: Any, plugin: LayerDiffusePlugin) -> None:
        super().__init__(parent)
        self.plugin = plugin

    def setup(self) -> None:
        try:
            self.plugin.start()
        except Exception:
            log.exception("LayerDiffuse did not start")
            return
        notifier = krita().notifier()
        notifier.setActive(True)
        notifier.applicationClosing.connect(self.plugin.stop)

    def createActions(self, window: Any) -> None:
        for action_id, text, action in KRITA_ACTIONS:
            qaction: QAction = window.createAction(action_id, text, MENU)
            qaction.triggered.connect(lambda _=False, action=action: self.plugin.trigger(action))
            self.plugin.add_action(qaction, action)


def register() -> None:
    """Register the extension and the docker with Krita (nothing else happens here)."""
    version = krita_version()
    if version < MINIMUM_KRITA:
        log.error("LayerDiffuse needs Krita 5.1 or newer, this is %s", krita().version())
        return
    plugin = LayerDiffusePlugin()
    register_extension(LayerDiffuseExtension, plugin)
    register_docker(DOCKER_ID, docker_class(lambda: plugin.state))


def _start_log() -> None:
    """A rotating log in Krita's user folder: <data>/krita/layerdiffuse/layerdiffuse.log."""
    data = QStandardPaths.writableLocation(QStandardPaths.StandardLocation.AppDataLocation)
    folder = Path(data) / "layerdiffuse"
    folder.mkdir(parents=True, exist_ok=True)
    handler = logging.handlers.RotatingFileHandler(
        folder / "layerdiffuse.log", maxBytes=1 << 20, backupCount=2, encoding="utf-8"
    )
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(PACKAGE)
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
