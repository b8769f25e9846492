"""Faster, pixel-identical rendering for gymnasium's ``CarRacing-v3``.

The stock env spends ~95% of a step drawing: every frame it transforms all ~800 polygons (≈400 grass
patches, the road tiles and kerbs) one vertex at a time with ``pygame.math.Vector2`` in Python, although
only a few dozen are on screen, and it loads a font and renders the score text from scratch.
:func:`install_fast_render` replaces the env's ``_render`` and ``_render_road`` (on that one instance)
with versions that

- transform every grass/road vertex in one vectorised numpy pass, with the *same* floating-point
  operations in the same order as ``Vector2.rotate_rad`` followed by ``x * zoom + translation``
  (the sine and cosine are taken from pygame itself: ``Vector2(1, 0).rotate_rad(angle)``), so each
  coordinate is bit-for-bit the float the stock code computes;
- apply the stock clip test (a vertex inside the screen grown by ``MAX_SHAPE_DIM``) to all polygons at
  once, also drop polygons lying wholly beyond one screen edge (drawing those changes no pixel), and
  hand the rest, in the stock order and colours, to the same ``gfxdraw.aapolygon`` +
  ``gfxdraw.filled_polygon`` calls;
- draw the background (the playfield square, the one unclipped polygon) as a plain ``fill`` when it
  covers the whole screen with a wide margin, which gives the same pixels; otherwise (the first ~14
  zoom-in frames, near the playfield edge) the stock polygon calls;
- keep one font object and re-render the score text only when its string changes.

Everything else (the car, flip, dashboard, ``smoothscale``) is the stock code, so observations,
``rgb_array`` frames and the ``human`` window are identical, and physics, rewards, terminations and
info are untouched (rendering never feeds back into the simulation). Verified with gymnasium 1.4.0 and
pygame-ce 2.5.8 (tests/test_fast_render.py compares frames with ``np.array_equal``).

It relies on private gymnasium internals, so it is only installed on the gymnasium versions it was
verified against (:data:`VERIFIED_GYMNASIUM_VERSIONS`); on any other version, or if a start-up self
check of the transform fails, it warns and leaves the stock renderer in place.
"""

from __future__ import annotations

import types
import warnings
from typing import Any

import gymnasium
import numpy as np

VERIFIED_GYMNASIUM_VERSIONS = frozenset({"1.4.0"})
"""gymnasium versions whose ``car_racing.py`` rendering this module reproduces exactly."""

_TEXT_CACHE_SIZE = 64
OFF_SCREEN_MARGIN = 8.0  # px: a polygon wholly this far beyond one screen edge draws nothing
COVER_MARGIN = 16.0  # px: the background is a plain fill when it covers the screen grown by this much

# pygame fonts die with pygame.quit() (the env's close() in human mode calls it): drop the cached font then.
# pygame forgets registered quit functions at each pygame.quit(), so the hook is registered again with
# every new font (once per pygame session), not once per process.
_font_cache: dict[str, Any] = {}


def _clear_font_cache() -> None:
    _font_cache.clear()


def _score_font() -> Any:
    """The stock score font (default font, size 42), created once per pygame session."""
    import pygame

    font = _font_cache.get("score")
    if font is None:
        font = pygame.font.Font(pygame.font.get_default_font(), 42)
        _font_cache["score"] = font
        pygame.register_quit(_clear_font_cache)
    return font


def _mapped_color(surface: Any, color: Any) -> int:
    """The pixel value ``gfxdraw`` writes for ``color`` (an int/float sequence) on ``surface``'s format."""
    import pygame
    from pygame import gfxdraw

    probe = pygame.Surface((1, 1), 0, surface)
    gfxdraw.pixel(probe, 0, 0, color)
    return probe.get_at_mapped((0, 0))


class UnverifiedVersion(UserWarning):
    """The installed gymnasium (or pygame) was not verified: the stock renderer is used."""


