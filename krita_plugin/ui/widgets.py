"""Small widgets of the docker: seed box, progress with preview, checkerboard preview."""

from __future__ import annotations

from ..qt import (
    QCheckBox,
    QColor,
    QHBoxLayout,
    QImage,
    QLabel,
    QPainter,
    QPixmap,
    QProgressBar,
    QSpinBox,
    Qt,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)

__all__ = ["ProgressView", "SeedBox", "preview_pixmap"]

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
    board = QPixmap(scaled.size())
    board.fill(QColor(204, 204, 204))
    painter = QPainter(board)
    cell = 8
    for y in range(0, scaled.height(), cell):
        for x in range((y // cell) % 2 * cell, scaled.width(), 2 * cell):
            painter.fillRect(x, y, cell, cell, QColor(255, 255, 255))
    painter.drawImage(0, 0, scaled)
    painter.end()
    return board


class ProgressView(QWidget):
    """A progress bar and the latest preview of the running job."""

    PREVIEW_SIDE = 160

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.bar = QProgressBar(self)
        self.bar.setObjectName("progress")
        self.bar.setRange(0, 1000)
        self.bar.setTextVisible(False)
        self.preview = QLabel(self)
        self.preview.setObjectName("preview")
        self.preview.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.preview.setMinimumHeight(self.PREVIEW_SIDE // 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.bar)
        layout.addWidget(self.preview)
        self.set_progress(None)

    def set_progress(self, fraction: float | None) -> None:
        """Show progress 0..1, or an idle bar for None."""
        self.bar.setValue(0 if fraction is None else round(fraction * 1000))

    def set_preview(self, preview: tuple[int, int, bytes] | None) -> None:
        """Show a preview (width, height, RGBA8 bytes), or clear it."""
        if preview is None:
            self.preview.clear()
            return
        width, height, rgba = preview
        self.preview.setPixmap(preview_pixmap(width, height, rgba, self.PREVIEW_SIDE))
