"""krita-layerdiffuse: transparent-layer diffusion (LayerDiffuse) in Krita.

Installed as Krita's Python plugin `layerdiffuse` (see `scripts/build_plugin.py`).
Importing the package does nothing but, inside Krita's GUI, register the extension
(the actions) and the docker; everything else starts in the extension's `setup()`.
Outside Krita (unit tests, kritarunner) nothing is registered.
"""

from __future__ import annotations

import importlib.util
import logging


def _inside_krita() -> bool:
    """Whether this is Krita's GUI application (not kritarunner, not plain Python)."""
    if importlib.util.find_spec("krita") is None:
        return False
    try:
        from .qt import QCoreApplication
    except ImportError as error:  # a Krita without its PyQt (a broken install)
        logging.getLogger(__name__).error("LayerDiffuse needs Krita's PyQt: %s; not loaded", error)
        return False
    return QCoreApplication.applicationName() != "kritarunner"


if _inside_krita():
    from .extension import register

    register()