def _transform_self_check() -> bool:
    """Does the numpy transform reproduce ``Vector2.rotate_rad`` bit for bit on this pygame?"""
    import pygame

    rng = np.random.default_rng(12345)
    points = rng.normal(0.0, 300.0, size=(16, 2))
    angles = [0.0, np.pi / 2, -np.pi, 3 * np.pi / 2 + 1e-12, *rng.uniform(-20.0, 20.0, size=12)]
    for angle in angles:
        angle = float(angle)
        cos, sin = pygame.math.Vector2(1.0, 0.0).rotate_rad(angle)
        xs = cos * points[:, 0] - sin * points[:, 1]
        ys = sin * points[:, 0] + cos * points[:, 1]
        for (px, py), x, y in zip(points.tolist(), xs.tolist(), ys.tolist()):
            rx, ry = pygame.math.Vector2((px, py)).rotate_rad(angle)
            if rx != x or ry != y:
                return False
    return True


_self_check_result: bool | None = None


def fast_render_supported() -> tuple[bool, str]:
    """(supported, reason): whether :func:`install_fast_render` would install the fast renderer here."""
    global _self_check_result
    version = gymnasium.__version__
    if version not in VERIFIED_GYMNASIUM_VERSIONS:
        return False, (f"gymnasium {version} is not one of the verified versions "
                       f"{sorted(VERIFIED_GYMNASIUM_VERSIONS)}")
    if _self_check_result is None:
        _self_check_result = _transform_self_check()
    if not _self_check_result:
        return False, "the vectorised transform does not match pygame.math.Vector2.rotate_rad on this pygame"
    return True, ""


def _grass_polygons(grass_dim: float) -> np.ndarray:
    """The stock grass patches (float64 (400, 4, 2)), built with the stock expressions."""
    grass = []
    for x in range(-20, 20, 2):
        for y in range(-20, 20, 2):
            grass.append([
                (grass_dim * x + grass_dim, grass_dim * y + 0),
                (grass_dim * x + 0, grass_dim * y + 0),
                (grass_dim * x + 0, grass_dim * y + grass_dim),
                (grass_dim * x + grass_dim, grass_dim * y + grass_dim),
            ])
    return np.asarray(grass, dtype=np.float64)


class _Geometry:
    """World-space vertices of all grass patches followed by all road polygons, rebuilt when the track changes."""

    def __init__(self, grass: np.ndarray) -> None:
        self.grass = grass
        self.road_poly: list | None = None  # the env's list object these vertices were taken from
        self.road_len = -1
        self.vertices = grass  # (N, 4, 2)
        self.xs = np.ascontiguousarray(grass[:, :, 0])
        self.ys = np.ascontiguousarray(grass[:, :, 1])

    def update(self, road_poly: list) -> bool:
        """Refresh for ``road_poly``; False if some polygon is not a quad (then the stock path is used)."""
        if road_poly is self.road_poly and len(road_poly) == self.road_len:
            return True
        if any(len(poly) != 4 for poly, _ in road_poly):
            return False
        road = np.asarray([[(p[0], p[1]) for p in poly] for poly, _ in road_poly],
                          dtype=np.float64).reshape(-1, 4, 2)
        self.vertices = np.concatenate([self.grass, road], axis=0)
        self.xs = np.ascontiguousarray(self.vertices[:, :, 0])
        self.ys = np.ascontiguousarray(self.vertices[:, :, 1])
        self.road_poly, self.road_len = road_poly, len(road_poly)
        return True


