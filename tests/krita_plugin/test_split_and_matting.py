"""Split into Layers and the matting fallback (protocol 1.3), the plugin's side.

Recipes, names and settings are pure; the jobs run through `DockerState` with the fake
canvas of `test_state`, against the real demo backends (`--demo qwen_layered`, `--demo
sdxl-illustrious`) and against recording backends that check what travels.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from krita_plugin.client import ConnectionState, JobResult
from krita_plugin.errors import MethodUnavailable, NoDocument
from krita_plugin.placement import InputSource, Placement
from krita_plugin.recipes import Action, recipe_for
from krita_plugin.state import (
    SPLIT_SETTINGS,
    applicable_settings,
    split_group_name,
    split_layer_name,
)
from protocol import (
    DEFAULT_LIMITS,
    METHOD_SPECS,
    PROTOCOL_VERSION,
    Capabilities,
    LayerRole,
    Method,
    ModelFamily,
    ModelInfo,
    PixelFormat,
    ResizeMode,
    Sampler,
    Submit,
    Welcome,
)

from .conftest import DemoServer, running_client
from .test_state import REGION, TIMEOUT, FakeCanvas, canvas_pixels, new_state, run

QWEN = ModelFamily.QWEN_LAYERED
WARNING = "LayerDiffuse is known to fail on Illustrious-XL checkpoints like this one."


class Backend:
    """A connected backend of one family that records submits and answers each: a
    split with `answer_layers` layers (None: as many as asked), else the method's
    outputs."""

    def __init__(
        self,
        family: ModelFamily,
        methods: tuple[Method, ...],
        warning: str | None = None,
        answer_layers: int | None = None,
    ) -> None:
        self.state = ConnectionState.CONNECTED
        self.status = "Connected."
        self.on_state: Any = None
        self.answer_layers = answer_layers
        self.submits: list[tuple[Submit, dict[str, bytes]]] = []
        self.welcome = Welcome(
            PROTOCOL_VERSION,
            "recording",
            "session",
            ModelInfo("model", family, False, warning),
            Capabilities(methods, (family,), tuple(Sampler), tuple(ResizeMode), tuple(PixelFormat)),
            DEFAULT_LIMITS,
        )

    def connect(self) -> None:
        """What the client tells the state when the backend's welcome arrives."""
        self.on_state(ConnectionState.CONNECTED, "Connected.")

    async def run_job(
        self, submit: Submit, images: dict[str, bytes], on_progress: Any = None
    ) -> list[JobResult]:
        self.submits.append((submit, images))
        request = submit.request
        size = request.width * request.height * 4
        if request.method is Method.SPLIT_LAYERS:
            count = request.layers if self.answer_layers is None else self.answer_layers
            stack = tuple(bytes([index]) * size for index in range(count))
            return [JobResult(0, request.seed, {}, stack)]
        outputs = METHOD_SPECS[request.method].outputs
        return [JobResult(0, request.seed, {role: bytes(size) for role in outputs})]


def qwen_backend(**kwargs: Any) -> Backend:
    return Backend(QWEN, (Method.SPLIT_LAYERS,), **kwargs)


def illustrious_backend(**kwargs: Any) -> Backend:
    methods = (Method.SDXL_TRANSPARENT_ATTN, Method.SDXL_FG_TO_BG, Method.SDXL_MATTED)
    return Backend(ModelFamily.SDXL, methods, warning=WARNING, **kwargs)


# Recipes, names, settings ----------------------------------------------------------------------


def test_a_split_reads_the_active_layer_and_inserts_its_layers_above_it() -> None:
    recipe = recipe_for(Action.SPLIT_LAYERS, QWEN)
    assert (recipe.source, recipe.captured_role, recipe.method) == (
        InputSource.ACTIVE_LAYER, LayerRole.LAYER, Method.SPLIT_LAYERS,
    )  # fmt: skip
    assert [(out.role, out.placement) for out in recipe.outputs] == [
        (LayerRole.LAYER, Placement.ABOVE)
    ]


@pytest.mark.parametrize("family", [ModelFamily.SD15, ModelFamily.SDXL, ModelFamily.FLUX])
def test_a_split_needs_a_qwen_image_layered_backend(family: ModelFamily) -> None:
    with pytest.raises(MethodUnavailable, match="needs a Qwen-Image-Layered backend"):
        recipe_for(Action.SPLIT_LAYERS, family)


@pytest.mark.parametrize(
    "action", [Action.TRANSPARENT_LAYER, Action.BACKGROUND, Action.FOREGROUND, Action.TOGETHER]
)
def test_qwen_image_layered_runs_nothing_but_the_split(action: Action) -> None:
    with pytest.raises(MethodUnavailable, match="Use Split into layers"):
        recipe_for(action, QWEN)


