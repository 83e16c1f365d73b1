"""Small widgets of the docker: seed box, progress bar, preview over a checkerboard,
sections that open and close, narrow combo boxes."""

from __future__ import annotations

from collections.abc import Sequence

from ..geometry import Extent
from ..pixels import thumbnail
from ..placement import NewLayer, Placement
from ..qt import (
    QCheckBox,
    QColor,
    QComboBox,
    QHBoxLayout,
    QIcon,
    QImage,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QPainter,
    QPixmap,
    QProgressBar,
    QSize,
    QSizePolicy,
    QSpinBox,
    Qt,
    QToolButton,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)
from ..state import Progress, TrayItem

__all__ = [
    "ElidedLabel",
    "PreviewLabel",
    "ProgressBar",
    "ResultTray",
    "Section",
    "SeedBox",
    "narrow_combo",
    "preview_pixmap",
]

MAX_SEED = 2**31 - 1
"""The largest seed the box takes (QSpinBox holds a signed 32-bit integer)."""


class SeedBox(QWidget):
    """A seed number with a "Random" toggle (a new seed for every generation)."""

    seedChanged = pyqtSignal(int)
    randomChanged = pyqtSignal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.number = QSpinBox(self)
        self.number.setObjectName("seed")
        self.number.setRange(0, MAX_SEED)
        # Narrower than its ten digits want, so the row fits Krita's dock column; the
        # column still leaves it room for them.
        self.number.setMinimumWidth(self.number.fontMetrics().horizontalAdvance("0") * 6 + 24)
        self.random = QCheckBox("Random", self)
        self.random.setObjectName("random_seed")
        self.random.setToolTip("Pick a new seed for every generation; the layer name keeps it")
        layout = QHBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.number, 1)
        layout.addWidget(self.random)
        self.number.valueChanged.connect(self.seedChanged)
        self.random.toggled.connect(self._random_toggled)

    def set_values(self, seed: int, random: bool) -> None:
        """Show values without emitting the change signals."""
        for widget in (self.number, self.random):
            widget.blockSignals(True)
        self.number.setValue(min(seed, MAX_SEED))
        self.random.setChecked(random)
        self.number.setEnabled(not random)
        for widget in (self.number, self.random):
            widget.blockSignals(False)

    def _random_toggled(self, random: bool) -> None:
        self.number.setEnabled(not random)
        self.randomChanged.emit(random)