def _make_fast_render_road(cr: types.ModuleType) -> Any:
    import pygame
    from pygame import gfxdraw

    rotate_unit = pygame.math.Vector2(1.0, 0.0).rotate_rad
    limit_lo = -cr.MAX_SHAPE_DIM
    limit_x = cr.WINDOW_W + cr.MAX_SHAPE_DIM
    limit_y = cr.WINDOW_H + cr.MAX_SHAPE_DIM
    n_grass = 400
    bounds = cr.PLAYFIELD
    field_x = np.array([bounds, bounds, -bounds, -bounds], dtype=np.float64)
    field_y = np.array([bounds, -bounds, -bounds, bounds], dtype=np.float64)
    screen_corners = np.array([[-COVER_MARGIN, -COVER_MARGIN], [cr.WINDOW_W + COVER_MARGIN, -COVER_MARGIN],
                               [cr.WINDOW_W + COVER_MARGIN, cr.WINDOW_H + COVER_MARGIN],
                               [-COVER_MARGIN, cr.WINDOW_H + COVER_MARGIN]], dtype=np.float64)

    def _covers_screen(qx: np.ndarray, qy: np.ndarray) -> bool:
        """Is the screen, grown by COVER_MARGIN px, strictly inside the convex quad (qx, qy)?"""
        ex, ey = np.roll(qx, -1) - qx, np.roll(qy, -1) - qy  # edges
        cross = ex[:, None] * (screen_corners[None, :, 1] - qy[:, None]) \
            - ey[:, None] * (screen_corners[None, :, 0] - qx[:, None])  # (edge, corner)
        return bool((cross > 0).all() or (cross < 0).all())

    def _stock_patches(self: Any, zoom: float, translation: Any, angle: float) -> None:
        # the stock grass and road loops (used only if the track has a non-quad polygon)
        for poly in _grass_polygons(cr.GRASS_DIM).tolist():
            self._draw_colored_polygon(self.surf, [tuple(p) for p in poly], self.grass_color, zoom,
                                       translation, angle)
        for poly, color in self.road_poly:
            poly = [(p[0], p[1]) for p in poly]
            color = [int(c) for c in color]
            self._draw_colored_polygon(self.surf, poly, color, zoom, translation, angle)

    def _render_road(self: Any, zoom: float, translation: Any, angle: float) -> None:
        cos, sin = rotate_unit(angle)  # Vector2.rotate_rad(angle) is (cos*x - sin*y, sin*x + cos*y)
        tx, ty = translation
        # background: the one unclipped polygon. When it covers the whole screen with a wide margin (so
        # its anti-aliased edges are off screen too), filling the surface gives the same pixels, faster.
        fx = (cos * field_x - sin * field_y) * zoom + tx
        fy = (sin * field_x + cos * field_y) * zoom + ty
        stats = self._fast_render_stats
        if _covers_screen(fx, fy):
            stats["background_fill"] += 1
            self.surf.fill(_mapped_color(self.surf, self.bg_color))
        else:
            stats["background_polygon"] += 1
            bounds = cr.PLAYFIELD
            field = [(bounds, bounds), (bounds, -bounds), (-bounds, -bounds), (-bounds, bounds)]
            self._draw_colored_polygon(self.surf, field, self.bg_color, zoom, translation, angle, clip=False)

        geometry: _Geometry = self._fast_render_geometry
        if not geometry.update(self.road_poly):
            stats["stock_patches"] += 1
            _stock_patches(self, zoom, translation, angle)
            return
        xs, ys = geometry.xs, geometry.ys
        px = (cos * xs - sin * ys) * zoom + tx
        py = (sin * xs + cos * ys) * zoom + ty
        # the stock clip test: some vertex inside the screen grown by MAX_SHAPE_DIM
        inside = (limit_lo <= px) & (px <= limit_x) & (limit_lo <= py) & (py <= limit_y)
        visible = inside.any(axis=1)
        # also skip polygons lying wholly beyond one screen edge (by > OFF_SCREEN_MARGIN px): drawing
        # them changes no pixel (pygame truncates to ints and the anti-aliasing reaches 1 px).
        visible &= ~((px < -OFF_SCREEN_MARGIN).all(axis=1) | (px > cr.WINDOW_W + OFF_SCREEN_MARGIN).all(axis=1)
                     | (py < -OFF_SCREEN_MARGIN).all(axis=1) | (py > cr.WINDOW_H + OFF_SCREEN_MARGIN).all(axis=1))
        visible = np.flatnonzero(visible)
        stats["polygons_drawn"] += len(visible)
        if len(visible) == 0:
            return
        points = np.stack([px[visible], py[visible]], axis=-1).tolist()  # Python floats, as the stock code
        surf = self.surf
        grass_color = self.grass_color
        road_poly = self.road_poly
        for index, poly in zip(visible.tolist(), points):
            if index < n_grass:
                color = grass_color
            else:
                color = [int(c) for c in road_poly[index - n_grass][1]]
            poly = [(x, y) for x, y in poly]
            gfxdraw.aapolygon(surf, poly, color)
            gfxdraw.filled_polygon(surf, poly, color)

    return _render_road


