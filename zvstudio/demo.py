"""The demo clip: procedural moving, textured content with an audio tone struck each time the
ball bounces.

`zvstudio render --demo` renders this clip so that a new user sees the whole pipeline work with
nothing downloaded. The scene (sizes, colours, speeds) is described in
`resources/demo_scene.json`; everything is drawn with NumPy and OpenCV from a fixed seed, so the
clip is identical on every machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from fractions import Fraction
from importlib import resources

import cv2
import numpy as np

from zvstudio.media.synth import Tone, write_clip


def load_scene() -> dict:
    return json.loads(resources.files("zvstudio.resources").joinpath("demo_scene.json").read_text())


def _value_noise(rng: np.random.Generator, height: int, width: int, octaves: int = 4) -> np.ndarray:
    """Smooth fractal noise in [0, 1]: random grids upsampled bicubically and summed."""
    total = np.zeros((height, width), np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        cells = 4 * 2**octave
        grid = rng.random((cells + 1, cells * width // height + 1), dtype=np.float32)
        weight = 0.5**octave
        total += weight * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
        weight_sum += weight
    return np.clip(total / weight_sum, 0.0, 1.0)


class DemoScene:
    """Draws frame n of the demo clip."""

    def __init__(self, scene: dict | None = None) -> None:
        self.scene = scene or load_scene()
        self.width, self.height = self.scene["width"], self.scene["height"]
        self.fps = Fraction(self.scene["fps"])
        self.frame_count = round(self.scene["seconds"] * self.scene["fps"])
        rng = np.random.default_rng(self.scene["seed"])
        # Textures twice the frame width so they can scroll without repeating visibly.
        self.clouds = _value_noise(rng, self.height, 2 * self.width)
        self.grass = _value_noise(rng, self.height, 2 * self.width, octaves=5)
        self.background = self._sky_gradient()

    def _sky_gradient(self) -> np.ndarray:
        top = np.array(self.scene["sky_top"], np.float32)
        bottom = np.array(self.scene["sky_bottom"], np.float32)
        ramp = np.linspace(0.0, 1.0, self.height, dtype=np.float32)[:, None, None]
        return np.broadcast_to(top + (bottom - top) * ramp, (self.height, self.width, 3)).copy()

    def frame(self, number: int) -> np.ndarray:
        seconds = number / float(self.fps)
        image = self.background.copy()
        self._draw_sun(image)
        self._draw_clouds(image, seconds)
        self._draw_ground(image, seconds)
        image = np.clip(image, 0, 255).astype(np.uint8)
        self._draw_star(image, seconds)
        self._draw_ball(image, seconds)
        return image

    def frames(self) -> Iterator[np.ndarray]:
        return (self.frame(n) for n in range(self.frame_count))

    def _scrolled(self, texture: np.ndarray, offset: float) -> np.ndarray:
        start = int(offset) % self.width
        return texture[:, start : start + self.width]

    def _draw_sun(self, image: np.ndarray) -> None:
        sun = self.scene["sun"]
        cv2.circle(
            image,
            tuple(sun["center"]),
            sun["radius"],
            tuple(map(float, sun["colour"])),
            -1,
            cv2.LINE_AA,
        )

    def _draw_clouds(self, image: np.ndarray, seconds: float) -> None:
        noise = self._scrolled(self.clouds, seconds * self.scene["cloud_speed"])
        cover = np.clip((noise - 0.5) * 3.0, 0.0, 1.0)[..., None]
        image *= 1.0 - cover
        image += cover * 245.0

    def _draw_ground(self, image: np.ndarray, seconds: float) -> None:
        horizon = int(self.height * self.scene["horizon"])
        noise = self._scrolled(self.grass, seconds * self.scene["ground_speed"])[horizon:]
        stripes = 0.5 + 0.5 * np.sin(
            np.arange(self.width)[None, :] / 9.0 + seconds * self.scene["ground_speed"] / 9.0
        )
        shade = (0.55 + 0.6 * noise + 0.15 * stripes)[..., None]
        image[horizon:] = np.array(self.scene["ground"], np.float32) * shade

    def _draw_star(self, image: np.ndarray, seconds: float) -> None:
        star = self.scene["star"]
        center = np.array(star["center"], np.float64) + np.array(star["drift"]) * seconds
        angles = 2 * np.pi * star["turns_per_second"] * seconds + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, star["radius"], star["radius"] * 0.45)
        points = center + np.stack([np.cos(angles), np.sin(angles)], axis=1) * radii[:, None]
        polygon = np.round(points * 16).astype(np.int32)  # 4 fractional bits: smooth motion
        cv2.fillPoly(image, [polygon], star["colour"], cv2.LINE_AA, shift=4)
        cv2.polylines(image, [polygon], True, (120, 80, 10), 2, cv2.LINE_AA, shift=4)

    def _draw_ball(self, image: np.ndarray, seconds: float) -> None:
        ball = self.scene["ball"]
        radius = ball["radius"]
        horizon = int(self.height * self.scene["horizon"])
        travel = self.width + 2 * radius
        x = (seconds * ball["x_speed"]) % travel - radius
        phase = abs(np.sin(np.pi * ball["bounces_per_second"] * seconds))
        y = horizon + radius * 0.6 - ball["bounce_height"] * phase
        center = (round(x * 16), round(y * 16))
        cv2.circle(image, center, radius * 16, ball["colour"], -1, cv2.LINE_AA, shift=4)
        # Stripes rotate with the roll so the texture visibly moves.
        angle = x / radius
        for offset in (-0.5, 0.5):
            start = (
                center[0] + int(16 * radius * np.cos(angle + offset)),
                center[1] + int(16 * radius * np.sin(angle + offset)),
            )
            end = (
                center[0] - int(16 * radius * np.cos(angle - offset)),
                center[1] - int(16 * radius * np.sin(angle - offset)),
            )
            cv2.line(image, start, end, ball["stripe"], 5, cv2.LINE_AA, shift=4)


def write_demo_clip(path: str | os.PathLike[str], scene: dict | None = None) -> DemoScene:
    """Write the demo clip (H.264 + AAC tone) to `path` and return its scene."""
    demo = DemoScene(scene)
    tone = demo.scene["tone"]
    write_clip(
        path,
        demo.frames(),
        fps=demo.fps,
        tone=Tone(
            frequency=tone["frequency"],
            volume=tone["volume"],
            beats_per_second=demo.scene["ball"]["bounces_per_second"],  # the ball lands
        ),
        options={"crf": "16", "preset": "fast"},
    )
    return demo
