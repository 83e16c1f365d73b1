"""The plugin's one door to Qt: PyQt6 inside Krita 6, PyQt5 inside Krita 5.

Krita embeds exactly one binding and refuses the other (Krita 5.3 and 6 raise
ModuleNotFoundError for the wrong one; loading both would load two Qt libraries and
crash Krita). Krita 5.3 and newer say which they embed (`pykrita.qt_major_version()`);
Krita 5.1 and 5.2 do not and are always Qt5. Outside Krita (tests, tools) the binding
that is installed is used, PyQt5 first.

Every other module of the plugin imports its Qt names from here, so the differences
stay in this file:
- `QAction` lives in QtWidgets in Qt5 and in QtGui in Qt6;
- enums are written scoped everywhere (`Qt.AlignmentFlag.AlignCenter`): PyQt6 knows only
  that form, and PyQt5 5.11+ accepts it too (a test checks no module uses the old form);
- PyQt6 has no `exec_()`; the plugin runs no modal dialog, so nothing calls either.
"""

from __future__ import annotations

import importlib
import importlib.util

__all__ = [
    "QT_MAJOR",
    "QAbstractItemView",
    "QAction",
    "QCheckBox",
    "QColor",
    "QComboBox",
    "QCoreApplication",
    "QDockWidget",
    "QDoubleSpinBox",
    "QFrame",
    "QGridLayout",
    "QHBoxLayout",
    "QIcon",
    "QImage",
    "QLabel",
    "QLineEdit",
    "QListWidget",
    "QListWidgetItem",
    "QMimeData",
    "QModelIndex",
    "QPainter",
    "QPixmap",
    "QPlainTextEdit",
    "QPoint",
    "QProgressBar",
    "QPushButton",
    "QScrollArea",
    "QSize",
    "QSizePolicy",
    "QSpinBox",
    "QStandardPaths",
    "QTimer",
    "QToolButton",
    "QVBoxLayout",
    "QWidget",
    "Qt",
    "pyqtSignal",
    "qt_major_version",
]


def qt_major_version() -> int:
    """The Qt major version of the running Krita (5 or 6), or of the installed binding.

    Raises:
        ImportError: outside Krita with neither PyQt5 nor PyQt6 installed.
    """
    try:
        pykrita = importlib.import_module("pykrita")  # Krita's embedded module
    except ImportError:
        pykrita = None
    reported = getattr(pykrita, "qt_major_version", None)
    if reported is not None:
        return int(reported())
    if pykrita is not None:  # Krita 5.1 / 5.2
        return 5
    for major in (5, 6):
        if importlib.util.find_spec(f"PyQt{major}") is not None:
            return major
    raise ImportError("neither PyQt5 nor PyQt6 is installed")


QT_MAJOR = qt_major_version()

if QT_MAJOR == 6:
    from PyQt6.QtCore import (
        QCoreApplication,
        QMimeData,
        QModelIndex,
        QPoint,
        QSize,
        QStandardPaths,
        Qt,
        QTimer,
        pyqtSignal,
    )
    from PyQt6.QtGui import QAction, QColor, QIcon, QImage, QPainter, QPixmap
    from PyQt6.QtWidgets import (
        QAbstractItemView,
        QCheckBox,
        QComboBox,
        QDockWidget,
        QDoubleSpinBox,
        QFrame,
        QGridLayout,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSizePolicy,
        QSpinBox,
        QToolButton,
        QVBoxLayout,
        QWidget,
    )
else:
    from PyQt5.QtCore import (
        QCoreApplication,
        QMimeData,
        QModelIndex,
        QPoint,
        QSize,
        QStandardPaths,
        Qt,
        QTimer,
        pyqtSignal,
    )
    from PyQt5.QtGui import QColor, QIcon, QImage, QPainter, QPixmap
    from PyQt5.QtWidgets import (
        QAbstractItemView,
        QAction,
        QCheckBox,
        QComboBox,
        QDockWidget,
        QDoubleSpinBox,
        QFrame,
        QGridLayout,
        QHBoxLayout,
        QLabel,
        QLineEdit,
        QListWidget,
        QListWidgetItem,
        QPlainTextEdit,
        QProgressBar,
        QPushButton,
        QScrollArea,
        QSizePolicy,
        QSpinBox,
        QToolButton,
        QVBoxLayout,
        QWidget,
    )
