"""Sans-I/O state machines of the two ends: frames in, events out; calls in, frames out.

Neither class touches a socket. The connection layer feeds every received frame to
`receive_text` / `receive_binary` and acts on the events returned, and sends the frames
the `send_*` methods return, each list in order. A bad frame raises a `ProtocolError`
subclass; the state is then as before the frame, except that a bad image frame drops
the message its image belongs to. The server's connection layer answers with
`send_error(exc.code, str(exc), exc.job)` and carries on (after `UnsupportedVersion`,
which only the handshake raises, it closes).

A job's life on one connection: the client's `submit` (and its input images), then
`accepted`, `progress`…, `result`…, and one `done`. An `error` naming a job that was not
yet accepted ends it, except `duplicate_job`, which is about the second submit and not
the job already running under that id.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping

from .codec import decode_message, encode_message
from .errors import (
    BadImage,
    BadMessage,
    DuplicateJob,
    ErrorCode,
    InvalidField,
    LimitExceeded,
    NotReady,
    ProtocolError,
    UnknownType,
    UnsupportedVersion,
)
from .events import (
    CancelRequested,
    ClientEvent,
    ErrorReceived,
    HelloReceived,
    JobAccepted,
    JobDone,
    JobSubmitted,
    ProgressReceived,
    ResultReceived,
    ServerEvent,
    WelcomeReceived,
)
from .images import (
    Buffer,
    ImageAssembler,
    ImageRef,
    PixelFormat,
    iter_image_chunks,
    split_image,
    unpack_chunk,
)
from .limits import DEFAULT_LIMITS, Limits
from .messages import (
    MAX_TEXT_CHARS,
    Accepted,
    Cancel,
    Done,
    Error,
    ErrorInfo,
    Hello,
    JobStatus,
    LayerImage,
    Message,
    Progress,
    Result,
    Submit,
    Welcome,
)
from .methods import LayerRole
from .version import PROTOCOL_VERSION, is_newer_minor

__all__ = ["ClientProtocol", "ServerProtocol"]

Frames = list[str | bytes]

_MIB = 1 << 20
_CLIENT_TYPES = (Hello, Submit, Cancel)
_SERVER_TYPES = (Welcome, Accepted, Progress, Result, Done, Error)


class _Incoming:
    """A message whose announced images are still arriving."""

    __slots__ = ("images", "message", "waiting")

    def __init__(self, message: Message, refs: tuple[ImageRef, ...]) -> None:
        self.message = message
        self.waiting = {ref.id for ref in refs}
        self.images: dict[str, memoryview] = {}


def _expect_all(assembler: ImageAssembler, refs: tuple[ImageRef, ...], job: str) -> None:
    """Announce all of one message's images, or none of them."""
    added: list[str] = []
    try:
        for ref in refs:
            assembler.expect(ref)
            added.append(ref.id)
    except ProtocolError as exc:
        for image_id in added:
            assembler.discard(image_id)
        exc.job = job
        raise


def _check_bytes(ref: ImageRef, data: bytes | bytearray | memoryview, limits: Limits) -> None:
    ref.check(limits)
    if len(data) != ref.size:
        raise InvalidField(
            f"image '{ref.id}': {len(data)} bytes given for a reference of {ref.size}"
        )