def _make_fast_render(cr: types.ModuleType) -> Any:
    import pygame

    def _render(self: Any, mode: str) -> Any:
        # The stock CarRacing._render (gymnasium 1.4.0) with a cached font and score text.
        assert mode in self.metadata["render_modes"]

        pygame.font.init()
        if self.screen is None and mode == "human":
            pygame.display.init()
            self.screen = pygame.display.set_mode((cr.WINDOW_W, cr.WINDOW_H))
        if self.clock is None:
            self.clock = pygame.time.Clock()

        if "t" not in self.__dict__:
            return  # reset() not called yet

        self.surf = pygame.Surface((cr.WINDOW_W, cr.WINDOW_H))

        assert self.car is not None
        angle = -self.car.hull.angle
        zoom = 0.1 * cr.SCALE * max(1 - self.t, 0) + cr.ZOOM * cr.SCALE * min(self.t, 1)
        scroll_x = -(self.car.hull.position[0]) * zoom
        scroll_y = -(self.car.hull.position[1]) * zoom
        trans = pygame.math.Vector2((scroll_x, scroll_y)).rotate_rad(angle)
        trans = (cr.WINDOW_W / 2 + trans[0], cr.WINDOW_H / 4 + trans[1])

        self._render_road(zoom, trans, angle)
        self.car.draw(self.surf, zoom, trans, angle, mode not in ["state_pixels_list", "state_pixels"])

        self.surf = pygame.transform.flip(self.surf, False, True)

        self._render_indicators(cr.WINDOW_W, cr.WINDOW_H)

        text_string = f"{self.reward:04.0f}"
        cache: dict[str, Any] = self._fast_render_text
        text = cache.get(text_string)
        if text is None or not _font_cache:  # first use, or pygame was quit since (fonts/surfaces reset)
            if not _font_cache:
                cache.clear()
            text = _score_font().render(text_string, True, (255, 255, 255), (0, 0, 0))
            if len(cache) >= _TEXT_CACHE_SIZE:
                cache.pop(next(iter(cache)))
            cache[text_string] = text
        text_rect = text.get_rect()
        text_rect.center = (60, cr.WINDOW_H - cr.WINDOW_H * 2.5 / 40.0)
        self.surf.blit(text, text_rect)

        if mode == "human":
            pygame.event.pump()
            self.clock.tick(self.metadata["render_fps"])
            assert self.screen is not None
            self.screen.fill(0)
            self.screen.blit(self.surf, (0, 0))
            pygame.display.flip()
        elif mode == "rgb_array":
            return self._create_image_array(self.surf, (cr.VIDEO_W, cr.VIDEO_H))
        elif mode == "state_pixels":
            return self._create_image_array(self.surf, (cr.STATE_W, cr.STATE_H))
        else:
            return self.isopen

    return _render


def install_fast_render(env: gymnasium.Env, *, warn: bool = True) -> bool:
    """Make ``env`` (a ``gym.make("CarRacing-v3")`` env, wrappers and all) render faster, pixel for pixel the same.

    Patches the unwrapped env instance only. Returns True when installed; on an unverified gymnasium
    version (or a failed self check) it warns (:class:`UnverifiedVersion`) and returns False, leaving the
    stock renderer. Idempotent; :func:`uninstall_fast_render` restores the stock renderer.
    """
    from gymnasium.envs.box2d import car_racing as cr

    base = env.unwrapped
    if not isinstance(base, cr.CarRacing):
        raise TypeError(f"install_fast_render expects a CarRacing env, got {type(base).__name__}")
    if is_fast_render_installed(env):
        return True
    supported, reason = fast_render_supported()
    if not supported:
        if warn:
            warnings.warn(f"fast CarRacing rendering disabled, using the stock renderer: {reason}",
                          UnverifiedVersion, stacklevel=2)
        return False
    base._fast_render_geometry = _Geometry(_grass_polygons(cr.GRASS_DIM))
    base._fast_render_text = {}
    base._fast_render_stats = {"background_fill": 0, "background_polygon": 0, "stock_patches": 0,
                               "polygons_drawn": 0}  # counters, for tests and curiosity
    base._render_road = types.MethodType(_make_fast_render_road(cr), base)
    base._render = types.MethodType(_make_fast_render(cr), base)
    return True


def uninstall_fast_render(env: gymnasium.Env) -> None:
    """Restore the stock renderer on ``env`` (no-op if the fast one is not installed)."""
    base = env.unwrapped
    for name in ("_render", "_render_road", "_fast_render_geometry", "_fast_render_text", "_fast_render_stats"):
        base.__dict__.pop(name, None)


def is_fast_render_installed(env: gymnasium.Env) -> bool:
    return "_fast_render_geometry" in env.unwrapped.__dict__
