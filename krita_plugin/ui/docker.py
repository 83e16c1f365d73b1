"""The LayerDiffuse docker: a form bound to `DockerState`.

Every widget writes its setting through `DockerState.update_settings` (saved at once in
Krita's settings) and shows what `DockerState.changed` reports; the buttons call
`generate` / `cancel`. The docker itself (`docker_class`) only wraps the panel in
Krita's `DockWidget`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..canvas.app import DockWidget
from ..client import ConnectionState
from ..qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QFrame,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSpinBox,
    Qt,
    QVBoxLayout,
    QWidget,
)
from ..recipes import Action
from ..settings import FAMILY_AUTO, describe, value_range
from ..state import DockerState
from ..vendor import protocol
from .widgets import ProgressView, SeedBox

__all__ = ["DOCKER_ID", "DockerPanel", "docker_class"]

DOCKER_ID = "layerdiffuse_docker"
TITLE = "LayerDiffuse"

_FAMILY_CHOICES = (
    (FAMILY_AUTO, "Automatic (the backend's model)"),
    (protocol.ModelFamily.SD15.value, "SD1.5"),
    (protocol.ModelFamily.SDXL.value, "SDXL"),
)
_STATUS_COLOURS = {
    ConnectionState.CONNECTED: "#3a9a3a",
    ConnectionState.CONNECTING: "#c89a1a",
    ConnectionState.DISCONNECTED: "#c0392b",
}
_QUICK_ACTIONS = (
    (Action.TRANSPARENT_LAYER, "Layer", "action_transparent_layer"),
    (Action.BACKGROUND, "Background", "action_background"),
    (Action.FOREGROUND, "Foreground", "action_foreground"),
)


def docker_class(get_state: Callable[[], DockerState | None]) -> type[DockWidget]:
    """The docker class Krita instantiates (once per window), bound to the plugin's state."""

    class LayerDiffuseDocker(DockWidget):
        def __init__(self) -> None:
            super().__init__()
            self.setWindowTitle(TITLE)
            state = get_state()
            panel: QWidget
            if state is None:
                panel = QLabel("LayerDiffuse did not start; see Krita's log.")
            else:
                panel = DockerPanel(state)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setFrameShape(QFrame.Shape.NoFrame)
            scroll.setWidget(panel)
            self.setWidget(scroll)

        def canvasChanged(self, canvas: Any) -> None:
            """Nothing to do: actions read the active document when triggered."""

    return LayerDiffuseDocker