class ServerProtocol:
    """The server's end of one connection.

    Args:
        limits: enforced on everything received, advertised by the caller's `welcome`.
        max_pending_bytes: bytes the input images still arriving may hold together.

    Attributes:
        limits: as given.
        peer_version: the client's version once its `hello` arrived, else None.
    """

    def __init__(
        self, limits: Limits = DEFAULT_LIMITS, max_pending_bytes: int = 512 * _MIB
    ) -> None:
        self.limits = limits
        self.peer_version: tuple[int, int] | None = None
        self._allow_unknown = False
        self._images = ImageAssembler(limits, max_pending_bytes)
        self._receiving: dict[str, _Incoming] = {}  # job -> submit waiting for its images
        self._image_jobs: dict[str, str] = {}  # image id -> job
        self._unaccepted: set[str] = set()  # handed over in JobSubmitted, not yet accepted
        self._accepted: set[str] = set()

    @property
    def unfinished_jobs(self) -> frozenset[str]:
        """Jobs of this connection that have not ended (receiving, queued or running)."""
        return frozenset(self._receiving) | self._unaccepted | self._accepted

    @property
    def receiving_jobs(self) -> frozenset[str]:
        """Submits whose input images are still arriving."""
        return frozenset(self._receiving)

    def abandon(self, job: str) -> bool:
        """Drop a submit whose input images are still arriving (an upload that timed out).

        The caller tells the client, e.g. with `send_error(ErrorCode.BAD_IMAGE, …, job)`.

        Returns:
            True if the job was receiving and is now dropped.
        """
        if job not in self._receiving:
            return False
        self._drop(job)
        return True

    def receive_text(self, text: str | bytes) -> list[ServerEvent]:
        """Take one text frame.

        Raises:
            ProtocolError: the frame is refused (see the codec, and `not_ready` before
                `hello`, `bad_message` for a second `hello`, `unknown_type` for a server
                message, `duplicate_job`, `limit_exceeded`, `bad_image` for an input id
                already pending).
        """
        try:
            message = decode_message(
                text, allow_unknown_fields=self._allow_unknown, limits=self.limits
            )
        except UnsupportedVersion:
            if self.peer_version is None:
                raise  # the handshake failed: the connection ends
            # After the handshake it is only a second hello: refused, the connection stays.
            raise BadMessage("hello already received") from None
        job = getattr(message, "job", None)
        if not isinstance(message, _CLIENT_TYPES):
            raise UnknownType(f"'{message.type}' is not a client message", job=job)
        if isinstance(message, Hello):
            if self.peer_version is not None:
                raise BadMessage("hello already received")
            self.peer_version = message.protocol
            self._allow_unknown = is_newer_minor(message.protocol)
            self._images.allow_unknown_fields = self._allow_unknown
            return [HelloReceived(message)]
        if self.peer_version is None:
            raise NotReady(f"expected hello first, got {message.type}", job=job)
        if isinstance(message, Submit):
            return self._receive_submit(message)
        if message.job in self._receiving:
            self._drop(message.job)
            return [CancelRequested(message.job, submitted=False)]
        return [CancelRequested(message.job)]

    def receive_binary(self, frame: bytes | bytearray | memoryview) -> list[ServerEvent]:
        """Take one binary frame of an input image.

        Raises:
            NotReady: before `hello`.
            BadImage: a malformed frame, one of an image no pending submit announced, or
                one that does not fit its image; in the last case the submit is dropped
                and the error carries its job.
        """
        if self.peer_version is None:
            raise NotReady("expected hello first, got a binary frame")
        image_id, offset, payload = unpack_chunk(frame, allow_unknown_fields=self._allow_unknown)
        job = self._image_jobs.get(image_id)
        if job is None:
            raise BadImage(f"image '{image_id}' was not announced")
        try:
            complete = self._images.feed_chunk(image_id, offset, payload)
        except ProtocolError as exc:
            self._drop(job)
            exc.job = job
            raise
        if complete is None:
            return []
        incoming = self._receiving[job]
        incoming.images[image_id] = complete[1]
        incoming.waiting.discard(image_id)
        del self._image_jobs[image_id]
        if incoming.waiting:
            return []
        del self._receiving[job]
        self._unaccepted.add(job)
        submit = incoming.message
        assert isinstance(submit, Submit)
        images = {
            layer.role: (layer.image, incoming.images[layer.image.id]) for layer in submit.inputs
        }
        return [JobSubmitted(submit, images)]

    def send_welcome(self, welcome: Welcome) -> Frames:
        """The `welcome` answering `HelloReceived`.

        Raises:
            ValueError: `welcome.limits` are not the limits this end enforces.
        """
        if welcome.limits != self.limits:
            raise ValueError("welcome.limits must be the limits the server protocol enforces")
        return [encode_message(welcome)]

    def send_accepted(self, job: str, position: int) -> Frames:
        """The job is queued at `position` (0 runs next)."""
        if job in self._unaccepted:
            self._unaccepted.discard(job)
            self._accepted.add(job)
        return [encode_message(Accepted(job, position))]

    def send_progress(
        self, job: str, step: int, total: int, preview: tuple[int, int, bytes] | None = None
    ) -> Frames:
        """A finished step, with an optional preview `(width, height, rgba8 pixels)`.

        Returns:
            The `progress` message, then the preview's frames (id `<job>/preview/<step>`).

        Raises:
            InvalidField / LimitExceeded: a preview that does not fit its size or the limits.
        """
        if preview is None:
            return [encode_message(Progress(job, step, total))]
        width, height, pixels = preview
        ref = ImageRef.raw(f"{job}/preview/{step}", width, height, PixelFormat.RGBA8)
        _check_bytes(ref, pixels, self.limits)
        text = encode_message(Progress(job, step, total, ref))
        return [text, *split_image(ref.id, pixels, self.limits.max_chunk_bytes)]

    def send_result(
        self,
        job: str,
        index: int,
        seed: int,
        layers: list[tuple[LayerRole, int, int, bytes]],
        format: PixelFormat,
    ) -> Frames:
        """One result: `layers` are `(role, width, height, data)`, data already in `format`.

        The protocol never converts pixels: raw data is width × height × 4 bytes in the
        format's order, PNG data a file the caller encoded.

        Returns:
            The `result` message, then each layer's frames in order (ids
            `<job>/<index>/<role>`, and `<job>/<index>/layer<i>` for a split's i-th layer).

        Raises:
            InvalidField / LimitExceeded: a layer that does not fit its size or the limits.
        """
        format = PixelFormat(format)
        parts: list[tuple[LayerImage, bytes]] = []
        stacked = 0
        for role, width, height, data in layers:
            role = LayerRole(role)
            image_id = f"{job}/{index}/{role.value}"
            if role is LayerRole.LAYER:
                image_id, stacked = f"{image_id}{stacked}", stacked + 1
            if format.is_raw:
                ref = ImageRef.raw(image_id, width, height, format)
            else:
                ref = ImageRef(image_id, width, height, format, len(data))
            _check_bytes(ref, data, self.limits)
            parts.append((LayerImage(role, ref), data))
        frames: Frames = [encode_message(Result(job, index, seed, tuple(p[0] for p in parts)))]
        for layer, data in parts:
            frames.extend(split_image(layer.image.id, data, self.limits.max_chunk_bytes))
        return frames

    def send_done(self, job: str, status: JobStatus, error: ErrorInfo | None = None) -> Frames:
        """The job ended; its id may be used again afterwards."""
        frames: Frames = [encode_message(Done(job, JobStatus(status), error))]
        self._forget(job)
        return frames

    def send_error(self, code: ErrorCode, message: str, job: str | None = None) -> Frames:
        """An `error`; one naming a job not yet accepted ends it (but `duplicate_job`).

        Every `ProtocolError` this class raises can be sent back as
        `send_error(exc.code, str(exc), exc.job)`. A message over 4000 characters is cut.
        """
        if len(message) > MAX_TEXT_CHARS:
            message = message[: MAX_TEXT_CHARS - 3] + "..."
        frames: Frames = [encode_message(Error(ErrorCode(code), message, job))]
        if job is not None and code != ErrorCode.DUPLICATE_JOB and job not in self._accepted:
            self._forget(job)
        return frames

    def _receive_submit(self, submit: Submit) -> list[ServerEvent]:
        job = submit.job
        if job in self.unfinished_jobs:
            raise DuplicateJob(f"job '{job}' is already in use", job=job)
        submit.check_limits(self.limits)
        if not submit.inputs:
            self._unaccepted.add(job)
            return [JobSubmitted(submit, {})]
        refs = tuple(layer.image for layer in submit.inputs)
        _expect_all(self._images, refs, job)
        self._receiving[job] = _Incoming(submit, refs)
        for ref in refs:
            self._image_jobs[ref.id] = job
        return []

    def _drop(self, job: str) -> None:
        incoming = self._receiving.pop(job, None)
        if incoming is not None:
            for image_id in incoming.waiting:
                self._images.discard(image_id)
                self._image_jobs.pop(image_id, None)

    def _forget(self, job: str) -> None:
        self._drop(job)
        self._unaccepted.discard(job)
        self._accepted.discard(job)


