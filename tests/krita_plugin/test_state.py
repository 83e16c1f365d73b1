"""The job logic of `DockerState`: a fake canvas, the real client and a real demo backend.

The canvas is the only fake (Krita's side is tested in Krita, `in_krita/`): it records
what it was asked to read and insert. The SDXL recipes run against the SDXL demo
backend; a recording backend also checks how their two steps are wired.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from krita_plugin.client import ConnectionState, JobResult
from krita_plugin.errors import DocumentClosed, PluginError, UnsupportedDocument
from krita_plugin.geometry import Bounds
from krita_plugin.placement import Capture, InputSource, NewLayer, Placement
from krita_plugin.recipes import Action
from krita_plugin.state import (
    TRAY_ITEMS,
    About,
    DockerState,
    Message,
    Progress,
    applicable_settings,
    layer_name,
)
from protocol import (
    DEFAULT_LIMITS,
    METHOD_SPECS,
    PROTOCOL_VERSION,
    Capabilities,
    LayerRole,
    LoRAInfo,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    ResizeMode,
    Sampler,
    Submit,
    Welcome,
)

from .conftest import DemoServer, running_client, wait_for
from .test_settings import DictStore

TIMEOUT = 60.0
REGION = Bounds(4, 2, 40, 30)
SETTINGS = {
    "prompt": "a glass cup",
    "steps": "3",
    "fit_to_native": "false",
    "random_seed": "false",
    "seed": "11",
}


class FakeCanvas:
    """Records captures, inserts and floating messages (`told`); the errors make
    `capture` or `insert` raise, and `problem` is what `document_problem` says."""

    def __init__(
        self,
        capture_error: PluginError | None = None,
        insert_error: PluginError | None = None,
        problem: PluginError | None = None,
        selection: bytes | None = None,
    ) -> None:
        self.selection = selection
        self.capture_error = capture_error
        self.insert_error = insert_error
        self.problem = problem
        self.captures: list[InputSource] = []
        self.inserted: list[NewLayer] = []
        self.told: list[str] = []

    def document_problem(self) -> PluginError | None:
        return self.problem

    async def complete(self, capture: Capture, source: InputSource) -> Capture:
        return capture  # (read whole in `capture`)

    def tell(self, text: str) -> None:
        self.told.append(text)

    def capture(self, source: InputSource) -> Capture:
        if self.capture_error is not None:
            raise self.capture_error
        self.captures.append(source)
        pixels = None
        if source is not InputSource.NOTHING:
            pixels = bytes((30, 60, 90, 255)) * (REGION.width * REGION.height)
        return Capture("document", "anchor", "User Paint", REGION, pixels, self.selection)

    async def insert(self, capture: Capture, layers: Sequence[NewLayer]) -> list[str]:
        if self.insert_error is not None:
            raise self.insert_error
        self.inserted.extend(layers)
        return [layer.name for layer in layers]


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), TIMEOUT * 2))


def new_state(client: Any, canvas: FakeCanvas, **settings: str) -> DockerState:
    busy: list[bool] = []
    state = DockerState(
        DictStore({**SETTINGS, **settings}), canvas, client, asyncio.ensure_future, busy.append
    )
    state.busy_calls = busy  # type: ignore[attr-defined]
    state.events = []  # type: ignore[attr-defined]
    state.changed.connect(state.events.append)  # type: ignore[attr-defined]
    return state


def layer_size(layer: NewLayer) -> int:
    return len(layer.pixels) // 4


@pytest.mark.parametrize(
    ("action", "source", "expected"),
    [
        (Action.TRANSPARENT_LAYER, InputSource.NOTHING, [("foreground", Placement.ABOVE)]),
        (Action.BACKGROUND, InputSource.ACTIVE_LAYER, [("background", Placement.BELOW)]),
        (Action.FOREGROUND, InputSource.SCENE, [("foreground", Placement.ABOVE)]),
        (Action.TOGETHER, InputSource.NOTHING,
         [("background", Placement.ABOVE), ("foreground", Placement.ABOVE)]),
    ],
)  # fmt: skip
def test_each_action_inserts_its_layers_where_they_belong(
    demo_server: DemoServer,
    action: Action,
    source: InputSource,
    expected: list[tuple[str, Placement]],
) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            task = state.generate(action)
            assert task is not None
            assert state.running
            names = await task
            assert canvas.captures == [source]
            assert [(layer.name, layer.placement) for layer in canvas.inserted] == [
                (f"{role} · seed 11 · a glass cup", placement) for role, placement in expected
            ]
            assert names == [layer.name for layer in canvas.inserted]
            assert all(layer.visible for layer in canvas.inserted)
            assert all(layer_size(layer) == 40 * 30 for layer in canvas.inserted)
            assert state.message == Message(f"Inserted {', '.join(f'“{n}”' for n in names)}.")
            assert not state.running and state.progress is None
            assert state.preview is not None
            assert state.busy_calls == [True, False]  # type: ignore[attr-defined]
            events = state.events  # type: ignore[attr-defined]
            assert events.count("progress") >= 3 and "preview" in events

    run(scenario)


def test_the_blended_image_is_also_inserted_hidden_when_asked(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas, insert_blended="true")
            await state.generate(Action.BACKGROUND)
            assert [(layer.name, layer.placement, layer.visible) for layer in canvas.inserted] == [
                ("background · seed 11 · a glass cup", Placement.BELOW, True),
                ("blended · seed 11 · a glass cup", Placement.BELOW, False),
            ]

    run(scenario)


def test_a_random_seed_is_picked_and_named(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas, random_seed="true")
            await state.generate(Action.TRANSPARENT_LAYER)
            await state.generate(Action.TRANSPARENT_LAYER)
            first, second = (layer.name for layer in canvas.inserted)
            assert first != second
            assert first.startswith("foreground · seed ") and first.endswith(" · a glass cup")
            # The seed box shows the last seed used: unticking Random reuses it.
            used = int(second.split(" · ")[1].removeprefix("seed "))
            assert state.last_seed == used == state.settings.seed
            assert state.settings.random_seed
            state.reuse_seed()
            assert (state.settings.seed, state.settings.random_seed) == (used, False)
            await state.generate(Action.TRANSPARENT_LAYER)
            assert canvas.inserted[-1].name == second

    run(scenario)


def test_cancel_inserts_nothing(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas, steps="150")
            task = state.generate(Action.TRANSPARENT_LAYER)
            assert task is not None
            await wait_for(lambda: state.progress is not None and state.progress.step > 0)
            state.cancel()
            assert state.message == Message("Cancelling…")
            assert await task == []
            assert canvas.inserted == []
            assert state.message == Message("Cancelled. Nothing was inserted.")
            assert not state.running

    run(scenario)


def test_a_second_job_while_one_runs_is_refused(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            task = state.generate(Action.TRANSPARENT_LAYER)
            assert state.generate(Action.BACKGROUND) is None
            assert state.message == Message(
                "A generation is already running. Wait for it, or press Cancel.", True
            )
            assert task is not None
            await task
            assert len(canvas.inserted) == 1

    run(scenario)


def test_a_document_the_canvas_refuses_starts_nothing(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas(problem=UnsupportedDocument("GRAYA", "U8"))
            state = new_state(client, canvas)
            # Known before any trigger: the actions and the button say why they are off.
            refusal = state.refusals[Action.TRANSPARENT_LAYER]
            assert refusal is not None and "this one is GRAYA U8" in refusal
            # Triggered anyway (a shortcut pressed before the refresh): nothing starts,
            # and the sentence also goes to the canvas.
            assert state.generate(Action.TRANSPARENT_LAYER) is None
            assert state.message.is_error and state.message.about is About.DOCUMENT
            assert "8-bit RGBA documents, and this one is GRAYA U8" in state.message.text
            assert canvas.told == [state.message.text]
            assert not state.running and canvas.captures == []
            assert state.busy_calls == []  # type: ignore[attr-defined]
            # The painter converts the document: the message goes, the actions come back.
            canvas.problem = None
            state.refresh()
            assert state.message == Message()
            # (all but the split, which needs a Qwen-Image-Layered backend)
            assert [action for action, refusal in state.refusals.items() if refusal] == [
                Action.SPLIT_LAYERS
            ]
            assert "refusals" in state.events  # type: ignore[attr-defined]

    run(scenario)


def test_the_backends_refusal_is_the_message_and_nothing_is_inserted(
    demo_server: DemoServer,
) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            state.update_settings(cfg_scale=31.0)  # the backend allows 1..30
            await state.generate(Action.TRANSPARENT_LAYER)
            assert canvas.inserted == []
            assert state.message.is_error
            assert state.message.text.startswith("The backend can't run this with these settings.")

    run(scenario)


def test_a_closed_document_is_the_message(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            state = new_state(client, FakeCanvas(insert_error=DocumentClosed()))
            await state.generate(Action.TRANSPARENT_LAYER)
            assert state.message == Message(
                "The document was closed before the result arrived; nothing was inserted.", True
            )

    run(scenario)


def test_without_a_connection_the_message_says_why() -> None:
    async def scenario() -> None:
        async with running_client("ws://127.0.0.1:9") as client:
            state = new_state(client, FakeCanvas())
            await wait_for(lambda: "Can't reach" in state.connection_text)
            assert state.connection is ConnectionState.DISCONNECTED
            assert "connection" in state.events  # type: ignore[attr-defined]
            assert state.generate(Action.TRANSPARENT_LAYER) is None
            assert state.message == Message(state.connection_text, True, About.CONNECTION)
            assert state.refusals[Action.BACKGROUND] == state.connection_text

    run(scenario)


def test_sdxl_chosen_against_an_sd15_backend_is_explained(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            state = new_state(client, FakeCanvas(), family="sdxl")
            assert state.generate(Action.TRANSPARENT_LAYER) is None
            assert state.message.text.startswith(
                "The backend does not offer sdxl_transparent_attn, which “Transparent layer "
                "from the prompt” needs with SDXL"
            )

    run(scenario)


def test_settings_are_saved_and_a_new_address_reconnects(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client("ws://127.0.0.1:9") as client:
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            state.update_settings(server_url=demo_server.url, steps=7)
            assert state.store.values["server_url"] == demo_server.url  # type: ignore[attr-defined]
            assert state.store.values["steps"] == "7"  # type: ignore[attr-defined]
            await wait_for(lambda: state.connection is ConnectionState.CONNECTED)
            assert state.connection_text.startswith("Connected to 127.0.0.1")

    run(scenario)


@pytest.mark.parametrize(
    ("action", "source", "expected"),
    [
        (Action.TRANSPARENT_LAYER, InputSource.NOTHING, [("foreground", Placement.ABOVE)]),
        (Action.BACKGROUND, InputSource.ACTIVE_LAYER,
         [("background", Placement.BELOW), ("blended", Placement.BELOW)]),
        (Action.FOREGROUND, InputSource.SCENE,
         [("blended", Placement.ABOVE), ("foreground", Placement.ABOVE)]),
    ],
)  # fmt: skip
def test_an_sdxl_backend_runs_the_sdxl_recipes(
    demo_sdxl_server: DemoServer,
    action: Action,
    source: InputSource,
    expected: list[tuple[str, Placement]],
) -> None:
    async def scenario() -> None:
        async with running_client(demo_sdxl_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas, insert_blended="true")
            await state.generate(action)
            assert not state.message.is_error, state.message
            assert canvas.captures == [source]
            assert [(layer.name, layer.placement) for layer in canvas.inserted] == [
                (f"{role} · seed 11 · a glass cup", placement) for role, placement in expected
            ]
            assert all(layer_size(layer) == 40 * 30 for layer in canvas.inserted)

    run(scenario)


def test_together_on_an_sdxl_backend_is_explained(demo_sdxl_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client(demo_sdxl_server.url) as client:
            await client.wait_connected(TIMEOUT)
            state = new_state(client, FakeCanvas())
            assert state.generate(Action.TOGETHER) is None
            assert state.message.is_error
            assert state.message.text.startswith(
                "Generating foreground and background together needs an SD1.5 model"
            )

    run(scenario)


class RecordingBackend:
    """A connected SDXL backend that records submits and answers each with its outputs."""

    def __init__(self) -> None:
        self.state = ConnectionState.CONNECTED
        self.status = "Connected."
        self.on_state = None
        self.submits: list[tuple[Submit, dict[str, bytes]]] = []
        self.welcome = Welcome(
            PROTOCOL_VERSION,
            "recording",
            "session",
            ModelInfo("sdxl-base", ModelFamily.SDXL, False),
            Capabilities(
                tuple(method for method in Method if method.value.startswith("sdxl")),
                (ModelFamily.SDXL,),
                tuple(Sampler),
                tuple(ResizeMode),
                tuple(PixelFormat),
            ),
            DEFAULT_LIMITS,
        )

    async def run_job(
        self, submit: Submit, images: dict[str, bytes], on_progress: Any = None
    ) -> list[JobResult]:
        self.submits.append((submit, images))
        size = submit.request.width * submit.request.height * 4
        outputs = METHOD_SPECS[submit.request.method].outputs
        index = len(self.submits)
        return [JobResult(0, submit.request.seed, {r: bytes([index]) * size for r in outputs})]


@pytest.mark.parametrize(
    ("action", "method", "captured", "role", "placement"),
    [
        (Action.BACKGROUND, "sdxl_fg2bg", LayerRole.FOREGROUND, "background", Placement.BELOW),
        (Action.FOREGROUND, "sdxl_bg2fg", LayerRole.BACKGROUND, "foreground", Placement.ABOVE),
    ],
)  # fmt: skip
def test_sdxl_layer_actions_run_the_two_step_workflow_with_its_second_step(
    action: Action, method: str, captured: LayerRole, role: str, placement: Placement
) -> None:
    """One job of the backend's one-click workflow; the second step's settings travel
    only when the painter set them (the backend's defaults are the original recipe's)."""

    async def scenario() -> None:
        backend = RecordingBackend()
        canvas = FakeCanvas()
        state = new_state(backend, canvas)
        await state.generate(action)
        [(submit, images)] = backend.submits
        assert submit.request.method.value == method
        assert [layer.role for layer in submit.inputs] == [captured]
        assert images[submit.inputs[0].image.id] == canvas_pixels()
        request = submit.request
        assert (request.second_prompt, request.second_negative_prompt) == (None, None)
        assert (request.second_sampler, request.second_ending_step) == (None, None)
        assert [(layer.name, layer.placement) for layer in canvas.inserted] == [
            (f"{role} · seed 11 · a glass cup", placement)
        ]
        assert canvas.inserted[0].pixels == bytes([1]) * (40 * 30 * 4)
        state.update_settings(
            second_prompt="room, high quality", second_sampler="euler_a", second_stop_at="0.5"
        )
        await state.generate(action)
        request = backend.submits[-1][0].request
        assert request.second_prompt == "room, high quality"
        assert request.second_negative_prompt is None  # empty: the same as step 1
        assert (request.second_sampler, request.second_ending_step) == (Sampler.EULER_A, 0.5)
        # An SD1.5 method has no second step: nothing of it is sent.
        assert recipe_fields_of_sd15() == (None, None, None, None)

    run(scenario)


def recipe_fields_of_sd15() -> tuple[Any, ...]:
    request = _submit_of(Method.SD15_FG_TO_BG).request
    return (
        request.second_prompt,
        request.second_negative_prompt,
        request.second_sampler,
        request.second_ending_step,
    )


def _submit_of(method: Method) -> Submit:
    from krita_plugin.settings import Settings
    from krita_plugin.state import _submit

    settings = Settings(second_prompt="x", second_sampler="unipc", second_stop_at="1")
    layers = {LayerRole.FOREGROUND: canvas_pixels()}
    return _submit("job", method, settings, 1, REGION, layers)[0]


def canvas_pixels() -> bytes:
    return bytes((30, 60, 90, 255)) * (REGION.width * REGION.height)


def test_layer_names_start_with_role_and_seed_then_the_prompt() -> None:
    assert layer_name("a glass cup", LayerRole.FOREGROUND, 7) == "foreground · seed 7 · a glass cup"
    assert layer_name("", LayerRole.BACKGROUND, 1) == "background · seed 1 · LayerDiffuse"
    long = layer_name("word " * 30 + "\nnext line", LayerRole.BLENDED, 3)
    assert long.startswith("blended · seed 3 · word word") and long.endswith("…")
    assert "\n" not in long and len(long) < 80


class SteppingBackend(RecordingBackend):
    """The recording backend, reporting six steps per job while a fake clock ticks."""

    def __init__(self, clock: list[float]) -> None:
        super().__init__()
        self.clock = clock
        self.seen: list[Any] = []

    async def run_job(
        self, submit: Submit, images: dict[str, bytes], on_progress: Any = None
    ) -> list[JobResult]:
        for step in range(1, 7):  # the one-click workflow counts both steps' three
            self.clock[0] += 2.0  # two seconds per step
            on_progress(step, 6, None)
            self.seen.append(self.state_under_test.progress)  # type: ignore[attr-defined]
        return await super().run_job(submit, images, on_progress)


def test_progress_counts_the_backends_steps_and_the_time_left() -> None:
    async def scenario() -> None:
        clock = [100.0]
        backend = SteppingBackend(clock)
        state = DockerState(
            DictStore({**SETTINGS, "steps": "3"}),
            FakeCanvas(),
            backend,  # type: ignore[arg-type]
            asyncio.ensure_future,
            clock=lambda: clock[0],
        )
        backend.state_under_test = state  # type: ignore[attr-defined]
        task = state.generate(Action.BACKGROUND)  # SDXL: two steps of three in one job
        assert state.progress == Progress(0, 3)  # (until the backend says how many)
        assert state.progress.text == "Step 0/3"
        await task
        assert [(p.step, p.total) for p in backend.seen] == [(i, 6) for i in range(1, 7)]
        assert [p.seconds_left for p in backend.seen] == [10.0, 8.0, 6.0, 4.0, 2.0, 0.0]
        assert backend.seen[1].text == "Step 2/6 · 8 s left"
        assert state.progress is None  # between jobs the bar is empty
        assert Progress(1, 100, 400.0).text == "Step 1/100 · 7 min left"

    run(scenario)


def test_the_sdxl_transparent_model_is_the_painters_choice() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        state = new_state(backend, FakeCanvas())
        await state.generate(Action.TRANSPARENT_LAYER)
        state.update_settings(sdxl_transparent_model="sdxl_transparent_conv")
        await state.generate(Action.TRANSPARENT_LAYER)
        assert [s.request.method for s, _ in backend.submits] == [
            Method.SDXL_TRANSPARENT_ATTN,
            Method.SDXL_TRANSPARENT_CONV,
        ]

    run(scenario)


SECOND_STEP = {"second_prompt", "second_negative_prompt", "second_sampler", "second_stop_at"}
ALWAYS = {"negative_prompt", "speed", "steps", "cfg_scale", "seed", "random_seed", "sampler",
          "stop_at", "fit_to_native", "hires", "hires_strength"}  # fmt: skip


@pytest.mark.parametrize(
    ("action", "family", "extra"),
    [
        (Action.TRANSPARENT_LAYER, ModelFamily.SD15, set()),
        (Action.TRANSPARENT_LAYER, ModelFamily.SDXL, {"weight", "sdxl_transparent_model"}),
        (Action.BACKGROUND, ModelFamily.SD15,
         {"background_prompt", "blended_prompt", "insert_blended"}),
        (Action.BACKGROUND, ModelFamily.SDXL, {"weight", "insert_blended", *SECOND_STEP}),
        (Action.FOREGROUND, ModelFamily.SDXL, {"weight", "insert_blended", *SECOND_STEP}),
        (Action.FOREGROUND, ModelFamily.SD15,
         {"foreground_prompt", "blended_prompt", "insert_blended"}),
        (Action.TOGETHER, ModelFamily.SD15,
         {"foreground_prompt", "background_prompt", "blended_prompt", "insert_blended"}),
        (Action.TOGETHER, ModelFamily.SDXL, set()),  # no SDXL method: only the common ones
        (Action.TRANSPARENT_LAYER, None, {"weight", "sdxl_transparent_model"}),
    ],
)  # fmt: skip
def test_only_the_settings_that_apply_are_offered(
    action: Action, family: ModelFamily | None, extra: set[str]
) -> None:
    assert applicable_settings(action, family) == ALWAYS | extra


def test_the_connection_in_a_word_follows_the_backend() -> None:
    backend = RecordingBackend()
    state = new_state(backend, FakeCanvas())
    assert state.connection_summary() == "SDXL"
    assert state.known_family() is ModelFamily.SDXL
    backend.state = ConnectionState.DISCONNECTED
    state.connection = ConnectionState.DISCONNECTED
    assert state.connection_summary() == "Offline"


def test_a_connection_message_goes_when_the_connection_comes(demo_server: DemoServer) -> None:
    async def scenario() -> None:
        async with running_client("ws://127.0.0.1:9") as client:
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            await wait_for(lambda: "Can't reach" in state.connection_text)
            assert state.generate(Action.TRANSPARENT_LAYER) is None
            assert state.message.about is About.CONNECTION and canvas.told
            state.update_settings(server_url=demo_server.url)
            await wait_for(lambda: state.connection is ConnectionState.CONNECTED)
            assert state.message == Message()  # no red "Can't reach" beside a green dot
            assert state.refusals[Action.TRANSPARENT_LAYER] is None

    run(scenario)


def test_what_cannot_run_on_the_family_is_refused_before_a_trigger() -> None:
    backend = RecordingBackend()  # SDXL
    state = new_state(backend, FakeCanvas())
    together = state.refusals[Action.TOGETHER]
    assert together is not None and "needs an SD1.5 model" in together
    assert state.refusals[Action.BACKGROUND] is None
    state.update_settings(family="sd15")  # SD1.5 chosen against an SDXL backend
    refusal = state.refusals[Action.TRANSPARENT_LAYER]
    assert refusal is not None and "does not offer sd15_transparent" in refusal


def test_with_insert_results_off_a_result_waits_in_the_tray_until_picked() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        canvas = FakeCanvas()
        state = new_state(backend, canvas, insert_results="false")
        await state.generate(Action.BACKGROUND)
        assert canvas.inserted == []
        [item] = state.tray
        assert not item.inserted and item.seed == 11 and item.prompt == "a glass cup"
        assert item.capture.pixels is None  # the tray keeps no input pixels
        assert [layer.name for layer in item.layers] == ["background · seed 11 · a glass cup"]
        assert "tray" in state.message.text
        names = await state.insert_from_tray(0)
        assert names == ["background · seed 11 · a glass cup"]
        assert canvas.inserted == list(item.layers)
        assert state.tray[0].inserted and state.message.text.startswith("Inserted")
        assert state.insert_from_tray(5) is None  # no such item: nothing happens

    run(scenario)


def test_the_tray_keeps_the_newest_within_its_count_and_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        state = new_state(backend, FakeCanvas())
        for _ in range(TRAY_ITEMS + 2):
            await state.generate(Action.TRANSPARENT_LAYER)
        assert len(state.tray) == TRAY_ITEMS and all(item.inserted for item in state.tray)
        newest = state.tray[0]
        one = newest.size  # 40 × 30 × 4 bytes
        monkeypatch.setattr("krita_plugin.state.TRAY_BYTES", one * 3)
        await state.generate(Action.TRANSPARENT_LAYER)
        assert len(state.tray) == 3 and state.tray[1] is newest

    run(scenario)


def ellipse_selection() -> bytes:
    """REGION's 40 × 30 pixels: 255 inside the inscribed ellipse, 0 outside."""
    width, height = REGION.width, REGION.height
    return bytes(
        255 if ((x + 0.5 - width / 2) / (width / 2)) ** 2
        + ((y + 0.5 - height / 2) / (height / 2)) ** 2 <= 1 else 0
        for y in range(height)
        for x in range(width)
    )  # fmt: skip