class DockerPanel(QWidget):
    """The docker's content: settings, status, buttons, progress and the last message."""

    def __init__(self, state: DockerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._build()
        self._show_settings()
        for name in ("connection", "running", "progress", "preview", "message"):
            self._on_changed(name)
        state.changed.connect(self._on_changed)

    # Building ------------------------------------------------------------------------------

    def _build(self) -> None:
        form = QFormLayout()
        form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)

        self.server_url = self._line("server_url", form)
        self.token = self._line("token", form)
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.connection_status = QLabel(self)
        self.connection_status.setObjectName("connection_status")
        self.connection_status.setWordWrap(True)
        form.addRow(self.connection_status)

        self.prompt = self._text("prompt", form, lines=3)
        self.negative_prompt = self._text("negative_prompt", form, lines=2)
        self.family = self._combo("family", form, _FAMILY_CHOICES)
        self.method = self._combo("method", form, [(a.value, a.label) for a in Action])
        self.steps = self._spin("steps", form)
        self.cfg_scale = self._double("cfg_scale", form, step=0.5, decimals=1)
        self.seed = SeedBox(self)
        self.seed.seedChanged.connect(lambda value: self.state.update_settings(seed=value))
        self.seed.randomChanged.connect(lambda value: self.state.update_settings(random_seed=value))
        self._add_row(form, "seed", self.seed)
        self.sampler = self._combo(
            "sampler", form, [(sampler.value, sampler.label) for sampler in protocol.Sampler]
        )
        self.weight = self._double("weight", form, step=0.05, decimals=2)
        self.stop_at = self._double("stop_at", form, step=0.05, decimals=2)

        layer_prompts = QGroupBox("Layer prompts", self)
        layer_prompts.setObjectName("layer_prompts")
        layer_prompts.setToolTip("Extra words for one layer of the foreground/background methods")
        inner = QFormLayout(layer_prompts)
        self.foreground_prompt = self._line("foreground_prompt", inner, typing=True)
        self.background_prompt = self._line("background_prompt", inner, typing=True)
        self.blended_prompt = self._line("blended_prompt", inner, typing=True)

        self.insert_blended = self._check("insert_blended")
        self.fit_to_native = self._check("fit_to_native")

        self.generate = QPushButton("Generate", self)
        self.generate.setObjectName("generate")
        self.generate.setToolTip("Run the chosen method on the active layer or the selection")
        self.generate.clicked.connect(self._generate_chosen)
        self.cancel = QPushButton("Cancel", self)
        self.cancel.setObjectName("cancel")
        self.cancel.clicked.connect(self.state.cancel)
        buttons = QHBoxLayout()
        buttons.addWidget(self.generate, 2)
        buttons.addWidget(self.cancel, 1)

        quick = QHBoxLayout()
        self.quick_buttons: list[QPushButton] = []
        for action, text, name in _QUICK_ACTIONS:
            button = QPushButton(text, self)
            button.setObjectName(name)
            button.setToolTip(action.label)
            button.clicked.connect(lambda _=False, action=action: self.state.generate(action))
            quick.addWidget(button)
            self.quick_buttons.append(button)

        self.progress = ProgressView(self)
        self.message = QLabel(self)
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        layout = QVBoxLayout(self)
        layout.addLayout(form)
        layout.addWidget(layer_prompts)
        layout.addWidget(self.insert_blended)
        layout.addWidget(self.fit_to_native)
        layout.addLayout(buttons)
        layout.addLayout(quick)
        layout.addWidget(self.progress)
        layout.addWidget(self.message)
        layout.addStretch(1)

    def _add_row(self, form: QFormLayout, name: str, widget: QWidget) -> None:
        label, help = describe(name)
        widget.setToolTip(help)
        form.addRow(label, widget)

    def _line(self, name: str, form: QFormLayout, typing: bool = False) -> QLineEdit:
        """A one-line text setting; saved as typed, or (address, token) when done editing."""
        edit = QLineEdit(self)
        edit.setObjectName(name)
        if typing:
            edit.textChanged.connect(lambda text: self.state.update_settings(**{name: text}))
        else:
            edit.editingFinished.connect(
                lambda: self.state.update_settings(**{name: edit.text().strip()})
            )
        self._add_row(form, name, edit)
        return edit

    def _text(self, name: str, form: QFormLayout, lines: int) -> QPlainTextEdit:
        edit = QPlainTextEdit(self)
        edit.setObjectName(name)
        edit.setTabChangesFocus(True)
        height = edit.fontMetrics().lineSpacing() * lines + 12
        edit.setFixedHeight(height)
        edit.textChanged.connect(lambda: self.state.update_settings(**{name: edit.toPlainText()}))
        self._add_row(form, name, edit)
        return edit

    def _combo(self, name: str, form: QFormLayout, choices: Any) -> QComboBox:
        combo = QComboBox(self)
        combo.setObjectName(name)
        for value, text in choices:
            combo.addItem(text, value)
        combo.currentIndexChanged.connect(
            lambda _: self.state.update_settings(**{name: combo.currentData()})
        )
        self._add_row(form, name, combo)
        return combo

    def _spin(self, name: str, form: QFormLayout) -> QSpinBox:
        spin = QSpinBox(self)
        spin.setObjectName(name)
        low, high = value_range(name)
        spin.setRange(int(low), int(high))
        spin.valueChanged.connect(lambda value: self.state.update_settings(**{name: value}))
        self._add_row(form, name, spin)
        return spin

    def _double(self, name: str, form: QFormLayout, step: float, decimals: int) -> QDoubleSpinBox:
        spin = QDoubleSpinBox(self)
        spin.setObjectName(name)
        low, high = value_range(name)
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setDecimals(decimals)
        spin.valueChanged.connect(lambda value: self.state.update_settings(**{name: value}))
        self._add_row(form, name, spin)
        return spin

    def _check(self, name: str) -> QCheckBox:
        label, help = describe(name)
        box = QCheckBox(label, self)
        box.setObjectName(name)
        box.setToolTip(help)
        box.toggled.connect(lambda value: self.state.update_settings(**{name: value}))
        return box

    # Showing -------------------------------------------------------------------------------

    def _show_settings(self) -> None:
        settings = self.state.settings
        widgets: list[QWidget] = [
            self.server_url, self.token, self.prompt, self.negative_prompt, self.family,
            self.method, self.steps, self.cfg_scale, self.sampler, self.weight, self.stop_at,
            self.foreground_prompt, self.background_prompt, self.blended_prompt,
            self.insert_blended, self.fit_to_native,
        ]  # fmt: skip
        for widget in widgets:
            widget.blockSignals(True)
            value = getattr(settings, widget.objectName())
            if isinstance(widget, QLineEdit):
                if widget.text() != value:  # setText would move the cursor while typing
                    widget.setText(value)
            elif isinstance(widget, QPlainTextEdit):
                if widget.toPlainText() != value:
                    widget.setPlainText(value)
            elif isinstance(widget, QComboBox):
                index = widget.findData(value)
                widget.setCurrentIndex(max(index, 0))
            elif isinstance(widget, QCheckBox):
                widget.setChecked(value)
            else:
                widget.setValue(value)
            widget.blockSignals(False)
        self.seed.set_values(settings.seed, settings.random_seed)

    def _on_changed(self, name: str) -> None:
        state = self.state
        if name == "settings":
            self._show_settings()
        elif name == "connection":
            colour = _STATUS_COLOURS[state.connection]
            self.connection_status.setText(
                f'<span style="color:{colour}">●</span> {_escape(state.connection_text)}'
            )
            self._enable_buttons()
        elif name == "running":
            self._enable_buttons()
        elif name == "progress":
            self.progress.set_progress(state.progress)
        elif name == "preview":
            self.progress.set_preview(state.preview)
        elif name == "message":
            message = state.message
            colour = "#c0392b" if message.is_error else "palette(text)"
            self.message.setStyleSheet(f"color: {colour}")
            self.message.setText(message.text)

    def _enable_buttons(self) -> None:
        ready = self.state.connection is ConnectionState.CONNECTED and not self.state.running
        self.generate.setEnabled(ready)
        for button in self.quick_buttons:
            button.setEnabled(ready)
        self.cancel.setEnabled(self.state.running)

    def _generate_chosen(self) -> None:
        self.state.generate(Action(self.state.settings.method))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
