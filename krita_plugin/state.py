"""The docker's state and the job logic: what the actions and the docker call.

`DockerState` holds what the docker shows (settings, connection, progress, preview, the
last message) and runs generations: it reads the document through a `Canvas` when an
action is triggered, runs the action's recipe on the backend through the client, and
inserts the result layers through the canvas. Widgets observe it through `changed`;
it knows no widgets and no Krita (the canvas and the task spawner are given to it), so
the whole job logic runs in tests with a fake canvas and a real backend.

A job inserts nothing unless every step completed: a failure, a cancel, a lost
connection or a closed document leaves the document as it was.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import random
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, Protocol

from .client import BackendClient, ConnectionState, JobResult, new_job_id
from .errors import (
    Busy,
    JobCancelled,
    LoRAUnavailable,
    MethodUnavailable,
    NoActiveLayer,
    NoDocument,
    NotConnected,
    PluginError,
    UnsupportedDocument,
)
from .geometry import Bounds, Extent
from .pixels import BYTES_PER_PIXEL, Buffer, alpha_strip, lazy_buffer, strips
from .placement import Capture, InputSource, NewLayer
from .recipes import FAMILY_LABELS, MATTED_METHODS, Action, Recipe, recipe_for, step_inputs
from .settings import (
    FAMILY_AUTO,
    Settings,
    SettingsStore,
    describe,
    load_settings,
    save_settings,
)
from .vendor import protocol

__all__ = [
    "About",
    "Canvas",
    "DockerState",
    "Message",
    "Progress",
    "Signal",
    "TrayItem",
    "applicable_settings",
    "layer_name",
]

log = logging.getLogger(__name__)

MASK_SINCE = (1, 1)
"""The protocol version from which a backend takes a selection mask."""
MATTING_LABEL = describe("matting_fallback")[0]

Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Future[Any]"]


class Canvas(Protocol):
    """The document side of a job (`canvas.KritaCanvas` in Krita, a fake in tests)."""

    def capture(self, source: InputSource) -> Capture:
        """Read the work region of the active document now.

        Raises:
            PluginError: no document, not 8-bit RGBA, no active layer, nothing to read.
        """

    async def complete(self, capture: Capture, source: InputSource) -> Capture:
        """The capture with what `capture` left to read between ticks (the active
        layer's pixels, strip by strip).

        Raises:
            PluginError: the document or the layer went, or nothing is visible.
        """

    async def insert(self, capture: Capture, layers: Sequence[NewLayer]) -> list[str]:
        """Insert new layers next to the capture's anchor; returns their names.

        Raises:
            DocumentClosed: the capture's document is no longer open.
        """

    def document_problem(self) -> PluginError | None:
        """Why the active document cannot be worked on (cheap: reads no pixels), or None."""

    def tell(self, text: str) -> None:
        """Show a sentence where the painter is looking (Krita: a floating message on
        the canvas), for answers to an action triggered from a menu or a shortcut."""


class Signal:
    """A minimal observable: `connect(slot)`, `emit(*args)` (same thread, in order)."""

    def __init__(self) -> None:
        self._slots: list[Callable[..., None]] = []

    def connect(self, slot: Callable[..., None]) -> None:
        self._slots.append(slot)

    def emit(self, *args: Any) -> None:
        for slot in list(self._slots):
            slot(*args)


class About(Enum):
    """What a message is about, so that it can go when that is mended."""

    JOB = "job"
    CONNECTION = "connection"
    DOCUMENT = "document"


@dataclass(frozen=True)
class Message:
    """The last thing said to the painter: a sentence, whether it is an error, and what
    it is about."""

    text: str = ""
    is_error: bool = False
    about: About = About.JOB


@dataclass(frozen=True)
class Progress:
    """Where a running generation is: its sampler steps, and the time left.

    Attributes:
        step / total: sampler steps done and to do (as the backend counts them: both
            steps of an SDXL one-click workflow).
        seconds_left: estimated from the time per step so far (None before a step).
    """

    step: int
    total: int
    seconds_left: float | None = None

    @property
    def fraction(self) -> float:
        return self.step / self.total if self.total else 0.0

    @property
    def text(self) -> str:
        """E.g. "Step 3/20 · 4 s left"."""
        words = f"Step {self.step}/{self.total}"
        if self.seconds_left is not None:
            left = round(self.seconds_left)
            words += f" · {left} s left" if left < 90 else f" · {round(left / 60)} min left"
        return words


@dataclass(frozen=True)
class TrayItem:
    """A finished result kept in the docker's tray, ready to insert (again).

    Attributes:
        capture: where it goes (the document, anchor and region it was made for; no
            pixels).
        layers: its layers, as a job inserts them.
        prompt / seed: what made it (the tray's tooltip).
        inserted: whether it went into the document already.
    """

    capture: Capture
    layers: tuple[NewLayer, ...]
    prompt: str
    seed: int
    inserted: bool = False

    @property
    def size(self) -> int:
        return sum(len(layer.pixels) for layer in self.layers)


TRAY_ITEMS = 8
"""How many results the tray keeps (the newest first)."""
TRAY_BYTES = 512 << 20
"""…and at most this many bytes of layers: four 4096² results, or many small ones."""


@dataclass
class _RunningJob:
    action: Action
    started: float
    job_id: str | None = None
    cancelled: bool = False


def layer_name(prompt: str, role: protocol.LayerRole | str, seed: int) -> str:
    """A result layer's name: what tells results apart first (role, seed), then the
    prompt's start, so the Layers docker's narrow column still shows the difference.
    `role` may be words of its own ("foreground (matted)")."""
    text = _short(prompt)
    what = role.value if isinstance(role, protocol.LayerRole) else role
    return f"{what} · seed {seed} · {text or 'LayerDiffuse'}"


def split_group_name(source: str, seed: int) -> str:
    """The group a split's layers go into: what was split, and the seed."""
    return f"Split: {_short(source) or 'layer'} · seed {seed}"


def split_layer_name(index: int, count: int, prompt: str, source: str, seed: int) -> str:
    """A split's layer: its place in the stack first ("Layer 1/4" is the bottom one),
    then the seed and the prompt (the source's name when the model captioned it)."""
    return f"Layer {index}/{count} · seed {seed} · {_short(prompt) or _short(source) or 'layer'}"


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text[:47].rstrip() + "…" if len(text) > 48 else text


SECOND_STEP_SETTINGS = (
    "second_prompt", "second_negative_prompt", "second_sampler", "second_stop_at",
)  # fmt: skip
"""The settings of the second step of SDXL's two-step layer workflows."""

LAYER_PROMPT_SETTINGS = {
    protocol.LayerRole.FOREGROUND: "foreground_prompt",
    protocol.LayerRole.BACKGROUND: "background_prompt",
    protocol.LayerRole.BLENDED: "blended_prompt",
}
"""The setting that holds each layer role's prompt."""


SD_SETTINGS = (
    "negative_prompt", "speed", "sampler", "stop_at", "hires", "hires_strength",
)  # fmt: skip
"""Settings of the SD families' every method that FLUX's has no use for (no negative pass,
no sampler choice, its LoRA always on, no second pass)."""

SPLIT_SETTINGS = frozenset(
    {"split_layers", "split_steps", "split_cfg", "seed", "random_seed", "fit_to_native"}
)
"""What a split reads (Qwen-Image-Layered: its own steps and true CFG, the layer count;
no negative prompt, sampler or second pass)."""


def applicable_settings(action: Action, family: protocol.ModelFamily | None) -> frozenset[str]:
    """The generation settings that change what `action` makes on `family` (None: the
    family is not known yet, so every setting any family reads).

    Always: steps, CFG (FLUX's guidance on FLUX), seed, fit to native size; on SD1.5 and
    SDXL also the negative prompt, speed, sampler, Stop At, the second pass and its
    strength.
    Only where they matter: the weight (the SDXL layer models; SD1.5 ignores it), the
    SDXL transparent model (attention or conv), the layer prompts the recipe's methods
    read, and "insert blended" for the recipes that make a blended image.
    """
    if action is Action.SPLIT_LAYERS or family is protocol.ModelFamily.QWEN_LAYERED:
        return SPLIT_SETTINGS  # (on Qwen-Image-Layered nothing else runs)
    names = {"steps", "cfg_scale", "seed", "random_seed", "fit_to_native"}
    families = tuple(protocol.ModelFamily) if family is None else (family,)
    for each in families:
        if each is protocol.ModelFamily.QWEN_LAYERED:
            continue  # it has no other action
        if each is not protocol.ModelFamily.FLUX:  # FLUX: guidance-distilled flow matching
            names.update(SD_SETTINGS)
        try:
            plain = recipe_for(action, each)
            with_blended = recipe_for(action, each, insert_blended=True)
        except MethodUnavailable:
            continue
        if plain.method in protocol.SECOND_STEP_METHODS:
            names.update(SECOND_STEP_SETTINGS)
        if each is protocol.ModelFamily.SDXL:
            names.add("weight")
            if action is Action.TRANSPARENT_LAYER:
                names.add("sdxl_transparent_model")
        spec = protocol.METHOD_SPECS[plain.method]
        names.update(LAYER_PROMPT_SETTINGS[role] for role in spec.layer_prompts)
        if len(with_blended.outputs) > len(plain.outputs):
            names.add("insert_blended")
    return frozenset(names)


class DockerState:
    """Observable state of the docker, and the generate / cancel logic.

    Args:
        store: where settings are kept.
        canvas: reads the document and inserts layers.
        client: the backend client (its `on_state` is connected here).
        spawn: starts a coroutine on the plugin's event loop, returning its task.
        set_busy: told True while a job streams, False after (the event loop ticks faster).

    Attributes:
        changed: emitted with an attribute name whenever one of these changes:
            `settings`, `connection`, `running`, `progress`, `preview`, `last_seed`,
            `message`, `refusals`, `tray`.
        settings: the current settings (replace them through `update_settings`).
        connection / connection_text: the client's state and its sentence.
        running: whether a job is running.
        progress: the running job's `Progress`, or None.
        preview: the latest preview (width, height, RGBA8 bytes), or None; it stays
            after the job until the next one starts.
        last_seed: the seed of the last inserted result, or None.
        message: the last message to the painter.
        refusals: for each action, why it cannot start now (None: it can), as of the
            last `refresh()`.
        tray: the last results (`TrayItem`), newest first; with "insert results" off
            they wait there until the painter picks one.
    """

    def __init__(
        self,
        store: SettingsStore,
        canvas: Canvas,
        client: BackendClient,
        spawn: Spawn,
        set_busy: Callable[[bool], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.changed = Signal()
        self.store = store
        self.canvas = canvas
        self.client = client
        self.spawn = spawn
        self.set_busy = set_busy
        self.clock = clock
        self.settings = load_settings(store)
        self.connection = client.state
        self.connection_text = client.status
        self.running = False
        self.progress: Progress | None = None
        self.preview: tuple[int, int, bytes] | None = None
        self.last_seed: int | None = None
        self.message = Message()
        self.refusals: dict[Action, str | None] = {}
        self.tray: list[TrayItem] = []
        self._job: _RunningJob | None = None
        self._warned: tuple[str, str] | None = None
        self._warned_on_canvas: tuple[str, str] | None = None
        client.on_state = self._on_connection
        if client.state is ConnectionState.CONNECTED:  # (connected before the state was made)
            self._on_connection(client.state, client.status)
        self.refresh()

    # Settings and connection ---------------------------------------------------------------

    def update_settings(self, **changes: Any) -> None:
        """Change settings (by field name); they are saved at once."""
        previous = self.settings
        settings = dataclasses.replace(previous, **changes)
        if settings == previous:
            return
        self.settings = settings
        save_settings(self.store, settings, previous)
        self.changed.emit("settings")
        if (settings.server_url, settings.token) != (previous.server_url, previous.token):
            self.spawn(self.client.configure(settings.server_url, settings.token))
        self.refresh()  # the method or the family may have changed what can run

    def _on_connection(self, state: ConnectionState, text: str) -> None:
        self.connection, self.connection_text = state, text
        self.changed.emit("connection")
        if state is ConnectionState.CONNECTED and self.message.about is About.CONNECTION:
            self._say("", False)  # "Can't reach…" is stale beside a green dot
        if state is ConnectionState.CONNECTED:
            self._follow_the_backend()
            self._warn_about_model()
        self.refresh()

    def _follow_the_backend(self) -> None:
        """With "Automatic", Generate does what the backend's model can: a
        Qwen-Image-Layered backend does nothing but split, and no other backend splits.
        (A family the painter chose stays theirs, and so does their method.)"""
        welcome = self.client.welcome
        if welcome is None or self.settings.family != FAMILY_AUTO:
            return
        splits = welcome.model.family is protocol.ModelFamily.QWEN_LAYERED
        chosen = Action(self.settings.method)
        if splits and chosen is not Action.SPLIT_LAYERS:
            self.update_settings(method=Action.SPLIT_LAYERS.value)
        elif not splits and chosen is Action.SPLIT_LAYERS:
            self.update_settings(method=Action.TRANSPARENT_LAYER.value)

    def _model_key(self) -> tuple[str, str] | None:
        welcome = self.client.welcome
        return None if welcome is None else (welcome.session, welcome.model.name)

    def _warn_about_model(self) -> None:
        """Say once per backend model, in the docker, that LayerDiffuse is expected to
        fail on it and what a transparent layer does about it; on the canvas too when a
        document is open (else at the first transparent layer, `_warn_on_canvas`)."""
        warning = self.model_warning()
        key = self._model_key()
        if warning is None or key == self._warned:
            return
        self._warned = key
        # (The whole warning stays in the docker while it applies: `model_warning`.)
        self._say(
            f"LayerDiffuse is expected to fail on the backend's model. {self.matting_text()}",
            False,
            About.JOB,
        )
        if not isinstance(self.canvas.document_problem(), NoDocument):
            self._warn_on_canvas()

    def _warn_on_canvas(self) -> None:
        """The model's warning as a floating message on the canvas, once per model."""
        warning = self.model_warning()
        key = self._model_key()
        if warning is None or key == self._warned_on_canvas:
            return
        self._warned_on_canvas = key
        log.info("warned on the canvas: %s", warning)
        self.canvas.tell(f"{warning} {self.matting_text()}")

    def matting_text(self) -> str:
        """What a transparent layer does on a model LayerDiffuse fails on, as set."""
        if self.settings.matting_fallback:
            return "Transparent layers are generated on gray and matted instead."
        return f"“{MATTING_LABEL}” is off: transparent layers may come out tinted."

    # What can run ---------------------------------------------------------------------------

    def refusal(self, action: Action) -> PluginError | None:
        """Why `action` cannot start now, or None when it can (no pixels are read: an
        empty work area is found only when it starts)."""
        if self._job is not None:
            return Busy()
        if self.client.state is not ConnectionState.CONNECTED:
            return NotConnected(self.connection_text)
        try:
            recipe = self._recipe(action)
            recipe.check_offered(self.offered_methods())
            if recipe.method is not protocol.Method.SPLIT_LAYERS:  # a split takes no LoRA
                self.speed_lora()
        except PluginError as error:
            return error
        return self.canvas.document_problem()

    def refresh(self) -> None:
        """Look again at what can run (the plugin calls this on a timer: Krita tells
        nothing when the active document or its colour model changes). Emits
        `refusals` when that changed, and drops a message about the document once the
        document is fine."""
        refusals = {}
        for action in Action:
            problem = self.refusal(action)
            refusals[action] = None if problem is None else str(problem)
        if refusals != self.refusals:
            self.refusals = refusals
            self.changed.emit("refusals")
        if self.message.about is About.DOCUMENT and self.canvas.document_problem() is None:
            self._say("", False)

    def _recipe(self, action: Action) -> Recipe:
        family = self.family()
        return recipe_for(
            action,
            family,
            self.settings.insert_blended,
            protocol.Method(self.settings.sdxl_transparent_model),
            matted=self.settings.matting_fallback and self.model_warning() is not None,
        )

    def model_warning(self) -> str | None:
        """Why the backend expects LayerDiffuse to fail on its model, when it says so
        (protocol 1.3) and the actions run on that model's family; else None."""
        welcome = self.client.welcome
        if welcome is None or welcome.model.warning is None:
            return None
        if self.known_family() is not welcome.model.family:
            return None
        return welcome.model.warning

    def offered_loras(self) -> tuple[protocol.LoRAInfo, ...]:
        """The few-step (and other) LoRAs the backend offers for the actions' family."""
        welcome = self.client.welcome
        family = self.known_family()
        if welcome is None:
            return ()
        return tuple(info for info in welcome.capabilities.loras if info.family is family)

    def speed_lora(self) -> protocol.LoRAInfo | None:
        """The LoRA the Speed setting names, or None for full quality.

        Raises:
            LoRAUnavailable: the backend does not offer it for the family.
        """
        name = self.settings.speed
        if not name:
            return None
        for info in self.offered_loras():
            if info.name == name:
                return info
        raise LoRAUnavailable(name)

    def choose_speed(self, name: str) -> None:
        """Pick full quality ("") or an offered LoRA: its steps, sampler and CFG come with
        it (full quality brings back the original's 20 steps, DPM++ 2M Karras, CFG 7)."""
        changes: dict[str, Any] = {"speed": name}
        info = next((each for each in self.offered_loras() if each.name == name), None)
        if not name:
            defaults = Settings()
            changes |= {"steps": defaults.steps, "sampler": defaults.sampler}
            changes["cfg_scale"] = defaults.cfg_scale
        elif info is not None:
            if info.steps is not None:
                changes["steps"] = info.steps
            if info.sampler is not None:
                changes["sampler"] = info.sampler.value
            if info.cfg_scale is not None:
                changes["cfg_scale"] = info.cfg_scale
        self.update_settings(**changes)

    def offered_methods(self) -> tuple[protocol.Method, ...]:
        welcome = self.client.welcome
        return welcome.capabilities.methods if welcome is not None else ()

    def family(self) -> protocol.ModelFamily:
        """The model family the actions run on.

        Raises:
            NotConnected: "Automatic" before the backend said which model it runs.
        """
        if self.settings.family != FAMILY_AUTO:
            return protocol.ModelFamily(self.settings.family)
        welcome = self.client.welcome
        if welcome is None:
            raise NotConnected(self.client.status)
        return welcome.model.family

    def connection_summary(self) -> str:
        """The connection in a word or two, for the docker's top row (e.g. "SD1.5 demo")."""
        welcome = self.client.welcome
        if self.connection is ConnectionState.CONNECTED and welcome is not None:
            family = FAMILY_LABELS[welcome.model.family]
            return f"{family} demo" if welcome.model.demo else family
        if self.connection is ConnectionState.CONNECTING:
            return "Connecting…"
        return "Offline"

    def known_family(self) -> protocol.ModelFamily | None:
        """The family the actions would run on, or None while "Automatic" has no backend."""
        try:
            return self.family()
        except NotConnected:
            return None

    def applicable_settings(self) -> frozenset[str]:
        """The settings that matter for the docker's method on the current family."""
        return applicable_settings(Action(self.settings.method), self.known_family())

    def reuse_seed(self) -> None:
        """Generate with the last result's seed from now on (Random off)."""
        if self.last_seed is not None:
            self.update_settings(seed=self.last_seed, random_seed=False)

    # Jobs ----------------------------------------------------------------------------------

    def generate(self, action: Action) -> asyncio.Future[list[str]] | None:
        """Start an action: read the document now, generate, insert the layers later.

        Problems found before anything is sent (no document, wrong colour model, not
        connected, a method the backend lacks, a job already running) become the
        message and nothing starts.

        Returns:
            The job's task (its result: the names of the inserted layers), or None.
        """
        try:
            problem = self.refusal(action)
            if problem is not None:
                raise problem
            recipe = self._recipe(action)
            capture = self.canvas.capture(recipe.source)
        except PluginError as error:
            self._refuse(error)
            return None
        if recipe.method in MATTED_METHODS.values():
            self._warn_on_canvas()  # (if it was not shown when the backend connected)
        settings = self.settings
        seed = random.randrange(0, 2**31) if settings.random_seed else settings.seed
        self._job = _RunningJob(action, self.clock())
        self.running = True
        steps = settings.split_steps if action is Action.SPLIT_LAYERS else settings.steps
        self.progress = Progress(0, steps)
        self.preview = None
        self._emit("running", "progress", "preview")
        self._say(f"{action.label}: {_doing(recipe.method)}…", False)
        self.refresh()
        if self.set_busy is not None:
            self.set_busy(True)
        return self.spawn(self._run(self._job, recipe, capture, settings, seed))

    def cancel(self) -> None:
        """Cancel the running job, if any (nothing of it is inserted)."""
        job = self._job
        if job is None or job.cancelled:
            return
        job.cancelled = True
        self._say("Cancelling…", False)
        if job.job_id is not None:
            self.spawn(self.client.cancel(job.job_id))

    async def _run(
        self,
        job: _RunningJob,
        recipe: Recipe,
        capture: Capture,
        settings: Settings,
        seed: int,
    ) -> list[str]:
        names: list[str] = []
        try:
            capture = await self.canvas.complete(capture, recipe.source)
            layers: dict[protocol.LayerRole, Buffer] = {}
            if recipe.captured_role is not None and capture.pixels is not None:
                layers[recipe.captured_role] = capture.pixels
            if capture.selection is not None and self._takes_masks():
                layers[protocol.LayerRole.MASK] = await _mask_image(
                    capture.selection, capture.region.extent
                )
            if job.cancelled:
                raise JobCancelled()
            job.job_id = new_job_id()
            split = recipe.method is protocol.Method.SPLIT_LAYERS
            lora = None if split else self.speed_lora()
            submit, images = _submit(
                job.job_id, recipe.method, settings, seed, capture.region, layers, lora
            )

            def on_progress(step: int, total: int, preview: tuple[int, int, bytes] | None) -> None:
                self._on_progress(job, step, total, preview)

            results = await self.client.run_job(submit, images, on_progress)
            if job.cancelled:
                raise JobCancelled()
            result = _first(results)
            result_seed = result.seed
            new_layers = _new_layers(recipe, result, settings, capture.anchor_name)
            item = TrayItem(
                dataclasses.replace(capture, pixels=None),
                tuple(new_layers),
                settings.prompt,
                result_seed,
            )
            if settings.insert_results:
                names = await self.canvas.insert(capture, new_layers)
                item = dataclasses.replace(item, inserted=True)
            self._keep(item)
            self.last_seed = result_seed
            if settings.random_seed:  # the seed box shows it: untick Random to reuse it
                self.update_settings(seed=result_seed)
            self.changed.emit("last_seed")
            if settings.insert_results:
                self._say(f"Inserted {_quoted(names)}.", False)
            else:
                self._say("The result is in the tray below: click it to insert it.", False)
        except JobCancelled as error:
            if job.cancelled:
                self._say(str(error), False)
            else:
                self._say(
                    "The backend cancelled the job (was it stopped?). Nothing was inserted.", True
                )
        except PluginError as error:
            self._refuse(error)
        except Exception:
            log.exception("the job failed unexpectedly")
            self._refuse(
                PluginError(
                    "Something unexpected went wrong; nothing was inserted. The plugin's "
                    "log has the details."
                )
            )
        finally:
            self._job = None
            self.running = False
            self.progress = None
            self._emit("running", "progress")
            if self.set_busy is not None:
                self.set_busy(False)
            self.refresh()
        return names

    def insert_from_tray(self, index: int) -> asyncio.Future[list[str]] | None:
        """Insert a tray item's layers where its job would have put them (they go
        next to the layer the job started from, in its document, at its region)."""
        if not 0 <= index < len(self.tray):
            return None
        return self.spawn(self._insert_from_tray(self.tray[index]))

    async def _insert_from_tray(self, item: TrayItem) -> list[str]:
        try:
            names = await self.canvas.insert(item.capture, item.layers)
        except PluginError as error:
            self._refuse(error)
            return []
        self.tray = [
            dataclasses.replace(each, inserted=True) if each is item else each for each in self.tray
        ]
        self.changed.emit("tray")
        self._say(f"Inserted {_quoted(names)}.", False)
        return names

    def _keep(self, item: TrayItem) -> None:
        """Put a result first in the tray; the oldest go past the count or the bytes."""
        kept = [item]
        total = item.size
        for each in self.tray:
            if len(kept) >= TRAY_ITEMS or total + each.size > TRAY_BYTES:
                break
            kept.append(each)
            total += each.size
        self.tray = kept
        self.changed.emit("tray")

    def _takes_masks(self) -> bool:
        """Whether the backend takes a selection mask (protocol 1.1 on); an older one
        gets none, and the selection's bounds are the work area, as they used to be."""
        welcome = self.client.welcome
        if welcome is not None and welcome.protocol >= MASK_SINCE:
            return True
        version = welcome.protocol if welcome is not None else None
        log.warning("the backend speaks protocol %s: the selection's shape is not sent", version)
        return False

    def _on_progress(
        self,
        job: _RunningJob,
        step: int,
        total: int,
        preview: tuple[int, int, bytes] | None,
    ) -> None:
        elapsed = self.clock() - job.started
        left = elapsed * (total - step) / step if step else None
        self.progress = Progress(step, total, left)
        self.changed.emit("progress")
        if preview is not None:
            self.preview = preview
            self.changed.emit("preview")

    def _say(self, text: str, is_error: bool, about: About = About.JOB) -> None:
        if is_error:
            log.warning("%s", text)
        self.message = Message(text, is_error, about)
        self.changed.emit("message")

    def _refuse(self, error: PluginError) -> None:
        """An error in the docker and, since the action may have come from a menu or a
        shortcut with the docker out of sight, on the canvas too."""
        self._say(str(error), True, _about(error))
        self.canvas.tell(str(error))

    def _emit(self, *names: str) -> None:
        for name in names:
            self.changed.emit(name)


def _new_layers(
    recipe: Recipe, result: JobResult, settings: Settings, source: str
) -> list[NewLayer]:
    """The layers a result inserts, named: a split's in one group named after its
    source, a matted layer saying so."""
    seed = result.seed
    layers = []
    for output in recipe.outputs:
        if output.role is protocol.LayerRole.LAYER:
            count = len(result.stack)
            if count != settings.split_layers:
                raise PluginError(
                    f"The backend returned {count} layers for a split into "
                    f"{settings.split_layers}; nothing was inserted."
                )
            group = split_group_name(source, seed)
            layers += [
                NewLayer(
                    split_layer_name(index, count, settings.prompt, source, seed),
                    output.placement,
                    pixels,
                    output.visible,
                    group,
                )
                for index, pixels in enumerate(result.stack, start=1)
            ]
            continue
        role: protocol.LayerRole | str = output.role
        if recipe.method in MATTED_METHODS.values():  # not LayerDiffuse's alpha: say so
            role = f"{output.role.value} (matted)"
        name = layer_name(settings.prompt, role, seed)
        layers.append(NewLayer(name, output.placement, result.layers[output.role], output.visible))
    return layers


def _doing(method: protocol.Method) -> str:
    """What the backend is doing while the job runs, in a word or three."""
    if method is protocol.Method.SPLIT_LAYERS:
        return "splitting"
    if method in MATTED_METHODS.values():
        return "generating on gray to matte"
    return "generating"


def _about(error: PluginError) -> About:
    if isinstance(error, NotConnected):
        return About.CONNECTION
    # (An empty work area is not: it is found when a job starts, and stays said.)
    if isinstance(error, (NoDocument, UnsupportedDocument, NoActiveLayer)):
        return About.DOCUMENT
    return About.JOB


def _submit(
    job_id: str,
    method: protocol.Method,
    settings: Settings,
    seed: int,
    region: Bounds,
    layers: dict[protocol.LayerRole, bytes],
    lora: protocol.LoRAInfo | None = None,
) -> tuple[protocol.Submit, dict[str, bytes]]:
    spec = protocol.METHOD_SPECS[method]
    layer_prompts = {
        role: text
        for role, text in (
            (protocol.LayerRole.FOREGROUND, settings.foreground_prompt),
            (protocol.LayerRole.BACKGROUND, settings.background_prompt),
            (protocol.LayerRole.BLENDED, settings.blended_prompt),
        )
        if role in spec.layer_prompts and text.strip()
    }
    split = method is protocol.Method.SPLIT_LAYERS
    request = protocol.GenerationParameters(
        method=method,
        prompt=settings.prompt,
        negative_prompt=settings.negative_prompt,
        layer_prompts=layer_prompts,
        width=region.width,
        height=region.height,
        fit_to_native=settings.fit_to_native,
        seed=seed,
        steps=settings.split_steps if split else settings.steps,
        cfg_scale=settings.split_cfg if split else settings.cfg_scale,
        sampler=protocol.Sampler(settings.sampler),
        weight=settings.weight,
        ending_step=settings.stop_at,
        hires=protocol.Hires(settings.hires),
        hires_strength=settings.hires_strength,
        lora=None if lora is None else lora.name,
        lora_weight=1.0 if lora is None else lora.weight,
        layers=settings.split_layers if split else 4,
        **_second_step(method, settings),
    )
    inputs = []
    images = {}
    roles = step_inputs(method)
    if protocol.LayerRole.MASK in layers:
        roles = (*roles, protocol.LayerRole.MASK)
    for role in roles:
        ref = protocol.ImageRef.raw(
            f"{job_id}/{role.value}", region.width, region.height, protocol.PixelFormat.BGRA8
        )
        inputs.append(protocol.LayerImage(role, ref))
        images[ref.id] = layers[role]
    submit = protocol.Submit(
        job=job_id,
        request=request,
        inputs=tuple(inputs),
        result_format=protocol.PixelFormat.BGRA8,
        previews=True,
    )
    return submit, images


async def _mask_image(selection: bytes, extent: Extent) -> memoryview:
    """The protocol's mask image (BGRA, the selection as alpha), made a strip per
    event-loop tick: a 4096² mask is 64 MiB."""
    buffer = lazy_buffer(extent.pixels * BYTES_PER_PIXEL)
    for index, (top, rows) in enumerate(strips(extent)):
        if index:
            await asyncio.sleep(0)
        start, end = top * extent.width, (top + rows) * extent.width
        buffer[start * BYTES_PER_PIXEL : end * BYTES_PER_PIXEL] = alpha_strip(selection, start, end)
    return buffer


def _second_step(method: protocol.Method, settings: Settings) -> dict[str, Any]:
    """The second step's fields of a two-step workflow; empty ones are left to the
    backend (its defaults are the original recipe's)."""
    if method not in protocol.SECOND_STEP_METHODS:
        return {}
    return {
        "second_prompt": settings.second_prompt.strip() or None,
        "second_negative_prompt": settings.second_negative_prompt.strip() or None,
        "second_sampler": protocol.Sampler(settings.second_sampler)
        if settings.second_sampler
        else None,
        "second_ending_step": float(settings.second_stop_at) if settings.second_stop_at else None,
    }


def _first(results: list[JobResult]) -> JobResult:
    if not results:
        raise PluginError("The backend finished the job without a result; nothing was inserted.")
    return results[0]


def _quoted(names: Sequence[str]) -> str:
    return ", ".join(f"“{name}”" for name in names)