def test_a_shaped_selection_travels_as_a_mask_and_shapes_the_layer(
    demo_server: DemoServer,
) -> None:
    """Through the real demo backend: the ellipse goes as the `mask` input (BGRA, the
    selection as alpha), and the layer that comes back is clear outside it."""

    async def scenario() -> None:
        async with running_client(demo_server.url) as client:
            await client.wait_connected(TIMEOUT)
            selection = ellipse_selection()
            sent: list[Submit] = []
            run_job = client.run_job

            async def recording(submit: Submit, images: Any, on_progress: Any = None) -> Any:
                sent.append(submit)
                mask = images.get(f"{submit.job}/mask")
                assert mask is not None and bytes(memoryview(mask)[3::4]) == selection
                assert bytes(memoryview(mask)[0::4]) == bytes(len(selection))
                return await run_job(submit, images, on_progress)

            client.run_job = recording  # type: ignore[method-assign]
            canvas = FakeCanvas(selection=selection)
            state = new_state(client, canvas)
            await state.generate(Action.TRANSPARENT_LAYER)
            assert [layer.role for layer in sent[0].inputs] == [LayerRole.MASK]
            [layer] = canvas.inserted
            alpha = bytes(memoryview(layer.pixels)[3::4])
            outside = [a for a, s in zip(alpha, selection, strict=True) if s == 0]
            assert outside and set(outside) == {0}
            assert any(a for a, s in zip(alpha, selection, strict=True) if s == 255)

    run(scenario)