def test_the_matted_fallback_replaces_only_the_transparent_layers_method() -> None:
    for family, method in ((ModelFamily.SD15, Method.SD15_MATTED), (ModelFamily.SDXL,
                           Method.SDXL_MATTED)):  # fmt: skip
        recipe = recipe_for(Action.TRANSPARENT_LAYER, family, matted=True)
        assert (recipe.method, recipe.source) == (method, InputSource.NOTHING)
        assert [out.role for out in recipe.outputs] == [LayerRole.FOREGROUND]
    # The layer actions have no matted twin: they stay LayerDiffuse's.
    assert recipe_for(Action.BACKGROUND, ModelFamily.SDXL, matted=True).method is (
        Method.SDXL_FG_TO_BG
    )
    assert recipe_for(Action.TRANSPARENT_LAYER, ModelFamily.FLUX, matted=True).method is (
        Method.FLUX_TRANSPARENT
    )


def test_a_split_shows_its_own_settings_and_only_them() -> None:
    assert applicable_settings(Action.SPLIT_LAYERS, QWEN) == SPLIT_SETTINGS
    assert applicable_settings(Action.SPLIT_LAYERS, None) == SPLIT_SETTINGS
    # On Qwen-Image-Layered nothing else runs, whatever the method says.
    assert applicable_settings(Action.TRANSPARENT_LAYER, QWEN) == SPLIT_SETTINGS
    assert {"split_layers", "split_steps", "split_cfg"} <= SPLIT_SETTINGS
    assert not SPLIT_SETTINGS & {"negative_prompt", "sampler", "steps", "cfg_scale", "speed"}
    for family in (ModelFamily.SD15, ModelFamily.SDXL, ModelFamily.FLUX, None):
        assert "split_layers" not in applicable_settings(Action.TRANSPARENT_LAYER, family)


def test_split_names_say_what_was_split_and_where_each_layer_sits() -> None:
    assert split_group_name("User Paint", 7) == "Split: User Paint · seed 7"
    assert split_group_name("", 7) == "Split: layer · seed 7"
    assert split_layer_name(1, 3, "a cat", "User Paint", 7) == "Layer 1/3 · seed 7 · a cat"
    # No prompt (the model captions the picture): the source's name instead.
    assert split_layer_name(3, 3, "  ", "User Paint", 7) == "Layer 3/3 · seed 7 · User Paint"
    long = split_group_name("x" * 80, 1)
    assert long.startswith("Split: xxx") and "…" in long and len(long) < 70


# Splitting ---------------------------------------------------------------------------------


def test_a_split_against_the_qwen_demo_inserts_its_layers_in_one_new_group(
    demo_qwen_server: DemoServer,
) -> None:
    """Generate follows the backend (Split), and the result is N region-sized layers,
    bottom first, all in one group named after the source layer."""

    async def scenario() -> None:
        async with running_client(demo_qwen_server.url) as client:
            await client.wait_connected(TIMEOUT)
            canvas = FakeCanvas()
            state = new_state(client, canvas, split_layers="3", split_steps="2")
            assert state.settings.method == Action.SPLIT_LAYERS.value  # followed the backend
            assert state.refusals[Action.SPLIT_LAYERS] is None
            assert "Qwen-Image-Layered" in (state.refusals[Action.TRANSPARENT_LAYER] or "")
            names = await state.generate(Action.SPLIT_LAYERS)
            assert canvas.captures == [InputSource.ACTIVE_LAYER]
            group = "Split: User Paint · seed 11"
            assert [(layer.name, layer.placement, layer.group) for layer in canvas.inserted] == [
                (f"Layer {index}/3 · seed 11 · a glass cup", Placement.ABOVE, group)
                for index in (1, 2, 3)
            ]
            assert all(
                len(layer.pixels) == REGION.width * REGION.height * 4 for layer in canvas.inserted
            )
            assert names == [layer.name for layer in canvas.inserted]  # (the fake's names)
            assert state.message.text.startswith("Inserted") and not state.message.is_error
            assert state.progress is None and state.last_seed == 11

    run(scenario)


