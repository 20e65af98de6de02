"""The toy-world pixel detector: its accuracy on seeded renders (exact and VAE-like blurred), the
input forms it reads, and that a wrong attribute reads as wrong."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from editsweep.toy import detector, world
from editsweep.toy.detector import accuracy, degrade, detect


def test_exact_renders_are_read_correctly():
    scores = accuracy(300, seed=1)
    assert scores["color"] >= 0.99 and scores["shape"] >= 0.97, scores
    assert min(scores["size"], scores["position"], scores["background"], scores["count"]) >= 0.97, scores


def test_blurred_noisy_renders_are_read_correctly():
    scores = accuracy(150, seed=2, blur=True)
    assert scores["color"] >= 0.99 and scores["shape"] >= 0.95, scores
    assert min(scores["size"], scores["position"], scores["background"], scores["count"]) >= 0.95, scores


def test_accuracy_falls_when_the_detector_is_wrong(monkeypatch):
    real = detector.detect

    def wrong_shape(image):
        found = real(image)
        return replace(found, objects=tuple(replace(o, shape="circle") for o in found.objects))

    monkeypatch.setattr(detector, "detect", wrong_shape)
    assert accuracy(60, seed=3)["shape"] < 0.5


def one_object(color="red", shape="circle", size="large", position="left", background=("white",)) -> world.Scene:
    return world.Scene(objects=(world.Obj(shape, color, size, position),), background=background)


def test_a_wrong_colour_reads_as_wrong():
    scene = one_object(color="red")
    recoloured = replace(scene, objects=(replace(scene.objects[0], color="pink"),))
    assert [o.color for o in detect(world.render(scene)).objects] == ["red"]
    assert [o.color for o in detect(world.render(recoloured)).objects] == ["pink"]


def chroma(rgb) -> np.ndarray:
    return np.max(rgb, axis=-1) - np.min(rgb, axis=-1)


def test_object_colours_are_saturated_and_backgrounds_are_not():
    """The fact the detector's seeds rest on, for every colour and every flat or gradient background."""
    assert min(chroma(c) for c in world.COLORS.values()) >= 135 > detector.SEED_CHROMA
    for first, last in itertools.product(world.BACKGROUNDS, repeat=2):
        for angle in np.linspace(0, 2 * np.pi, 7):
            pixels = world.background_pixels(world.Scene((), (first, last) if first != last else (first,), angle))
            assert chroma(pixels).max() <= 56 < detector.SEED_CHROMA, (first, last)


@pytest.mark.parametrize("color", world.COLORS)
@pytest.mark.parametrize("background", [(a, b) if a != b else (a,) for a, b in itertools.product(world.BACKGROUNDS, repeat=2)])
def test_every_colour_on_every_background(color, background):
    scene = replace(one_object(color=color, shape="star", size="small", position="top"), background=background, angle=1.0)
    found = detect(world.render(scene))
    assert [(o.color, o.shape, o.size, o.position) for o in found.objects] == [(color, "star", "small", "top")]
    assert sorted(found.background) == sorted(background)


def test_input_forms_and_sizes_agree():
    scene = one_object(color="cyan", shape="ring", position="center", background=("gray", "beige"))
    image = world.render(scene)
    array = np.asarray(image)
    forms = [image, array, array / 255.0, torch.from_numpy(array / 255.0).permute(2, 0, 1), world.render(scene, 256)]
    for form in forms:
        found = detect(form)
        assert [(o.color, o.shape, o.size, o.position) for o in found.objects] == [("cyan", "ring", "large", "center")]
    with pytest.raises(ValueError, match="square"):
        detect(np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(ValueError, match="RGB"):
        detect(np.zeros((32, 32), np.uint8))


def test_specks_are_ignored_and_an_empty_scene_has_no_objects():
    empty = world.Scene(objects=(), background=("black",))
    array = np.asarray(world.render(empty)).copy()
    array[3:5, 27:29] = world.COLORS["yellow"]
    found = detect(array)
    assert found.objects == () and found.background == ("black",)


def test_touching_objects_are_two_objects():
    left = world.Obj("square", "green", "large", "left", dx=1.0)
    same = world.Scene(objects=(left, replace(left, position="right", dx=-1.0)), background=("white",))
    other = world.Scene(objects=(left, replace(left, color="blue", position="right", dx=-1.0)), background=("white",))
    for scene in (same, other):
        found = detect(degrade(world.render(scene), np.random.default_rng(0)))
        assert [(o.color, o.shape, o.position) for o in found.objects] == [
            (o.color, o.shape, o.position) for o in scene.objects
        ]
