"""Settings: declared once, stored as text, bad values fall back to their defaults."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from krita_plugin.settings import (
    Settings,
    describe,
    load_settings,
    save_settings,
    shown_range,
    tooltip,
    value_range,
)


class DictStore:
    """A settings store in memory (Krita's settings inside Krita)."""

    def __init__(self, values: dict[str, str] | None = None) -> None:
        self.values = dict(values or {})
        self.writes: list[tuple[str, str]] = []

    def read(self, key: str) -> str | None:
        return self.values.get(key)

    def write(self, key: str, value: str) -> None:
        self.values[key] = value
        self.writes.append((key, value))


def test_an_empty_store_gives_the_defaults() -> None:
    assert load_settings(DictStore()) == Settings()
    assert Settings().server_url == "ws://127.0.0.1:8870"
    assert Settings().random_seed is True
    assert Settings().insert_blended is False


def test_settings_round_trip_through_text() -> None:
    changed = Settings(
        server_url="ws://10.0.0.2:9000",
        token="s3cret",
        prompt="a glass cup\nsecond line",
        family="sdxl",
        method="together",
        steps=33,
        cfg_scale=4.5,
        seed=2**32 - 1,
        random_seed=False,
        sampler="euler_a",
        weight=0.75,
        stop_at=0.5,
        insert_blended=True,
        fit_to_native=False,
    )
    store = DictStore()
    save_settings(store, changed)
    assert store.values["random_seed"] == "false"
    assert store.values["cfg_scale"] == "4.5"
    assert load_settings(store) == changed


def test_only_changed_settings_are_written() -> None:
    store = DictStore()
    before = Settings()
    save_settings(store, dataclasses.replace(before, steps=12), before)
    assert store.writes == [("steps", "12")]


@pytest.mark.parametrize(
    ("key", "text", "reason"),
    [
        ("steps", "many", "invalid literal"),
        ("steps", "0", "below 1"),
        ("steps", "151", "above 150"),
        ("cfg_scale", "nan", "not a number"),
        ("random_seed", "yes", "expected true or false"),
        ("family", "sd3", "not one of auto, sd15, sdxl"),
        ("sampler", "lms", "not one of"),
        ("method", "inpaint", "not one of transparent_layer, background"),
        ("stop_at", "1.5", "above 1.0"),
    ],
)
def test_a_bad_value_falls_back_to_its_default_with_a_log_line(
    caplog: pytest.LogCaptureFixture, key: str, text: str, reason: str
) -> None:
    with caplog.at_level(logging.WARNING, logger="krita_plugin.settings"):
        settings = load_settings(DictStore({key: text, "prompt": "kept"}))
    assert getattr(settings, key) == getattr(Settings(), key)
    assert settings.prompt == "kept"
    assert f"setting {key}: " in caplog.text
    assert reason in caplog.text


def test_every_setting_has_a_label_and_help() -> None:
    for field in dataclasses.fields(Settings):
        label, help = describe(field.name)
        assert label and help, field.name
    assert describe("stop_at")[0] == "Stop At"
    assert value_range("steps") == (1, 150)
    assert value_range("cfg_scale") == (1.0, 30.0)


def test_tooltips_give_the_range_in_the_unit_the_docker_shows() -> None:
    assert tooltip("steps") == "Sampler steps (1–150 steps)"
    assert tooltip("weight").endswith("(0–2 ×)")
    # Stop At is kept as a fraction and shown as a percentage.
    assert value_range("stop_at") == (0.0, 1.0)
    assert shown_range("stop_at") == (0.0, 100.0)
    assert tooltip("stop_at").endswith("(0–100 %)")
    assert tooltip("prompt") == "What to generate"  # no range, no parentheses
    for field in dataclasses.fields(Settings):
        low, high = field.metadata["minimum"], field.metadata["maximum"]
        if low is not None:
            assert f"{shown_range(field.name)[0]:g}–" in tooltip(field.name), field.name
            assert high is not None
