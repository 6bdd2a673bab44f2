"""Procedural rooms: exact z-depth, floor mask, focal length, determinism; textures tile and band-limit."""

import dataclasses
import json
import math

import numpy as np
import pytest

from maskdepth.data.rooms import RoomParams, ray_depth, render_room, sample_room
from maskdepth.data.textures import KINDS, TextureSpec, make_texture

SIZE = (33, 41)  # odd height: the middle row's centre lies on the optical axis


def room(**geometry) -> RoomParams:
    """A sampled room with hand-set geometry: 10 x 10 x 3 m, camera 1.5 m high near the y = 0 wall, level, +y."""
    base = dict(width=10.0, length=10.0, height=3.0, cam_x=5.0, cam_y=1.0, cam_height=1.5, pitch=0.0, yaw=0.0,
                vfov=math.radians(60))
    base.update(geometry)
    return dataclasses.replace(sample_room(np.random.default_rng(0)), **base)


def focal(p: RoomParams, size=SIZE) -> float:
    return (size[0] / 2) / math.tan(p.vfov / 2)


def reference_hits(p: RoomParams, size=SIZE):
    """Independent float64 ray casting: (z-depth, index of the first plane hit) per pixel.
    Planes: 0 x=0, 1 x=W, 2 y=0, 3 y=L, 4 floor, 5 ceiling."""
    h, w = size
    f = focal(p, size)
    v, u = np.mgrid[0:h, 0:w] + 0.5
    x_c, y_c = (u - w / 2) / f, (v - h / 2) / f  # camera frame: x right, y down, z forward (unit)
    cp, sp, cy, sy = math.cos(p.pitch), math.sin(p.pitch), math.cos(p.yaw), math.sin(p.yaw)
    # Rotate the camera frame into the world: pitch about the camera's x axis, then yaw about world z.
    fwd_h = cp - y_c * sp  # the ray's component along the horizontal view direction
    dz = -sp - y_c * cp
    dx = x_c * cy + fwd_h * sy
    dy = -x_c * sy + fwd_h * cy
    cam = (p.cam_x, p.cam_y, p.cam_height)
    ts = []
    with np.errstate(divide="ignore", invalid="ignore"):
        for comp, c, lo, hi in ((dx, cam[0], 0, p.width), (dy, cam[1], 0, p.length), (dz, cam[2], 0, p.height)):
            ts.append(np.where(comp < 0, (lo - c) / comp, np.inf))
            ts.append(np.where(comp > 0, (hi - c) / comp, np.inf))
    ts = np.stack(ts)  # ray parameter; the ray's forward component is 1, so it is the z-depth
    return ts.min(axis=0), ts.argmin(axis=0), np.sort(ts, axis=0)


def test_level_camera_floor_and_front_wall_depth_are_analytic():
    p = room()
    bg = render_room(p, SIZE)
    f = focal(p)
    assert bg.focal_px == pytest.approx(f)
    cy = SIZE[0] / 2
    # Front wall (y = L) straight ahead: a fronto-parallel plane at distance L - cam_y has z-depth L - cam_y.
    assert bg.depth[16, 20] == pytest.approx(9.0, rel=1e-5)
    checked = 0
    for row in range(17, SIZE[0]):
        expected = p.cam_height * f / (row + 0.5 - cy)  # floor seen from height h: depth = h f / (v - cy)
        if expected < 9.0 - 0.05:
            assert bg.floor[row, 20]
            assert bg.depth[row, 20] == pytest.approx(expected, rel=1e-4)
            checked += 1
        else:
            assert not bg.floor[row, 20]
            assert bg.depth[row, 20] == pytest.approx(9.0, rel=1e-4)
    assert checked >= 10


