"""The LayerDiffuse docker: a form bound to `DockerState`.

What a painter needs every time sits at the top and never scrolls: the prompt, what to
make with the one Generate button (it turns into Cancel while a job runs; a split's
layer count sits beside it), the connection (a dot and a word, and a warning sign when
the backend says LayerDiffuse fails on its model; the sentence is its tooltip) and the
progress with its steps and time left. That is three rows: at Krita's default window
size the docker shares the right column with three others and gets about 90 px, and
anything taller would make Krita's window grow. Below it, in a scroll area that never
scrolls sideways: the backend's warning about its model with the switch to the matting
fallback (only while there is one), the last message, the last result (its preview and
seed, reusable in one click), the tray of the last results (a click inserts one), then
the generation settings and the connection settings, each in a section that opens on a
click. Only the settings that change what the chosen method makes on the current model
family are shown.

Every widget writes its setting through `DockerState.update_settings` (saved at once in
Krita's settings) and shows what `DockerState.changed` reports. The docker itself
(`docker_class`) only wraps the panel in Krita's `DockWidget`.
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
    QFrame,
    QGridLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSpinBox,
    Qt,
    QVBoxLayout,
    QWidget,
)
from ..recipes import SDXL_TRANSPARENT_MODELS, Action
from ..settings import FAMILY_AUTO, choices, describe, shown_range, shown_times, tooltip, unit
from ..state import DockerState
from ..vendor import protocol
from .widgets import (
    ElidedLabel,
    PreviewLabel,
    ProgressBar,
    ResultTray,
    Section,
    SeedBox,
    narrow_combo,
)

__all__ = ["DOCKER_ID", "DockerPanel", "docker_class"]

DOCKER_ID = "layerdiffuse_docker"
TITLE = "LayerDiffuse"

_FAMILY_CHOICES = (
    (FAMILY_AUTO, "Automatic"),
    (protocol.ModelFamily.SD15.value, "SD1.5"),
    (protocol.ModelFamily.SDXL.value, "SDXL"),
    (protocol.ModelFamily.FLUX.value, "FLUX"),
    (protocol.ModelFamily.QWEN_LAYERED.value, "Qwen-Image-Layered"),
)
_MAKE_CHOICES = (
    (Action.TRANSPARENT_LAYER.value, "Transparent layer"),
    (Action.BACKGROUND.value, "Background for layer"),
    (Action.FOREGROUND.value, "Foreground into scene"),
    (Action.TOGETHER.value, "Foreground + background"),
    (Action.SPLIT_LAYERS.value, "Split into layers"),
)
_SDXL_TRANSPARENT_CHOICES = tuple(
    (method.value, "Attention" if method.value.endswith("attn") else "Conv")
    for method in SDXL_TRANSPARENT_MODELS
)
_SECOND_SAMPLERS = (
    ("", "Default (UniPC)"),
    *((sampler.value, sampler.label) for sampler in protocol.Sampler),
)
_SECOND_STOP_AT = tuple(
    (value, f"{float(value) * 100:.0f} %" if value else "Default")
    for value in choices("second_stop_at")
)
_HIRES_LABELS = {
    protocol.Hires.AUTO: "Automatic",
    protocol.Hires.ON: "On",
    protocol.Hires.OFF: "Off",
}
_STATUS_COLOURS = {
    ConnectionState.CONNECTED: "#3a9a3a",
    ConnectionState.CONNECTING: "#c89a1a",
    ConnectionState.DISCONNECTED: "#c0392b",
}
# The generation settings, in the order the Settings section shows them.
_GENERATION_SETTINGS = (
    "negative_prompt", "family", "speed", "steps", "cfg_scale", "seed", "sampler",
    "sdxl_transparent_model", "weight", "stop_at", "foreground_prompt", "background_prompt",
    "blended_prompt", "second_prompt", "second_negative_prompt", "second_sampler",
    "second_stop_at", "hires", "hires_strength", "split_steps", "split_cfg", "insert_blended",
    "fit_to_native",
)  # fmt: skip
_ALWAYS_SHOWN = {"family"}
_WARNING_COLOUR = "#c87a1a"


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
            self.setWidget(panel)

        def canvasChanged(self, canvas: Any) -> None:
            """Nothing to do: actions read the active document when triggered."""

    return LayerDiffuseDocker


class DockerPanel(QWidget):
    """The docker's content: the fixed top, and the scrolled result and settings."""

    def __init__(self, state: DockerState, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.state = state
        self._rows: dict[str, tuple[QWidget | None, QWidget]] = {}
        self._value_widgets: dict[str, QWidget] = {}
        self._build()
        self._show_settings()
        for name in (
            "connection", "running", "progress", "preview", "last_seed", "message", "tray",
        ):  # fmt: skip
            self._on_changed(name)
        state.changed.connect(self._on_changed)

    # Building ------------------------------------------------------------------------------

    def _build(self) -> None:
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(2)
        layout.addWidget(self._build_top())
        scroll = QScrollArea(self)
        scroll.setObjectName("settings_scroll")
        scroll.setWidgetResizable(True)
        scroll.setFrameShape(QFrame.Shape.NoFrame)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setWidget(self._build_below())
        # The top alone sets the docker's smallest height (0 would mean "use the hint").
        scroll.setMinimumHeight(1)
        layout.addWidget(scroll, 1)

    def _build_top(self) -> QWidget:
        """Prompt, what to make, Generate / Cancel, progress, connection, message."""
        top = QWidget(self)
        top.setObjectName("top")
        layout = QVBoxLayout(top)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)

        self.prompt = QPlainTextEdit(top)
        self.prompt.setObjectName("prompt")
        self.prompt.setPlaceholderText("Prompt: what to generate")
        self.prompt.setToolTip(tooltip("prompt"))
        self.prompt.setTabChangesFocus(True)
        self.prompt.setFixedHeight(self.prompt.fontMetrics().lineSpacing() * 2 + 10)
        self.prompt.textChanged.connect(
            lambda: self.state.update_settings(prompt=self.prompt.toPlainText())
        )
        self._value_widgets["prompt"] = self.prompt
        layout.addWidget(self.prompt)

        row = QHBoxLayout()
        self.method = self._combo("method", _MAKE_CHOICES, top)
        self.method.setToolTip(
            "What Generate makes. The same are actions in Tools ▸ Scripts, where each can "
            "have a shortcut"
        )
        row.addWidget(self.method, 1)
        # How many layers a split makes: beside what to make, the one choice a split has.
        self.split_layers = self._spin("split_layers", top)
        self.split_layers.setSuffix(f" {unit('split_layers')}")
        self.split_layers.setToolTip(tooltip("split_layers"))
        row.addWidget(self.split_layers)
        self.generate = QPushButton("Generate", top)
        self.generate.setObjectName("generate")
        self.generate.clicked.connect(self._generate_or_cancel)
        row.addWidget(self.generate)
        layout.addLayout(row)

        row = QHBoxLayout()
        self.connection_status = QLabel(top)
        self.connection_status.setObjectName("connection_status")
        row.addWidget(self.connection_status)
        # While a job runs: its progress; between jobs: the last message, on one line
        # (the whole sentence is its tooltip and, wrapped, the first thing below).
        self.progress = ProgressBar(top)
        row.addWidget(self.progress, 1)
        self.message_line = ElidedLabel(top)
        self.message_line.setObjectName("message_line")
        row.addWidget(self.message_line, 1)
        layout.addLayout(row)
        return top

    def _build_below(self) -> QWidget:
        """The last result, then the Settings and Connection sections."""
        below = QWidget(self)
        below.setObjectName("below")
        below.setMinimumWidth(0)
        layout = QVBoxLayout(below)
        layout.setContentsMargins(0, 0, 0, 0)

        # Why LayerDiffuse will fail on the backend's model, and the switch to the
        # matting fallback: first below the top, while the backend says so.
        self.model_warning = self._label("model_warning", below)
        self.model_warning.setStyleSheet(f"color: {_WARNING_COLOUR}")
        self.model_warning.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.model_warning)
        self.matting_fallback = self._check("matting_fallback", below)
        layout.addWidget(self.matting_fallback)
        self.message = self._label("message", below)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        layout.addWidget(self.message)
        self.preview = PreviewLabel(below)
        layout.addWidget(self.preview)
        result = QHBoxLayout()
        self.last_seed = self._label("last_seed", below)
        self.reuse_seed = QPushButton("Reuse seed", below)
        self.reuse_seed.setObjectName("reuse_seed")
        self.reuse_seed.setToolTip("Generate with this seed again (turns Random off)")
        self.reuse_seed.clicked.connect(self.state.reuse_seed)
        result.addWidget(self.last_seed, 1)
        result.addWidget(self.reuse_seed)
        layout.addLayout(result)
        self.tray = ResultTray(below)
        self.tray.picked.connect(self.state.insert_from_tray)
        layout.addWidget(self.tray)

        settings = Section("Settings", "settings_open", below)
        settings.toggled.connect(lambda open_: self.state.update_settings(settings_open=open_))
        form = _Form(settings.content)
        self._add_text("negative_prompt", form, lines=2)
        self._add_row("family", self._combo("family", _FAMILY_CHOICES), form)
        # Speed's choices are the backend's LoRAs: filled when it says welcome.
        self.speed = narrow_combo(settings.content)
        self.speed.setObjectName("speed")
        self.speed.currentIndexChanged.connect(
            lambda _: self.state.choose_speed(self.speed.currentData() or "")
        )
        self._add_row("speed", self.speed, form)
        self._add_row("steps", self._spin("steps"), form)
        self._add_row("cfg_scale", self._double("cfg_scale", step=0.5, decimals=1), form)
        self.seed = SeedBox(settings.content)
        self.seed.setToolTip(tooltip("seed"))
        self.seed.seedChanged.connect(lambda value: self.state.update_settings(seed=value))
        self.seed.randomChanged.connect(lambda value: self.state.update_settings(random_seed=value))
        self._add_row("seed", self.seed, form)
        samplers = [(sampler.value, sampler.label) for sampler in protocol.Sampler]
        self._add_row("sampler", self._combo("sampler", samplers), form)
        self._add_row(
            "sdxl_transparent_model",
            self._combo("sdxl_transparent_model", _SDXL_TRANSPARENT_CHOICES),
            form,
        )
        self._add_row("weight", self._double("weight", step=0.05, decimals=2), form)
        self._add_row("stop_at", self._double("stop_at", step=5, decimals=0), form)
        for name in ("foreground_prompt", "background_prompt", "blended_prompt"):
            self._add_row(name, self._line(name, typing=True), form)
        self._add_row("second_prompt", self._line("second_prompt", typing=True), form)
        self._add_row(
            "second_negative_prompt", self._line("second_negative_prompt", typing=True), form
        )
        self._add_row("second_sampler", self._combo("second_sampler", _SECOND_SAMPLERS), form)
        self._add_row("second_stop_at", self._combo("second_stop_at", _SECOND_STOP_AT), form)
        hires = [(mode.value, _HIRES_LABELS[mode]) for mode in protocol.Hires]
        self._add_row("hires", self._combo("hires", hires), form)
        self._add_row("hires_strength", self._double("hires_strength", step=5, decimals=0), form)
        self._add_row("split_steps", self._spin("split_steps"), form)
        self._add_row("split_cfg", self._double("split_cfg", step=0.5, decimals=1), form)
        self.insert_blended = self._check("insert_blended", settings.content)
        self.fit_to_native = self._check("fit_to_native", settings.content)
        form.add_wide(self.insert_blended)
        form.add_wide(self.fit_to_native)
        self.insert_results = self._check("insert_results", settings.content)
        form.add_wide(self.insert_results)
        self.settings_section = settings
        layout.addWidget(settings)

        connection = Section("Connection", "connection_open", below)
        connection.toggled.connect(lambda open_: self.state.update_settings(connection_open=open_))
        form = _Form(connection.content)
        self._add_row("server_url", self._line("server_url"), form)
        self.token = self._line("token")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self._add_row("token", self.token, form)
        self.connection_section = connection
        layout.addWidget(connection)
        layout.addStretch(1)
        return below

    def _label(self, name: str, parent: QWidget) -> QLabel:
        label = QLabel(parent)
        label.setObjectName(name)
        label.setWordWrap(True)
        # Wrapped text may shrink to the column's width instead of widening the docker.
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        return label

    def _add_row(self, name: str, widget: QWidget, form: _Form) -> None:
        """A setting's label beside its field. The prompts drop the word "prompt"
        ("Negative", "Foreground"): a longer label column would make the docker wider
        than Krita's dock column; the tooltips say the whole."""
        label_text, _ = describe(name)
        label = QLabel(label_text.removesuffix(" prompt"), widget.parentWidget())
        label.setToolTip(tooltip(name))
        widget.setToolTip(tooltip(name))
        form.add_row(label, widget)
        self._rows[name] = (label, widget)

    def _add_text(self, name: str, form: _Form, lines: int) -> None:
        edit = QPlainTextEdit(self)
        edit.setObjectName(name)
        edit.setTabChangesFocus(True)
        edit.setFixedHeight(edit.fontMetrics().lineSpacing() * lines + 12)
        edit.textChanged.connect(lambda: self.state.update_settings(**{name: edit.toPlainText()}))
        self._value_widgets[name] = edit
        self._add_row(name, edit, form)

    def _line(self, name: str, typing: bool = False) -> QLineEdit:
        """A one-line text setting; saved as typed, or (address, token) when done editing."""
        edit = QLineEdit(self)
        edit.setObjectName(name)
        if typing:
            edit.textChanged.connect(lambda text: self.state.update_settings(**{name: text}))
        else:
            edit.editingFinished.connect(
                lambda: self.state.update_settings(**{name: edit.text().strip()})
            )
        self._value_widgets[name] = edit
        return edit

    def _combo(self, name: str, choices: Any, parent: QWidget | None = None) -> QComboBox:
        combo = narrow_combo(parent or self)
        combo.setObjectName(name)
        for value, text in choices:
            combo.addItem(text, value)
        combo.currentIndexChanged.connect(
            lambda _: self.state.update_settings(**{name: combo.currentData()})
        )
        self._value_widgets[name] = combo
        return combo

    def _spin(self, name: str, parent: QWidget | None = None) -> QSpinBox:
        spin = QSpinBox(parent or self)
        spin.setObjectName(name)
        low, high = shown_range(name)
        spin.setRange(int(low), int(high))
        spin.valueChanged.connect(lambda value: self.state.update_settings(**{name: value}))
        self._value_widgets[name] = spin
        return spin

    def _double(self, name: str, step: float, decimals: int) -> QDoubleSpinBox:
        """A number shown times its factor (Stop At as %), in its unit."""
        spin = QDoubleSpinBox(self)
        spin.setObjectName(name)
        low, high = shown_range(name)
        spin.setRange(low, high)
        spin.setSingleStep(step)
        spin.setDecimals(decimals)
        if unit(name):
            spin.setSuffix(f" {unit(name)}")
        factor = shown_times(name)
        spin.valueChanged.connect(
            lambda value: self.state.update_settings(**{name: value / factor})
        )
        self._value_widgets[name] = spin
        return spin

    def _check(self, name: str, parent: QWidget) -> QCheckBox:
        label, _ = describe(name)
        box = QCheckBox(label, parent)
        box.setObjectName(name)
        box.setToolTip(tooltip(name))
        box.toggled.connect(lambda value: self.state.update_settings(**{name: value}))
        self._value_widgets[name] = box
        self._rows[name] = (None, box)
        return box

    # Showing -------------------------------------------------------------------------------

    def _show_settings(self) -> None:
        settings = self.state.settings
        for name, widget in self._value_widgets.items():
            widget.blockSignals(True)
            value = getattr(settings, name)
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
            elif isinstance(widget, QDoubleSpinBox):
                widget.setValue(value * shown_times(name))
            else:
                widget.setValue(value)
            widget.blockSignals(False)
        self.seed.set_values(settings.seed, settings.random_seed)
        self.settings_section.set_open(settings.settings_open)
        self.connection_section.set_open(settings.connection_open)
        self._show_speed()
        self._show_applicable()

    def _show_speed(self) -> None:
        """Full quality and the backend's LoRAs for the family; a chosen one the backend
        does not offer stays shown, marked, so the setting is never silently changed."""
        chosen = self.state.settings.speed
        items = [("", "Full quality")]
        items += [(info.name, info.label) for info in self.state.offered_loras()]
        if chosen and chosen not in [value for value, _ in items]:
            items.append((chosen, f"{chosen} (not offered)"))
        combo = self.speed
        combo.blockSignals(True)
        if [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count())] != items:
            combo.clear()
            for value, text in items:
                combo.addItem(text, value)
        combo.setCurrentIndex(max(combo.findData(chosen), 0))
        combo.blockSignals(False)

    def _show_applicable(self) -> None:
        """Only the settings that change what the chosen method makes on this family."""
        applicable = self.state.applicable_settings() | _ALWAYS_SHOWN
        self.split_layers.setVisible("split_layers" in applicable)
        for name in _GENERATION_SETTINGS:
            label, widget = self._rows[name]
            shown = name in applicable
            widget.setVisible(shown)
            if label is not None:
                label.setVisible(shown)

    def _on_changed(self, name: str) -> None:
        state = self.state
        if name == "settings":
            self._show_settings()
            self._enable_buttons()  # the method or the family may have changed
            self._show_connection()  # the family decides whether the warning applies
        elif name == "connection":
            self._show_connection()
            self._enable_buttons()
            self._show_speed()  # the backend's LoRAs
            self._show_applicable()  # "Automatic" follows the backend's family
            self._show_message()
        elif name in ("running", "refusals"):
            self._enable_buttons()
            self.progress.setVisible(state.running)
            self.message_line.setVisible(not state.running)
        elif name == "progress":
            self.progress.set_progress(state.progress)
        elif name == "preview":
            self.preview.set_preview(state.preview)
        elif name == "last_seed":
            seed = state.last_seed
            self.last_seed.setText("" if seed is None else f"Last result: seed {seed}")
            self.last_seed.setVisible(seed is not None)
            self.reuse_seed.setVisible(seed is not None)
        elif name == "message":
            self._show_message()
        elif name == "tray":
            self.tray.set_items(state.tray)

    def _show_connection(self) -> None:
        """The dot and the backend's family; a warning sign after them, and the warning
        with its switch below, when LayerDiffuse is expected to fail on the model."""
        state = self.state
        colour = _STATUS_COLOURS[state.connection]
        warning = state.model_warning()
        text = f'<span style="color:{colour}">●</span> {_escape(state.connection_summary())}'
        tooltip_text = state.connection_text
        if warning is not None:
            text += f' <span style="color:{_WARNING_COLOUR}">⚠</span>'
            tooltip_text += f"\n\n{warning}"
        self.connection_status.setText(text)
        self.connection_status.setToolTip(tooltip_text)
        self.model_warning.setText("" if warning is None else f"⚠ {warning}")
        self.model_warning.setVisible(warning is not None)
        self.matting_fallback.setVisible(warning is not None)
        # What Generate makes says so when it is the fallback's.
        matted = warning is not None and state.settings.matting_fallback
        index = self.method.findData(Action.TRANSPARENT_LAYER.value)
        label = dict(_MAKE_CHOICES)[Action.TRANSPARENT_LAYER.value]
        self.method.setItemText(index, f"{label} (matted)" if matted else label)

    def _show_message(self) -> None:
        """The last message; while there is no connection and no message, why not."""
        state = self.state
        message = state.message
        text, is_error = message.text, message.is_error
        if not text and state.connection is ConnectionState.DISCONNECTED:
            text, is_error = state.connection_text, True
        colour = "#c0392b" if is_error else "palette(text)"
        for label in (self.message, self.message_line):
            label.setStyleSheet(f"color: {colour}")
            label.setText(text)
        self.message.setVisible(bool(text))
        self.message_line.setToolTip(text)

    def _enable_buttons(self) -> None:
        state = self.state
        if state.running:
            self.generate.setText("Cancel")
            self.generate.setToolTip("Stop the running generation; nothing is inserted")
            self.generate.setEnabled(True)
            return
        self.generate.setText("Generate")
        refusal = state.refusals.get(Action(state.settings.method))
        self.generate.setEnabled(refusal is None)
        self.generate.setToolTip(
            "Run the chosen method on the active layer or the selection"
            if refusal is None
            else refusal
        )

    def _generate_or_cancel(self) -> None:
        if self.state.running:
            self.state.cancel()
        else:
            self.state.generate(Action(self.state.settings.method))


class _Form:
    """Labels beside their fields, in a grid: a hidden row takes no space at all (a
    QFormLayout keeps the spacing of hidden rows in Qt 5)."""

    def __init__(self, parent: QWidget) -> None:
        self.grid = QGridLayout(parent)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.grid.setColumnStretch(1, 1)
        self.rows = 0

    def add_row(self, label: QWidget, field: QWidget) -> None:
        self.grid.addWidget(label, self.rows, 0)
        self.grid.addWidget(field, self.rows, 1)
        self.rows += 1

    def add_wide(self, widget: QWidget) -> None:
        self.grid.addWidget(widget, self.rows, 0, 1, 2)
        self.rows += 1


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