def test_a_backend_before_protocol_1_1_gets_no_mask() -> None:
    async def scenario() -> None:
        backend = RecordingBackend()
        backend.welcome = dataclasses.replace(backend.welcome, protocol=(1, 0))
        state = new_state(backend, FakeCanvas(selection=ellipse_selection()))
        await state.generate(Action.BACKGROUND)
        [(submit, images)] = backend.submits
        assert [layer.role for layer in submit.inputs] == [LayerRole.FOREGROUND]
        assert len(images) == 1

    run(scenario)


LIGHTNING = LoRAInfo(
    "sdxl_lightning_4step", ModelFamily.SDXL, "SDXL-Lightning 4 steps",
    Sampler.EULER_SGM_UNIFORM, 4, 1.0, 1.0,
)  # fmt: skip


def test_a_speed_lora_brings_its_settings_and_travels_with_the_job() -> None:
    """Protocol 1.2's few-step mode: picking a LoRA the backend offers sets its steps,
    sampler and CFG; the job names it; full quality brings the original's back."""

    async def scenario() -> None:
        backend = RecordingBackend()
        capabilities = dataclasses.replace(
            backend.welcome.capabilities,
            loras=(LIGHTNING, LoRAInfo("sd15_only", ModelFamily.SD15, "SD1.5 only")),
        )
        backend.welcome = dataclasses.replace(backend.welcome, capabilities=capabilities)
        state = new_state(backend, FakeCanvas())
        assert state.offered_loras() == (LIGHTNING,)  # the family's only
        state.choose_speed("sdxl_lightning_4step")
        settings = state.settings
        assert (settings.speed, settings.steps, settings.sampler, settings.cfg_scale) == (
            "sdxl_lightning_4step", 4, "euler_sgm_uniform", 1.0,
        )  # fmt: skip
        await state.generate(Action.TRANSPARENT_LAYER)
        state.choose_speed("")
        await state.generate(Action.TRANSPARENT_LAYER)
        fast, full = (submit.request for submit, _ in backend.submits)
        assert (fast.lora, fast.lora_weight, fast.steps, fast.sampler) == (
            "sdxl_lightning_4step", 1.0, 4, Sampler.EULER_SGM_UNIFORM,
        )  # fmt: skip
        assert (full.lora, full.steps, full.sampler, full.cfg_scale) == (
            None, 20, Sampler.DPMPP_2M_KARRAS, 7.0,
        )  # fmt: skip

    run(scenario)


def test_a_speed_lora_the_backend_does_not_offer_is_refused_before_a_trigger() -> None:
    """A 1.1 backend (no LoRAs), or one whose family lacks it: Generate is off, and the
    reason names the LoRA and the way out; nothing is sent."""
    backend = RecordingBackend()  # offers no LoRA
    state = new_state(backend, FakeCanvas(), speed="sdxl_lightning_4step")
    refusal = state.refusals[Action.TRANSPARENT_LAYER]
    assert refusal == (
        "The backend does not offer the few-step LoRA “sdxl_lightning_4step” for this "
        "model. Choose Full quality (or another) in Settings ▸ Speed."
    )
    assert state.generate(Action.TRANSPARENT_LAYER) is None
    assert backend.submits == []


def test_on_flux_the_settings_are_its_own() -> None:
    """No negative prompt, sampler, speed, Stop At or second pass: FLUX.1-dev has none."""
    assert applicable_settings(Action.TRANSPARENT_LAYER, ModelFamily.FLUX) == {
        "steps", "cfg_scale", "seed", "random_seed", "fit_to_native",
    }  # fmt: skip
