"""Which methods each action runs on each family, and where its layers go."""

from __future__ import annotations

import pytest

from krita_plugin.errors import MethodUnavailable
from krita_plugin.placement import InputSource, Placement
from krita_plugin.recipes import KRITA_ACTIONS, Action, OutputLayer, recipe_for
from protocol import METHOD_SPECS, LayerRole, Method, ModelFamily

FG, BG, BLEND = LayerRole.FOREGROUND, LayerRole.BACKGROUND, LayerRole.BLENDED
ABOVE, BELOW = Placement.ABOVE, Placement.BELOW
SD15, SDXL = ModelFamily.SD15, ModelFamily.SDXL


@pytest.mark.parametrize(
    ("action", "family", "source", "method", "outputs"),
    [
        (Action.TRANSPARENT_LAYER, SD15, InputSource.NOTHING, "sd15_transparent", [(FG, ABOVE)]),
        (Action.TRANSPARENT_LAYER, SDXL, InputSource.NOTHING, "sdxl_transparent_attn",
         [(FG, ABOVE)]),
        (Action.BACKGROUND, SD15, InputSource.ACTIVE_LAYER, "sd15_fg2bg", [(BG, BELOW)]),
        # SDXL: the one-click workflows (blend, then the layer, in one job)
        (Action.BACKGROUND, SDXL, InputSource.ACTIVE_LAYER, "sdxl_fg2bg", [(BG, BELOW)]),
        (Action.FOREGROUND, SD15, InputSource.SCENE, "sd15_bg2fg", [(FG, ABOVE)]),
        (Action.FOREGROUND, SDXL, InputSource.SCENE, "sdxl_bg2fg", [(FG, ABOVE)]),
        (Action.TOGETHER, SD15, InputSource.NOTHING, "sd15_joint", [(BG, ABOVE), (FG, ABOVE)]),
    ],
)  # fmt: skip
def test_recipes(
    action: Action,
    family: ModelFamily,
    source: InputSource,
    method: str,
    outputs: list[tuple[LayerRole, Placement]],
) -> None:
    recipe = recipe_for(action, family)
    assert recipe.source is source
    assert recipe.method.value == method
    assert [(output.role, output.placement) for output in recipe.outputs] == outputs
    assert all(output.visible for output in recipe.outputs)
    assert METHOD_SPECS[recipe.method].family is family


def test_a_recipes_inputs_are_the_capture_and_its_outputs_the_methods() -> None:
    for action in Action:
        for family in ModelFamily:
            try:
                recipe = recipe_for(action, family, insert_blended=True)
            except MethodUnavailable:
                continue
            spec = METHOD_SPECS[recipe.method]
            assert set(spec.required_inputs) <= {recipe.captured_role} - {None}, action
            assert {output.role for output in recipe.outputs} <= set(spec.outputs)


@pytest.mark.parametrize(
    ("action", "outputs"),
    [
        (Action.BACKGROUND, [OutputLayer(BG, BELOW), OutputLayer(BLEND, BELOW, visible=False)]),
        (Action.FOREGROUND, [OutputLayer(BLEND, ABOVE, visible=False), OutputLayer(FG, ABOVE)]),
        (Action.TOGETHER, [OutputLayer(BG, ABOVE), OutputLayer(FG, ABOVE),
                           OutputLayer(BLEND, ABOVE, visible=False)]),
        (Action.TRANSPARENT_LAYER, [OutputLayer(FG, ABOVE)]),
    ],
)  # fmt: skip
def test_the_blended_layer_is_inserted_hidden_when_asked(
    action: Action, outputs: list[OutputLayer]
) -> None:
    assert list(recipe_for(action, SD15, insert_blended=True).outputs) == outputs


def test_together_needs_sd15() -> None:
    with pytest.raises(MethodUnavailable, match=r"needs an SD1\.5 model"):
        recipe_for(Action.TOGETHER, SDXL)


def test_a_method_the_backend_does_not_offer_is_named() -> None:
    recipe = recipe_for(Action.BACKGROUND, SDXL)
    with pytest.raises(MethodUnavailable) as caught:
        recipe.check_offered((Method.SD15_TRANSPARENT, Method.SD15_FG_TO_BG))
    assert str(caught.value) == (
        "The backend does not offer sdxl_fg2bg, which “Background for the active layer” "
        "needs with SDXL (it offers: sd15_transparent, sd15_fg2bg). Start it with an SDXL "
        "model, or pick the other model family."
    )
    recipe_for(Action.BACKGROUND, SD15).check_offered((Method.SD15_FG_TO_BG,))


def test_krita_actions_cover_the_three_actions_the_split_and_cancel() -> None:
    ids = [action_id for action_id, _, _ in KRITA_ACTIONS]
    assert ids == [
        "layerdiffuse_generate_layer",
        "layerdiffuse_generate_background",
        "layerdiffuse_generate_foreground",
        "layerdiffuse_split_layers",
        "layerdiffuse_cancel",
    ]
    assert [action for _, _, action in KRITA_ACTIONS] == [
        Action.TRANSPARENT_LAYER,
        Action.BACKGROUND,
        Action.FOREGROUND,
        Action.SPLIT_LAYERS,
        None,
    ]


def test_the_sdxl_transparent_layer_runs_attention_or_conv_as_chosen() -> None:
    conv = recipe_for(Action.TRANSPARENT_LAYER, SDXL, sdxl_transparent=Method.SDXL_TRANSPARENT_CONV)
    assert conv.method is Method.SDXL_TRANSPARENT_CONV
    # SD1.5 has one transparent model; the choice does not apply there.
    sd15 = recipe_for(Action.TRANSPARENT_LAYER, SD15, sdxl_transparent=Method.SDXL_TRANSPARENT_CONV)
    assert sd15.method is Method.SD15_TRANSPARENT
    with pytest.raises(ValueError, match="not an SDXL transparent method"):
        recipe_for(Action.TRANSPARENT_LAYER, SDXL, sdxl_transparent=Method.SDXL_FG_TO_BLEND)


def test_on_flux_only_a_transparent_layer_runs() -> None:
    """LayerDiffuse-Flux makes transparent layers; the other actions say what they need."""
    recipe = recipe_for(Action.TRANSPARENT_LAYER, ModelFamily.FLUX)
    assert recipe.method is Method.FLUX_TRANSPARENT
    assert [(o.role, o.placement) for o in recipe.outputs] == [
        (LayerRole.FOREGROUND, Placement.ABOVE)
    ]
    for action in (Action.BACKGROUND, Action.FOREGROUND, Action.TOGETHER):
        with pytest.raises(MethodUnavailable, match=r"needs an SD1\.5 or SDXL model"):
            recipe_for(action, ModelFamily.FLUX)