class ClientProtocol:
    """The client's end of one connection (a reconnect uses a new one).

    Events come out in the order their messages arrived: one waiting for its images
    holds back those after it. When a bad image frame raises, the message it belonged to
    is dropped and the events it held back come out with the next call's.

    Args:
        client_name: sent in `hello`, e.g. `krita-layerdiffuse/0.1`.
        max_pending_bytes: bytes the images still arriving may hold together.
        prefault_images: populate each arriving image's buffer at once (fastest in
            all); off, the page faults come a frame at a time (a UI thread's choice).

    Attributes:
        welcome: the server's `welcome` once it arrived, else None.
        limits: the welcome's limits (the defaults before it).
    """

    def __init__(
        self,
        client_name: str,
        *,
        max_pending_bytes: int = 1024 * _MIB,
        prefault_images: bool = True,
    ) -> None:
        self.client_name = client_name
        self._prefault = prefault_images
        self.welcome: Welcome | None = None
        self.limits = DEFAULT_LIMITS
        self._max_pending_bytes = max_pending_bytes
        self._hello_sent = False
        self._allow_unknown = False
        self._images = ImageAssembler(DEFAULT_LIMITS, max_pending_bytes, prefault_images)
        self._incoming: deque[_Incoming] = deque()
        self._image_owners: dict[str, _Incoming] = {}
        self._unaccepted: set[str] = set()
        self._accepted: set[str] = set()

    @property
    def unfinished_jobs(self) -> frozenset[str]:
        """Jobs submitted on this connection that have not ended."""
        return frozenset(self._unaccepted | self._accepted)

    def send_hello(self, session: str | None = None) -> Frames:
        """The opening `hello`; `session` resumes a session (its results are delivered).

        Raises:
            BadMessage: hello was already sent.
        """
        if self._hello_sent:
            raise BadMessage("hello already sent")
        frames: Frames = [encode_message(Hello(PROTOCOL_VERSION, self.client_name, session))]
        self._hello_sent = True
        return frames

    def send_submit(
        self, submit: Submit, images: Mapping[str, Buffer], max_chunk_bytes: int | None = None
    ) -> Frames:
        """A `submit` and the frames of its input images, checked before any frame is made.

        Args:
            submit: the job.
            images: the bytes of each input, keyed by its image id.
            max_chunk_bytes: image bytes per frame, at most the welcome's limit (the
                limit when None).

        Raises:
            NotReady: no `welcome` yet.
            DuplicateJob: an unfinished job of this connection has that id.
            LimitExceeded: over the welcome's limits (inputs, steps, images, text size).
            InvalidField: images missing, extra or not of their reference's size, or a
                field the codec refuses.
        """
        return list(self.submit_frames(submit, images, max_chunk_bytes))

    def submit_frames(
        self, submit: Submit, images: Mapping[str, Buffer], max_chunk_bytes: int | None = None
    ) -> Iterator[str | bytes]:
        """`send_submit`, checked at once in the same way, with each image frame made
        only when it is taken: a client can send one before the next is copied (a
        4096² image is 64 MiB to copy into frames)."""
        job = submit.job
        if self.welcome is None:
            raise NotReady("no welcome received yet", job=job)
        if job in self._unaccepted or job in self._accepted:
            raise DuplicateJob(f"job '{job}' is already in use", job=job)
        limit = self.limits.max_chunk_bytes
        chunk = limit if max_chunk_bytes is None else min(limit, max_chunk_bytes)
        try:
            submit.check_limits(self.limits)
            for layer in submit.inputs:
                if layer.image.id not in images:
                    raise InvalidField(f"images: no bytes for input image '{layer.image.id}'")
            input_ids = {layer.image.id for layer in submit.inputs}
            for image_id in images:
                if image_id not in input_ids:
                    raise InvalidField(f"images: '{image_id}' is not an input of the submit")
            for layer in submit.inputs:
                _check_bytes(layer.image, images[layer.image.id], self.limits)
            text = encode_message(submit)
            size = len(text.encode("utf-8"))
            if size > self.limits.max_text_bytes:
                raise LimitExceeded(
                    f"submit of {size} bytes exceeds the limit of {self.limits.max_text_bytes}"
                )
            if chunk < 1:
                raise ValueError(f"max_chunk_bytes must be positive, got {max_chunk_bytes}")
        except ProtocolError as exc:
            exc.job = job
            raise
        self._unaccepted.add(job)
        return _submit_frames(text, submit, images, chunk)

    def send_cancel(self, job: str) -> Frames:
        """Cancel a job (also one submitted before a reconnect, in the same session).

        Raises:
            NotReady: no `welcome` yet.
        """
        if self.welcome is None:
            raise NotReady("no welcome received yet", job=job)
        return [encode_message(Cancel(job))]

    def receive_text(self, text: str | bytes) -> list[ClientEvent]:
        """Take one text frame from the server.

        Raises:
            ProtocolError: the frame is refused (see the codec; `not_ready` before hello
                was sent or before `welcome`, `bad_message` for a second welcome,
                `unknown_type` for a client message, `limit_exceeded` / `invalid_field` /
                `bad_image` for an image the message announces).
        """
        if not self._hello_sent:
            raise NotReady("hello not sent yet")
        try:
            message = decode_message(
                text, allow_unknown_fields=self._allow_unknown, limits=self.limits
            )
        except UnsupportedVersion:
            if self.welcome is None:
                raise
            raise BadMessage("welcome already received") from None
        job = getattr(message, "job", None)
        if not isinstance(message, _SERVER_TYPES):
            raise UnknownType(f"'{message.type}' is not a server message", job=job)
        if isinstance(message, Welcome):
            if self.welcome is not None:
                raise BadMessage("welcome already received")
            self.welcome = message
            self.limits = message.limits
            self._allow_unknown = is_newer_minor(message.protocol)
            self._images = ImageAssembler(message.limits, self._max_pending_bytes, self._prefault)
            self._images.allow_unknown_fields = self._allow_unknown
        elif isinstance(message, Error):
            if job is not None and message.code != ErrorCode.DUPLICATE_JOB:
                self._unaccepted.discard(job)
        elif self.welcome is None:
            raise NotReady(f"expected welcome first, got {message.type}", job=job)
        elif isinstance(message, Accepted):
            if job in self._unaccepted:
                self._unaccepted.discard(job)
                self._accepted.add(job)
        elif isinstance(message, Done):
            self._unaccepted.discard(message.job)
            self._accepted.discard(message.job)
        refs: tuple[ImageRef, ...] = ()
        if isinstance(message, Progress) and message.preview is not None:
            refs = (message.preview,)
            _expect_all(self._images, refs, message.job)
        elif isinstance(message, Result):
            refs = tuple(layer.image for layer in message.layers)
            _expect_all(self._images, refs, message.job)
        incoming = _Incoming(message, refs)
        for ref in refs:
            self._image_owners[ref.id] = incoming
        self._incoming.append(incoming)
        return self._release()

    def receive_binary(self, frame: bytes | bytearray | memoryview) -> list[ClientEvent]:
        """Take one binary frame of an announced image.

        Raises:
            BadImage: a malformed frame, one of an image not announced, or one that does
                not fit its image (whose message is then dropped; the error carries its job).
        """
        image_id, offset, payload = unpack_chunk(frame, allow_unknown_fields=self._allow_unknown)
        incoming = self._image_owners.get(image_id)
        if incoming is None:
            raise BadImage(f"image '{image_id}' was not announced")
        try:
            complete = self._images.feed_chunk(image_id, offset, payload)
        except ProtocolError as exc:
            for other in incoming.waiting:
                self._images.discard(other)
                self._image_owners.pop(other, None)
            self._incoming.remove(incoming)
            exc.job = getattr(incoming.message, "job", None)
            raise
        if complete is None:
            return []
        incoming.images[image_id] = complete[1]
        incoming.waiting.discard(image_id)
        del self._image_owners[image_id]
        return self._release()

    def _release(self) -> list[ClientEvent]:
        events: list[ClientEvent] = []
        while self._incoming and not self._incoming[0].waiting:
            events.append(_event(self._incoming.popleft()))
        return events


def _event(incoming: _Incoming) -> ClientEvent:
    message, images = incoming.message, incoming.images
    if isinstance(message, Welcome):
        return WelcomeReceived(message)
    if isinstance(message, Accepted):
        return JobAccepted(message)
    if isinstance(message, Progress):
        preview = images[message.preview.id] if message.preview is not None else None
        return ProgressReceived(message, preview)
    if isinstance(message, Result):
        stacked = LayerRole.LAYER
        return ResultReceived(
            message,
            {
                layer.role: images[layer.image.id]
                for layer in message.layers
                if layer.role is not stacked
            },
            tuple(images[layer.image.id] for layer in message.layers if layer.role is stacked),
        )
    if isinstance(message, Done):
        return JobDone(message)
    assert isinstance(message, Error)
    return ErrorReceived(message)


def _submit_frames(
    text: str, submit: Submit, images: Mapping[str, Buffer], chunk: int
) -> Iterator[str | bytes]:
    yield text
    for layer in submit.inputs:
        yield from iter_image_chunks(layer.image.id, images[layer.image.id], chunk)