def test_a_split_sends_the_layer_its_count_and_the_cards_settings() -> None:
    async def scenario() -> None:
        backend = qwen_backend()
        canvas = FakeCanvas(selection=bytes([255, 0]) * (REGION.width * REGION.height // 2))
        state = new_state(backend, canvas, split_layers="5", speed="sdxl_lightning_4step")
        assert state.refusals[Action.SPLIT_LAYERS] is None  # a split takes no LoRA
        await state.generate(Action.SPLIT_LAYERS)
        [(submit, images)] = backend.submits
        request = submit.request
        assert (request.method, request.layers, request.steps, request.cfg_scale) == (
            Method.SPLIT_LAYERS, 5, 50, 4.0,
        )  # fmt: skip
        assert request.lora is None
        assert [layer.role for layer in submit.inputs] == [LayerRole.LAYER, LayerRole.MASK]
        assert images[submit.inputs[0].image.id] == canvas_pixels()
        assert [layer.name.split(" · ")[0] for layer in canvas.inserted] == [
            f"Layer {index}/5" for index in range(1, 6)
        ]
        # Bottom first, as the backend ordered them.
        assert [layer.pixels[0] for layer in canvas.inserted] == [0, 1, 2, 3, 4]

    run(scenario)


def test_a_split_with_the_wrong_count_inserts_nothing() -> None:
    async def scenario() -> None:
        backend = qwen_backend(answer_layers=2)
        canvas = FakeCanvas()
        state = new_state(backend, canvas, split_layers="3")
        assert await state.generate(Action.SPLIT_LAYERS) == []
        assert canvas.inserted == []
        assert state.message.is_error and "returned 2 layers" in state.message.text
        assert canvas.told == [state.message.text]

    run(scenario)


def test_a_split_on_another_backend_is_refused_saying_what_it_needs() -> None:
    backend = Backend(ModelFamily.SDXL, (Method.SDXL_TRANSPARENT_ATTN,))
    canvas = FakeCanvas()
    state = new_state(backend, canvas)
    refusal = state.refusals[Action.SPLIT_LAYERS]
    assert refusal is not None and "needs a Qwen-Image-Layered backend" in refusal
    assert state.generate(Action.SPLIT_LAYERS) is None  # (the action from a menu)
    assert state.message.is_error and canvas.told == [refusal]
    assert backend.submits == [] and canvas.captures == []


def test_generate_follows_the_backend_between_split_and_the_layer_methods() -> None:
    """With Automatic, a saved Split meets an SD backend: Generate makes a transparent
    layer again; a chosen family keeps the painter's method."""
    backend = illustrious_backend()
    state = new_state(backend, FakeCanvas(), method="split_layers")
    backend.connect()
    assert state.settings.method == Action.TRANSPARENT_LAYER.value
    state = new_state(qwen_backend(), FakeCanvas(), method="background", family="sdxl")
    state.client.connect()
    assert state.settings.method == Action.BACKGROUND.value


# The matting fallback ---------------------------------------------------------------------------


def test_the_illustrious_demo_warns_once_and_a_transparent_layer_is_matted(
    demo_illustrious_server: DemoServer,
) -> None:
    async def scenario() -> None:
        async with running_client(demo_illustrious_server.url) as client:
            canvas = FakeCanvas()
            state = new_state(client, canvas)
            await client.wait_connected(TIMEOUT)
            warning = state.model_warning()
            assert warning is not None and "Illustrious" in warning
            assert "expected to fail" in state.message.text and not state.message.is_error
            assert canvas.told == [f"{warning} {state.matting_text()}"]
            await state.generate(Action.TRANSPARENT_LAYER)
            [layer] = canvas.inserted
            assert layer.name == "foreground (matted) · seed 11 · a glass cup"
            assert layer.placement is Placement.ABOVE
            assert len(canvas.told) == 1  # once per model
            # Turned off: LayerDiffuse's own method, named as usual.
            state.update_settings(matting_fallback=False)
            await state.generate(Action.TRANSPARENT_LAYER)
            assert canvas.inserted[-1].name == "foreground · seed 11 · a glass cup"

    run(scenario)


def test_the_matted_method_travels_and_the_warning_floats_at_the_first_layer() -> None:
    """No document when the backend connected: the canvas hears the warning at the
    first transparent layer instead, once."""

    async def scenario() -> None:
        backend = illustrious_backend()
        canvas = FakeCanvas(problem=NoDocument())
        state = new_state(backend, canvas)
        backend.connect()
        assert canvas.told == [] and "expected to fail" in state.message.text
        canvas.problem = None
        await state.generate(Action.TRANSPARENT_LAYER)
        await state.generate(Action.TRANSPARENT_LAYER)
        assert [submit.request.method for submit, _ in backend.submits] == [Method.SDXL_MATTED] * 2
        assert canvas.told == [f"{WARNING} {state.matting_text()}"]
        assert all("(matted)" in layer.name for layer in canvas.inserted)
        # The background action has no matted twin: LayerDiffuse's, not renamed.
        await state.generate(Action.BACKGROUND)
        assert backend.submits[-1][0].request.method is Method.SDXL_FG_TO_BG
        assert canvas.inserted[-1].name == "background · seed 11 · a glass cup"

    run(scenario)


def test_the_warning_applies_only_to_the_backends_own_family() -> None:
    backend = illustrious_backend()
    state = new_state(backend, FakeCanvas())
    assert state.model_warning() == WARNING
    state.update_settings(family="sd15")  # not the model the warning is about
    assert state.model_warning() is None
    assert state._recipe(Action.TRANSPARENT_LAYER).method is Method.SD15_TRANSPARENT
    plain = dataclasses.replace(backend.welcome.model, warning=None)
    backend.welcome = dataclasses.replace(backend.welcome, model=plain)
    state.update_settings(family="auto")
    assert state.model_warning() is None
    assert state._recipe(Action.TRANSPARENT_LAYER).method is Method.SDXL_TRANSPARENT_ATTN