def preview_pixmap(width: int, height: int, rgba: bytes, side: int) -> QPixmap:
    """An RGBA8 preview over a checkerboard, scaled to fit `side` × `side`."""
    image = QImage(rgba, width, height, width * 4, QImage.Format.Format_RGBA8888).copy()
    scaled = image.scaled(
        side, side, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    board = _checkerboard(scaled.width(), scaled.height())
    painter = QPainter(board)
    painter.drawImage(0, 0, scaled)
    painter.end()
    return board


class ProgressBar(QProgressBar):
    """The running job's progress, with its step count and time left as text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("progress")
        self.setRange(0, 1000)
        self.set_progress(None)

    def set_progress(self, progress: Progress | None) -> None:
        """Show a job's progress, or an empty bar between jobs."""
        if progress is None:
            self.setValue(0)
            self.setTextVisible(False)
            return
        self.setValue(round(progress.fraction * 1000))
        self.setFormat(progress.text)
        self.setTextVisible(True)


class PreviewLabel(QLabel):
    """The latest preview over a checkerboard; it stays until the next job's first one."""

    SIDE = 160

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("preview")
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setVisible(False)

    def set_preview(self, preview: tuple[int, int, bytes] | None) -> None:
        """Show a preview (width, height, RGBA8 bytes), or nothing."""
        if preview is None:
            self.clear()
            self.setVisible(False)
            return
        width, height, rgba = preview
        self.setPixmap(preview_pixmap(width, height, rgba, self.SIDE))
        self.setVisible(True)


class Section(QWidget):
    """A titled part of the docker that opens and closes on a click of its title.

    Signals:
        toggled(bool): the painter opened (True) or closed it.
    """

    toggled = pyqtSignal(bool)

    def __init__(self, title: str, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(name)
        self.button = QToolButton(self)
        self.button.setObjectName(f"{name}_button")
        self.button.setText(title)
        self.button.setCheckable(True)
        self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.button.setAutoRaise(True)
        self.content = QWidget(self)
        self.content.setObjectName(f"{name}_content")
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addWidget(self.button)
        layout.addWidget(self.content)
        self.button.toggled.connect(self._toggled)
        self.set_open(False)

    def set_open(self, open_: bool) -> None:
        """Open or close without emitting `toggled`."""
        self.button.blockSignals(True)
        self.button.setChecked(open_)
        self.button.blockSignals(False)
        self._show(open_)

    def _toggled(self, open_: bool) -> None:
        self._show(open_)
        self.toggled.emit(open_)

    def _show(self, open_: bool) -> None:
        self.button.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)
        self.content.setVisible(open_)


class ElidedLabel(QLabel):
    """One line of text, cut with "…" to the width it is given (it never widens the
    docker); `text()` is the whole text."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._full = ""
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)

    def setText(self, text: str) -> None:
        self._full = text
        self._elide()

    def text(self) -> str:
        return self._full

    def resizeEvent(self, event: object) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        line = " ".join(self._full.split())
        shown = self.fontMetrics().elidedText(line, Qt.TextElideMode.ElideRight, self.width())
        super().setText(shown)


class ResultTray(QListWidget):
    """The last results as thumbnails over a checkerboard, newest first; a click
    inserts one (`picked(index)`). An item's tooltip gives its layers' names."""

    picked = pyqtSignal(int)
    SIDE = 56

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("tray")
        self.setViewMode(QListWidget.ViewMode.IconMode)
        self.setFlow(QListWidget.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListWidget.Movement.Static)
        self.setIconSize(QSize(self.SIDE, self.SIDE))
        self.setFixedHeight(self.SIDE + 24)  # one row; more results scroll sideways
        self.setToolTip("The last results: click one to insert it")
        # Thumbnails by the layers they show (kept, so an id cannot be reused meanwhile).
        self._pixmaps: dict[int, tuple[tuple[NewLayer, ...], QPixmap]] = {}
        self.itemClicked.connect(lambda item: self.picked.emit(self.row(item)))

    def set_items(self, items: Sequence[TrayItem]) -> None:
        """Show the tray's items (thumbnails are made once per result)."""
        self.clear()
        pixmaps = {}
        for item in items:
            cached = self._pixmaps.get(id(item.layers))
            if cached is None or cached[0] is not item.layers:
                cached = (item.layers, tray_pixmap(item, self.SIDE))
            pixmaps[id(item.layers)] = cached
            entry = QListWidgetItem(QIcon(cached[1]), "")
            names = "\n".join(layer.name for layer in item.layers)
            done = "inserted; click to insert again" if item.inserted else "click to insert"
            entry.setToolTip(f"{names}\n({done})")
            self.addItem(entry)
        self._pixmaps = pixmaps
        self.setVisible(bool(items))


def tray_pixmap(item: TrayItem, side: int) -> QPixmap:
    """A result's visible layers, bottom first, over a checkerboard, within side × side
    (sampled, so a 4096² result costs a few milliseconds of the UI thread)."""
    extent = item.capture.region.extent
    below = [layer for layer in item.layers if layer.placement is Placement.BELOW]
    above = [layer for layer in item.layers if layer.placement is Placement.ABOVE]
    shown = [thumbnail(layer.pixels, extent, side) for layer in (*below, *above) if layer.visible]
    small = shown[0][0] if shown else Extent(side, side)
    board = _checkerboard(small.width, small.height)
    painter = QPainter(board)
    for _, pixels in shown:
        # BGRA bytes are Qt's ARGB32 on a little-endian machine.
        image = QImage(pixels, small.width, small.height, small.width * 4,
                       QImage.Format.Format_ARGB32)  # fmt: skip
        painter.drawImage(0, 0, image)
    painter.end()
    return board


def _checkerboard(width: int, height: int) -> QPixmap:
    board = QPixmap(width, height)
    board.fill(QColor(204, 204, 204))
    painter = QPainter(board)
    cell = 8
    for y in range(0, height, cell):
        for x in range((y // cell) % 2 * cell, width, 2 * cell):
            painter.fillRect(x, y, cell, cell, QColor(255, 255, 255))
    painter.end()
    return board


def narrow_combo(parent: QWidget | None = None) -> QComboBox:
    """A combo box as narrow as the column allows: its longest item does not set the
    docker's width (the popup still shows whole items)."""
    combo = QComboBox(parent)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(6)
    return combo
