"""Flow wire formats (npy, Middlebury .flo, colour-wheel PNG, json) and format negotiation."""

from __future__ import annotations

import base64
import io
import json
import struct

import numpy as np
import pytest
from PIL import Image

from server.media.flow import (
    FlowFormat,
    colour_wheel,
    encode_flow,
    flow_to_color,
    flow_to_png,
    negotiate,
    read_flo,
    write_flo,
)


def random_flow(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, (height, width, 2)).astype(np.float32)


def test_flo_header_bytes_and_round_trip() -> None:
    flow = random_flow()
    data = write_flo(flow)
    assert data[:4] == b"PIEH" == struct.pack("<f", 202021.25)
    assert struct.unpack("<ii", data[4:12]) == (7, 5)  # width, then height
    assert len(data) == 12 + 5 * 7 * 2 * 4
    assert struct.unpack("<2f", data[12:20]) == tuple(flow[0, 0])  # u, v of the top-left pixel
    assert struct.unpack("<2f", data[20:28]) == tuple(flow[0, 1])  # then its right neighbour
    back = read_flo(data)
    assert back.dtype == np.float32 and np.array_equal(back, flow)


@pytest.mark.parametrize(
    "data, match",
    [
        (b"PIEH", "header"),
        (b"PIEX" + struct.pack("<ii", 1, 1) + b"\0" * 8, "magic"),
        (b"PIEH" + struct.pack("<ii", 2, 2) + b"\0" * 8, "2x2"),
        (b"PIEH" + struct.pack("<ii", -1, 2) + b"", "-1x2"),
    ],
)
def test_read_flo_refuses_malformed_files(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        read_flo(data)


def test_npy_and_json_round_trip_as_little_endian_float32() -> None:
    flow = random_flow(3, 4)
    assert np.array_equal(np.load(io.BytesIO(encode_flow(flow, FlowFormat.NPY)), allow_pickle=False), flow)
    payload = json.loads(encode_flow(flow, FlowFormat.JSON))
    assert payload["shape"] == [3, 4, 2] and payload["dtype"] == "float32"
    decoded = np.frombuffer(base64.b64decode(payload["data"]), dtype="<f4").reshape(payload["shape"])
    assert np.array_equal(decoded, flow)
    with pytest.raises(ValueError, match="H, W, 2"):
        encode_flow(np.zeros((3, 4)), FlowFormat.NPY)


def test_colour_wheel_is_the_55_colour_middlebury_wheel() -> None:
    wheel = colour_wheel()
    assert wheel.shape == (55, 3)
    # Segment starts: red, yellow, green, cyan, blue, magenta (RY 15, YG 6, GC 4, CB 11, BM 13, MR 6).
    for index, colour in [
        (0, (255, 0, 0)),
        (15, (255, 255, 0)),
        (21, (0, 255, 0)),
        (25, (0, 255, 255)),
        (36, (0, 0, 255)),
        (49, (255, 0, 255)),
    ]:
        assert tuple(wheel[index]) == colour
    assert tuple(wheel[1]) == (255, 17, 0)  # floor(255 * 1 / 15)
    assert tuple(wheel[54]) == (255, 0, 43)  # 255 - floor(255 * 5 / 6)


def test_png_is_an_rgb_picture_of_the_flow() -> None:
    flow = np.zeros((4, 6, 2), np.float32)
    flow[0, 0] = (4, 0)  # right, at the field's largest speed
    flow[0, 1] = (0, -4)  # up (image y grows downwards)
    flow[0, 2] = (-4, 0)  # left
    flow[0, 3] = (0, 4)  # down
    flow[0, 4] = (2, 0)  # right at half the largest speed: half saturated
    image = Image.open(io.BytesIO(flow_to_png(flow)))
    assert image.format == "PNG" and image.mode == "RGB" and image.size == (6, 4)
    pixels = np.asarray(image)
    assert np.array_equal(pixels, flow_to_color(flow))
    assert (pixels[1:] == 255).all() and tuple(pixels[0, 5]) == (255, 255, 255)  # zero flow is white
    assert tuple(pixels[0, 0]) == (255, 0, 0)  # wheel[0]
    assert tuple(pixels[0, 1]) == (88, 0, 255)  # halfway between wheel[40] (78, 0, 255) and wheel[41] (98, 0, 255)
    assert tuple(pixels[0, 2]) == (0, 209, 255)  # wheel[27]
    assert tuple(pixels[0, 3]) == (255, 229, 0)  # halfway between wheel[13] (255, 221, 0) and wheel[14] (255, 238, 0)
    assert tuple(pixels[0, 4]) == (255, 127, 127)


def flow_vis_reference(flow: np.ndarray) -> np.ndarray:
    """Transcribed from flow_vis (Tom Runia's port of the Middlebury C++/Matlab code): flow_to_color."""
    wheel = np.zeros((55, 3))
    col = 0
    for count, (held, ramped, rising) in zip(
        (15, 6, 4, 11, 13, 6), ((0, 1, 1), (1, 0, 0), (1, 2, 1), (2, 1, 0), (2, 0, 1), (0, 2, 0)), strict=True
    ):
        wheel[col : col + count, held] = 255
        ramp = np.floor(255 * np.arange(count) / count)
        wheel[col : col + count, ramped] = ramp if rising else 255 - ramp
        col += count
    u, v = flow[..., 0], flow[..., 1]
    rad_max = np.max(np.sqrt(np.square(u) + np.square(v)))
    u, v = u / (rad_max + 1e-5), v / (rad_max + 1e-5)
    rad = np.sqrt(np.square(u) + np.square(v))
    a = np.arctan2(-v, -u) / np.pi
    fk = (a + 1) / 2 * 54
    k0 = np.floor(fk).astype(np.int32)
    k1 = k0 + 1
    k1[k1 == 55] = 0
    f = fk - k0
    image = np.zeros((*u.shape, 3), np.uint8)
    for i in range(3):
        col = (1 - f) * wheel[k0, i] / 255.0 + f * wheel[k1, i] / 255.0
        idx = rad <= 1
        col[idx] = 1 - rad[idx] * (1 - col[idx])
        col[~idx] = col[~idx] * 0.75
        image[..., i] = np.floor(255 * col)
    return image


def test_png_colours_match_flow_vis() -> None:
    flow = random_flow(128, 128, seed=3)
    ours, reference = flow_to_color(flow), flow_vis_reference(flow)
    difference = np.abs(ours.astype(int) - reference.astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01  # floor() ties aside, identical


def test_png_normalises_by_the_largest_speed_and_survives_zero_flow() -> None:
    flow = random_flow(8, 8)
    assert np.array_equal(flow_to_color(flow), flow_to_color(flow * 10))
    assert (flow_to_color(np.zeros((2, 3, 2), np.float32)) == 255).all()


@pytest.mark.parametrize(
    "fmt, accept, expected",
    [
        (None, None, FlowFormat.NPY),
        (None, "*/*", FlowFormat.NPY),
        (None, "application/x-npy", FlowFormat.NPY),
        (None, "application/x-flo", FlowFormat.FLO),
        (None, "image/png", FlowFormat.PNG),
        (None, "image/*", FlowFormat.PNG),
        (None, "application/json", FlowFormat.JSON),
        (None, "text/html, application/json;q=0.9, */*;q=0.1", FlowFormat.JSON),
        (None, "image/png;q=0.5, application/json", FlowFormat.JSON),
        (None, "image/png;q=0, */*", FlowFormat.NPY),  # explicitly refused, most specific range wins
        (None, "text/csv", FlowFormat.NPY),  # nothing acceptable: the header is disregarded
        (None, "garbage, ;;, image/png;q=nope", FlowFormat.NPY),
        (FlowFormat.FLO, "image/png", FlowFormat.FLO),  # ?format= wins
    ],
)
def test_negotiation(fmt: FlowFormat | None, accept: str | None, expected: FlowFormat) -> None:
    assert negotiate(fmt, accept) is expected
