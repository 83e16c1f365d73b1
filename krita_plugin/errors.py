"""What goes wrong in the plugin, as exceptions whose text a painter can read.

::

    PluginError
     ├── NoDocument                   no document is open
     ├── UnsupportedDocument          not an 8-bit RGBA document
     ├── NoActiveLayer                the action needs an active layer
     ├── EmptyRegion                  nothing to work on where the job would read or write
     ├── NotConnected                 the backend is not connected
     ├── Busy                         a job is already running
     ├── MethodUnavailable            the backend does not offer a method the action needs
     ├── LoRAUnavailable              the backend does not offer the Speed setting's LoRA
     ├── JobFailed                    the backend refused or failed the job (wire code)
     ├── JobCancelled                 the job was cancelled
     ├── JobLost                      the connection or the backend went away with the job
     └── DocumentClosed               the job's document closed before its results came

Each message is a whole sentence for the docker (see `user_messages` for the wording of
wire errors and connection failures); the log gets the same text.
"""

from __future__ import annotations

__all__ = [
    "Busy",
    "DocumentClosed",
    "EmptyRegion",
    "JobCancelled",
    "JobFailed",
    "JobLost",
    "LoRAUnavailable",
    "MethodUnavailable",
    "NoActiveLayer",
    "NoDocument",
    "NotConnected",
    "PluginError",
    "UnsupportedDocument",
]


class PluginError(Exception):
    """The root of the plugin's errors; `str()` is the sentence shown to the painter."""


class NoDocument(PluginError):
    def __init__(self) -> None:
        super().__init__("Open or create a document first.")


class UnsupportedDocument(PluginError):
    """The document (or the layer read) is not 8-bit RGBA."""

    def __init__(self, model: str, depth: str) -> None:
        super().__init__(
            f"LayerDiffuse works on 8-bit RGBA documents, and this one is {model} {depth}. "
            "Convert it with Image ▸ Convert Image Color Space… (RGB/Alpha, "
            "8-bit integer/channel), or work on a converted copy."
        )
        self.model = model
        self.depth = depth


class NoActiveLayer(PluginError):
    def __init__(self) -> None:
        super().__init__("Select a layer in the Layers docker first.")


class EmptyRegion(PluginError):
    """Nothing to read or nowhere to write (the sentence says which)."""


class NotConnected(PluginError):
    """The backend is not connected; the sentence says why and what to do."""


class Busy(PluginError):
    def __init__(self) -> None:
        super().__init__("A generation is already running. Wait for it, or press Cancel.")


class MethodUnavailable(PluginError):
    """The backend does not offer what the action needs (the sentence names it)."""


class LoRAUnavailable(PluginError):
    """The Speed setting names a LoRA the backend does not offer (for this family)."""

    def __init__(self, name: str) -> None:
        super().__init__(
            f"The backend does not offer the few-step LoRA “{name}” for this model. "
            "Choose Full quality (or another) in Settings ▸ Speed."
        )
        self.name = name


class JobFailed(PluginError):
    """The backend refused or failed the job.

    Attributes:
        code: the wire error code (a `protocol.ErrorCode` value).
        detail: the backend's own message.
    """

    def __init__(self, sentence: str, code: str, detail: str) -> None:
        super().__init__(sentence)
        self.code = code
        self.detail = detail


class JobCancelled(PluginError):
    def __init__(self) -> None:
        super().__init__("Cancelled. Nothing was inserted.")


class JobLost(PluginError):
    """The connection or the backend went away with the job (the sentence says which)."""


class DocumentClosed(PluginError):
    def __init__(self) -> None:
        super().__init__("The document was closed before the result arrived; nothing was inserted.")