def test_pitched_and_turned_camera_depths_are_analytic():
    pitch = math.radians(25)
    p = room(pitch=pitch, cam_y=5.0, cam_x=5.0, yaw=math.radians(90))  # looking along +x
    bg = render_room(p, SIZE)
    f = focal(p)
    rows = np.arange(SIZE[0])
    b = (rows + 0.5 - SIZE[0] / 2) / f
    floor_depth = p.cam_height / (math.sin(pitch) + b * math.cos(pitch))
    on_floor = b > -math.tan(pitch) + 0.05
    on_floor &= floor_depth < 3.5  # well before the walls, 5 m ahead and 5 m to each side
    assert on_floor.sum() > 10
    for col in (0, 20, SIZE[1] - 1):  # the floor's z-depth does not depend on the column
        np.testing.assert_allclose(bg.depth[on_floor, col], floor_depth[on_floor], rtol=1e-4)
        assert bg.floor[on_floor, col].all()
    # Level and turned 90 degrees: the wall x = W ahead is fronto-parallel at W - cam_x.
    level = room(cam_x=2.0, cam_y=5.0, yaw=math.radians(90))
    assert render_room(level, SIZE).depth[16, 20] == pytest.approx(8.0, rel=1e-5)


def test_depth_and_floor_match_independent_ray_casting():
    for seed in range(4):
        p = sample_room(np.random.default_rng(seed))
        bg = render_room(p, SIZE)
        t, plane, sorted_t = reference_hits(p)
        np.testing.assert_allclose(bg.depth, t, rtol=1e-4)
        clear = (sorted_t[1] - sorted_t[0]) > 1e-3 * sorted_t[0]  # not on an edge where two planes tie
        assert clear.mean() > 0.9
        np.testing.assert_array_equal(bg.floor[clear], (plane == 4)[clear])
        assert (bg.depth > 0).all() and np.isfinite(bg.depth).all()
        assert bg.floor.any() and (~bg.floor).any()


def test_render_depth_equals_ray_depth_at_pixels():
    p = sample_room(np.random.default_rng(3))
    bg = render_room(p, SIZE)
    rows = np.array([0, 5, 16, 32, 32])
    cols = np.array([0, 40, 20, 0, 17])
    np.testing.assert_array_equal(ray_depth(p, SIZE, rows, cols), bg.depth[rows, cols])


def test_focal_length_gives_the_perspective_size():
    # Level camera facing the front wall D = 9 m away: the wall-ceiling edge, (3.0 - 1.5) m above the camera,
    # is focal * 1.5 / 9 px above the image centre.
    p = room()
    size = (101, 101)
    bg = render_room(p, size)
    edge = size[0] / 2 - bg.focal_px * 1.5 / 9.0
    r = int(math.floor(edge))
    depth_col = bg.depth[:, 50]
    # Above the edge the ceiling is nearer than the wall; below it the wall is at exactly 9 m.
    assert depth_col[r - 1] < 9.0 - 1e-3
    assert depth_col[r + 1] == pytest.approx(9.0, rel=1e-5)


def test_same_params_same_bytes_and_seeds_differ():
    p = sample_room(np.random.default_rng(11))
    a, b = render_room(p, (48, 64)), render_room(p, (48, 64))
    assert a.image.tobytes() == b.image.tobytes()
    assert a.depth.tobytes() == b.depth.tobytes()
    assert a.image.shape == (48, 64, 3) and a.image.dtype == np.uint8
    assert a.depth.dtype == np.float32 and a.floor.dtype == bool
    c = render_room(sample_room(np.random.default_rng(12)), (48, 64))
    assert a.image.tobytes() != c.image.tobytes()
    assert not np.allclose(a.depth, c.depth)
    # A different texture seed alone changes the picture but not the depth.
    d = render_room(dataclasses.replace(p, floor=dataclasses.replace(p.floor, seed=p.floor.seed + 1)), (48, 64))
    assert d.image.tobytes() != a.image.tobytes()
    assert d.depth.tobytes() == a.depth.tobytes()


def test_params_round_trip_through_json():
    p = sample_room(np.random.default_rng(5))
    q = RoomParams.from_dict(json.loads(json.dumps(dataclasses.asdict(p))))
    assert q == p
    assert render_room(q, (32, 32)).image.tobytes() == render_room(p, (32, 32)).image.tobytes()


def test_sampled_rooms_stay_in_the_designed_ranges_and_see_floor():
    for seed in range(30):
        p = sample_room(np.random.default_rng(seed))
        assert 3 <= p.width <= 10 and 3 <= p.length <= 10
        assert 0 < p.cam_x < p.width and 0 < p.cam_y < p.length and 1.0 <= p.cam_height <= min(2.2, p.height)
        assert math.radians(5) - 1e-4 <= p.pitch <= math.radians(35) + 1e-4
        assert math.radians(45) - 1e-4 <= p.vfov <= math.radians(75) + 1e-4
        bg = render_room(p, (24, 24))
        assert bg.floor.mean() > 0.2  # room to stand objects on
        assert 20 < bg.image.mean() < 235


@pytest.mark.parametrize("kind", KINDS)
def test_textures_tile_and_fade_to_their_mean(kind):
    spec = TextureSpec(kind=kind, seed=3, color_a=(0.2, 0.3, 0.4), color_b=(0.9, 0.7, 0.5), scale=0.2,
                       contrast=0.8)
    tex = make_texture(spec, 64)
    u = np.linspace(0.0, 1.0, 50, dtype=np.float32)
    v = np.linspace(0.3, 0.9, 50, dtype=np.float32)
    fine = tex.sample(u, v, 0.0)
    assert fine.shape == (3, 50) and fine.std() > 0.005
    np.testing.assert_allclose(tex.sample(u + spec.patch_m, v - 2 * spec.patch_m, 0.0), fine, atol=1e-4)
    # A footprint as large as the patch shows only the mean colour: no detail below the pixel survives.
    blurred = tex.sample(u, v, 2 * spec.patch_m)
    np.testing.assert_allclose(blurred, np.repeat(tex.mean[:, None], 50, axis=1), atol=1e-5)


def test_wall_rects_paint_the_wall_without_changing_depth():
    # The front wall y = L runs from u = W + L (x = W) to u = 2W + L (x = 0); the camera looks at x = 5, z = 1.5.
    plain = room(wall_rects=(), skirting_m=0.0)
    red = dataclasses.replace(plain, wall_rects=((24.0, 26.0, 1.0, 2.0, 1.0, 0.0, 0.0),))
    a, b = render_room(plain, SIZE), render_room(red, SIZE)
    assert a.depth.tobytes() == b.depth.tobytes()
    r, g, bl = b.image[16, 20].astype(int)
    assert r > 40 and g == 0 and bl == 0


def test_bright_windows_clip_and_glossy_floors_shine_without_changing_depth():
    plain = room(wall_rects=(), skirting_m=0.0, floor_gloss=0.0)
    window = dataclasses.replace(plain, wall_rects=((24.0, 26.0, 1.0, 2.0, 0.8, 0.9, 1.0, 2.0),))
    a, b = render_room(plain, SIZE), render_room(window, SIZE)
    assert a.depth.tobytes() == b.depth.tobytes()
    assert (b.image[16, 20] == 255).all()  # over-exposed: clipped white, whatever the room's exposure
    assert (a.image[16, 20] < 250).all()
    # looking down the room at a far light: its mirror image in the floor lies in view (about 29 degrees down)
    lit = dataclasses.replace(plain, pitch=0.3, light_x=5.0, light_y=9.5, light_z=2.9, light_power=2.0, exposure=0.3)
    glossy = dataclasses.replace(lit, floor_gloss=1.0, floor_shininess=30.0)
    m, g = render_room(lit, SIZE), render_room(glossy, SIZE)
    gain = g.image.astype(int) - m.image.astype(int)
    assert m.depth.tobytes() == g.depth.tobytes()
    assert gain[m.floor].max() > 60
    # elsewhere only the exposure, set from the mean brightness, moves: one scale for every pixel
    walls = ~m.floor[..., None] & (m.image > 40)
    ratio = g.image[walls] / m.image[walls]
    assert ratio.max() <= 1.0 and ratio.max() - ratio.min() < 0.05


def test_sampled_rooms_have_bright_windows_and_glossy_floors_sometimes():
    rooms = [sample_room(np.random.default_rng(s)) for s in range(60)]
    glowing = [any(len(r) > 7 and r[7] > 0 for r in p.wall_rects) for p in rooms]
    glossy = [p.floor_gloss > 0 for p in rooms]
    assert 0.2 < np.mean(glowing) < 0.8 and 0.2 < np.mean(glossy) < 0.7
    for p in rooms:
        assert RoomParams.from_dict(json.loads(json.dumps(dataclasses.asdict(p)))) == p
