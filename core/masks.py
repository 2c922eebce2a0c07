"""Synthetic face masks drawn onto photos from the five MTCNN landmarks of each face.

The masks make masked training and test images from unmasked photos. A mask
covers the nose from about the middle of the nose bridge, the mouth and the chin,
and never the eyes. Four kinds are drawn (:data:`MASK_TYPES`):

``surgical``
    Pleated rectangle pinched at the nose, in light blue, white, black, pink or
    light green, with ear loops.
``cloth``
    Rounder fabric mask, solid or with stripes, dots or plaid, often with a
    vertical centre seam, with ear loops.
``kn95``
    Folded shape that narrows to the chin, with a vertical centre seam and
    heat-sealed edges, with ear loops.
``n95``
    Rounded cup in white or grey, sometimes with an exhalation valve, with two
    head straps.

Every random choice (shape, position jitter, colour, pattern, shading, straps,
fabric noise) is a field of :class:`MaskStyle`, so one style draws the same mask
on the same face every time. :func:`random_mask_style` draws a style from a
``numpy.random.Generator``.

Geometry. The landmarks are ``(x, y)`` image pixels in the order left eye, right
eye, nose tip, left mouth corner, right mouth corner ("left" as seen in the image),
as :class:`core.detection.DetectedFace` stores them. Pixel ``(i, j)`` covers the
unit square from ``(i, j)`` to ``(i + 1, j + 1)``, as in :mod:`core.alignment`, so
its centre is ``(i + 0.5, j + 0.5)``. Masks are designed in a face frame whose x
unit is the eye distance (eyes at x = -0.5 and 0.5) and whose y unit is the
distance from the eye line down to the mouth line (eyes at y = 0, mouth corners at
y = 1). An affine map fitted to the eyes and mouth corners places that frame on the
image, so roll, scale and the face's proportions follow the landmarks. The nose
tip's sideways offset gives a yaw estimate, and a cylinder head model then
narrows the mask on the side that turns away.

Face width and chin position are not among the landmarks and come from typical
proportions: the face half-width is about 1.1 eye distances and the chin is
about 1.7 eye-to-mouth distances below the eye line.

Drawing uses Pillow polygons and lines supersampled up to 4x for antialiasing,
and numpy for the texture and shading.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, overload

import numpy as np
from PIL import Image, ImageDraw

logger = logging.getLogger(__name__)

MASK_TYPES = ("surgical", "cloth", "kn95", "n95")
PATTERNS = ("plain", "stripes", "dots", "plaid")

# No pixel whose centre lies within this fraction of the eye distance from an eye
# landmark is ever covered, whatever the style sets.
EYE_CLEARANCE = 0.3

# Face frame of the affine fit: left eye, right eye, left and right mouth corner. The
# mouth corner x is the mean MTCNN position on LFW (core.alignment's template, where
# the mouth corners are 0.88 of the eye distance apart).
_FRAME_POINTS = np.array([[-0.5, 0.0], [0.5, 0.0], [-0.44, 1.0], [0.44, 1.0]])
_NOSE_FRAME_Y = 0.54

# Cylinder head model, in eye distances: the face half-width and the distance of the
# nose tip from the head's vertical axis. Both are typical adult proportions (face
# width about 2.2 eye distances, nose tip about 0.4 eye distances in front of the
# cheeks), not measurements of the face at hand.
_HEAD_RADIUS = 1.1
_NOSE_RADIUS = 1.4
_MAX_YAW = math.radians(45.0)

# Radius of an N95 exhalation valve, in eye distances.
_VALVE_RADIUS = 0.24

# Supersampled raster sides stay below these sizes, in pixels, so large faces fall
# back to less supersampling instead of using gigabytes of memory.
_MAX_ALPHA_RASTER = 4096
_MAX_TEXTURE_RASTER = 1024
_MAX_SUPERSAMPLING = 4

_SURGICAL_COLOURS = {
    "light blue": (150, 197, 226),
    "white": (236, 238, 238),
    "black": (38, 38, 42),
    "pink": (238, 178, 196),
    "light green": (168, 214, 186),
}
_CLOTH_COLOURS = {
    "black": (32, 32, 36),
    "navy": (34, 44, 82),
    "grey": (128, 130, 134),
    "white": (228, 226, 220),
    "denim": (70, 98, 140),
    "burgundy": (112, 30, 44),
    "olive": (92, 98, 58),
    "beige": (208, 186, 154),
    "pink": (226, 150, 170),
    "red": (178, 40, 44),
    "sky blue": (120, 170, 215),
}
_KN95_COLOURS = {
    "white": (234, 234, 230),
    "black": (34, 34, 38),
    "grey": (150, 152, 156),
    "light blue": (160, 196, 222),
    "pink": (236, 186, 198),
}
_N95_COLOURS = {
    "white": (232, 232, 226),
    "light grey": (206, 206, 204),
    "grey": (168, 170, 172),
}
_VALVE_COLOURS = ((110, 112, 118), (220, 120, 40), (60, 110, 170), (236, 236, 236), (180, 182, 186))
_STRAP_COLOURS = ((236, 236, 236), (60, 110, 180), (230, 200, 60), (40, 40, 44))
_PALETTES = {"surgical": _SURGICAL_COLOURS, "cloth": _CLOTH_COLOURS, "kn95": _KN95_COLOURS, "n95": _N95_COLOURS}

Colour = tuple[int, int, int]


@dataclass(frozen=True)
class MaskStyle:
    """Every choice that shapes and paints one mask, as :func:`random_mask_style` draws them.

    Lengths are in the face frame described in the module docstring: x in eye
    distances from the eye midpoint, y in eye-to-mouth distances below the eye line.

    Attributes:
        kind: one of :data:`MASK_TYPES`.
        colour: main RGB colour of the fabric.
        pattern: one of :data:`PATTERNS`; printed over ``colour`` in ``pattern_colour``.
        pattern_colour: RGB colour of stripes, dots or plaid lines.
        pattern_period: repeat distance of the pattern, in eye distances.
        pattern_angle: pattern rotation against the eye line, in degrees.
        half_width: half the mask width at its widest, in eye distances.
        top: y of the top edge at the nose bridge.
        top_side: y where the top edge meets the sides; surgical, cloth and KN95
            masks keep their top edge near this height below the eyes too.
        chin: y of the bottom edge at the centre, below the chin.
        jaw: y where the sides start to curve in towards the chin (not used by
            ``n95``, whose lower outline curves in from ``top_side``).
        roundness: exponent of the superellipse of the lower outline; 2 is an
            ellipse, larger is boxier, smaller is more pointed.
        offset: position jitter ``(dx, dy)`` of the whole mask in the face frame.
        pleats: number of horizontal pleats (surgical masks), 0 for none.
        centre_seam: draw a vertical seam down the middle.
        light_angle: direction the light comes from in the face frame, in degrees
            (0 is from the right of the image, 90 from below).
        shading: strength of the lighting gradient, 0 for flat colour.
        noise: standard deviation of the fabric grain, in 8-bit grey levels.
        strap_colour: RGB colour of the ear loops or head straps.
        strap_width: width of the ear loops or head straps, in eye distances.
        valve: draw an exhalation valve (drawn for ``n95`` only).
        valve_colour: RGB colour of the valve.
        valve_offset: x of the valve centre in eye distances (0 is the middle).
        seed: seed of the fabric grain noise.
    """

    kind: str
    colour: Colour
    pattern: str = "plain"
    pattern_colour: Colour = (255, 255, 255)
    pattern_period: float = 0.2
    pattern_angle: float = 0.0
    half_width: float = 1.02
    top: float = 0.27
    top_side: float = 0.4
    chin: float = 1.85
    jaw: float = 1.0
    roundness: float = 2.4
    offset: tuple[float, float] = (0.0, 0.0)
    pleats: int = 0
    centre_seam: bool = False
    light_angle: float = -60.0
    shading: float = 0.2
    noise: float = 3.0
    strap_colour: Colour = (236, 236, 236)
    strap_width: float = 0.03
    valve: bool = False
    valve_colour: Colour = (96, 98, 104)
    valve_offset: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.kind not in MASK_TYPES:
            raise ValueError(f"unknown mask kind {self.kind!r}; expected one of {', '.join(MASK_TYPES)}")
        if self.pattern not in PATTERNS:
            raise ValueError(f"unknown mask pattern {self.pattern!r}; expected one of {', '.join(PATTERNS)}")
        for name in ("colour", "pattern_colour", "strap_colour", "valve_colour"):
            value = getattr(self, name)
            if len(value) != 3 or not all(
                isinstance(channel, (int, np.integer)) and 0 <= channel <= 255 for channel in value
            ):
                raise ValueError(f"{name} must be three integers in 0..255, got {value!r}")
        if not 0.2 <= self.half_width <= 1.5:
            raise ValueError(f"half_width must be in [0.2, 1.5] eye distances, got {self.half_width}")
        if not self.top < self.jaw < self.chin or self.top_side >= self.chin:
            raise ValueError(
                "expected top < jaw < chin and top_side < chin, "
                f"got top={self.top}, top_side={self.top_side}, jaw={self.jaw}, chin={self.chin}"
            )
        if self.roundness <= 0 or self.pattern_period <= 0 or self.strap_width < 0:
            raise ValueError(
                "roundness and pattern_period must be positive and strap_width not negative, got "
                f"{self.roundness}, {self.pattern_period}, {self.strap_width}"
            )
        if self.pleats < 0 or self.noise < 0 or self.shading < 0:
            raise ValueError(
                f"pleats, noise and shading must not be negative, got {self.pleats}, {self.noise}, {self.shading}"
            )


def random_mask_style(rng: np.random.Generator, kind: str | None = None) -> MaskStyle:
    """Draw a random style of ``kind``, or of a kind chosen uniformly from :data:`MASK_TYPES` when None.

    Raises:
        ValueError: ``kind`` is not one of :data:`MASK_TYPES`.
    """
    if kind is None:
        kind = str(rng.choice(MASK_TYPES))
    if kind not in MASK_TYPES:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_TYPES)}")

    common = {
        "offset": (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.03, 0.05))),
        "light_angle": float(rng.uniform(-180.0, 180.0)),
        "shading": float(rng.uniform(0.1, 0.3)),
        "noise": float(rng.uniform(1.5, 4.0)),
        "seed": int(rng.integers(0, 2**31)),
    }
    palette = _PALETTES[kind]
    colour = _jitter_colour(rng, palette[str(rng.choice(list(palette)))], 8)

    if kind == "surgical":
        strap = colour if rng.random() < 0.5 else _jitter_colour(rng, (236, 236, 236), 6)
        return MaskStyle(
            kind=kind,
            colour=colour,
            half_width=float(rng.uniform(0.96, 1.06)),
            top=float(rng.uniform(0.22, 0.32)),
            top_side=float(rng.uniform(0.32, 0.44)),
            chin=float(rng.uniform(1.78, 1.95)),
            jaw=float(rng.uniform(0.95, 1.15)),
            roundness=float(rng.uniform(2.2, 3.0)),
            pleats=int(rng.integers(2, 5)),
            strap_colour=strap,
            strap_width=float(rng.uniform(0.02, 0.035)),
            **common,
        )

    if kind == "cloth":
        pattern = str(rng.choice(PATTERNS, p=[0.4, 0.2, 0.2, 0.2]))
        pattern_colour = _contrasting_colour(rng, colour)
        return MaskStyle(
            kind=kind,
            colour=colour,
            pattern=pattern,
            pattern_colour=pattern_colour,
            pattern_period=float(rng.uniform(0.12, 0.3)),
            pattern_angle=float(rng.choice([0.0, 90.0, 45.0, -45.0, rng.uniform(-30.0, 30.0)])),
            half_width=float(rng.uniform(0.95, 1.05)),
            top=float(rng.uniform(0.22, 0.3)),
            top_side=float(rng.uniform(0.34, 0.46)),
            chin=float(rng.uniform(1.82, 2.0)),
            jaw=float(rng.uniform(0.75, 0.95)),
            roundness=float(rng.uniform(1.8, 2.3)),
            centre_seam=bool(rng.random() < 0.6),
            strap_colour=colour,
            strap_width=float(rng.uniform(0.03, 0.05)),
            **common,
        )

    if kind == "kn95":
        return MaskStyle(
            kind=kind,
            colour=colour,
            half_width=float(rng.uniform(0.92, 1.02)),
            top=float(rng.uniform(0.22, 0.3)),
            top_side=float(rng.uniform(0.5, 0.62)),
            chin=float(rng.uniform(1.8, 1.95)),
            jaw=float(rng.uniform(0.9, 1.1)),
            roundness=float(rng.uniform(1.3, 1.6)),
            centre_seam=True,
            strap_colour=colour if rng.random() < 0.7 else _jitter_colour(rng, (236, 236, 236), 6),
            strap_width=float(rng.uniform(0.02, 0.03)),
            **common,
        )

    # Moulded N95 fibre is smoother than woven fabric.
    common["noise"] = float(rng.uniform(1.0, 2.5))
    return MaskStyle(
        kind=kind,
        colour=colour,
        half_width=float(rng.uniform(0.84, 0.94)),
        top=float(rng.uniform(0.24, 0.32)),
        top_side=float(rng.uniform(0.9, 1.0)),
        chin=float(rng.uniform(1.8, 1.92)),
        jaw=float(rng.uniform(0.95, 1.05)),
        roundness=float(rng.uniform(1.9, 2.3)),
        strap_colour=_jitter_colour(rng, _STRAP_COLOURS[int(rng.integers(len(_STRAP_COLOURS)))], 6),
        strap_width=float(rng.uniform(0.04, 0.06)),
        valve=bool(rng.random() < 0.4),
        valve_colour=_VALVE_COLOURS[int(rng.integers(len(_VALVE_COLOURS)))],
        valve_offset=float(rng.choice([-0.3, 0.0, 0.0, 0.3])),
        **common,
    )


@overload
def draw_mask(
    pixels: np.ndarray, landmarks: np.ndarray, style: MaskStyle, *, return_coverage: Literal[False] = False
) -> np.ndarray: ...


@overload
def draw_mask(
    pixels: np.ndarray, landmarks: np.ndarray, style: MaskStyle, *, return_coverage: Literal[True]
) -> tuple[np.ndarray, np.ndarray]: ...


def draw_mask(
    pixels: np.ndarray, landmarks: np.ndarray, style: MaskStyle, *, return_coverage: bool = False
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Draw one mask on the face with ``landmarks`` and return the masked copy of ``pixels``.

    The input array is never modified. Pixels outside the coverage that
    :func:`mask_region` returns for the same landmarks, style and shape are
    copied unchanged, and no pixel whose centre lies within :data:`EYE_CLEARANCE`
    eye distances of an eye landmark is covered. The output depends only on the
    arguments.

    Args:
        pixels: (H, W, 3) uint8 RGB image.
        landmarks: (5, 2) ``(x, y)`` pixels in the order left eye, right eye, nose
            tip, left mouth corner, right mouth corner. Pixel (i, j) covers the unit
            square from (i, j) to (i + 1, j + 1).
        style: the mask to draw.
        return_coverage: also return the (H, W) bool coverage.

    Returns:
        The (H, W, 3) uint8 masked image, or ``(image, coverage)`` when
        ``return_coverage`` is true.

    Raises:
        ValueError: ``pixels`` is not an (H, W, 3) uint8 array, or ``landmarks`` is
            not (5, 2) finite numbers or puts the eyes and mouth on one line.
    """
    _check_pixels(pixels)
    frame = _FaceFrame.fit(_check_landmarks(landmarks))
    layers = _layout(frame, style, pixels.shape[:2])
    output = pixels.copy()
    coverage = np.zeros(pixels.shape[:2], dtype=bool)
    if layers is None:
        return (output, coverage) if return_coverage else output

    top, left = layers.origin
    height, width = layers.body_alpha.shape
    window = (slice(top, top + height), slice(left, left + width))
    original = pixels[window].astype(np.float32)
    body_colour, strap_colour, valve_colour = _paint(frame, style, layers, original)

    blended = original
    for colour, alpha in (
        (strap_colour, layers.strap_alpha),
        (body_colour, layers.body_alpha),
        (valve_colour, layers.valve_alpha),
    ):
        blended = blended * (1.0 - alpha[..., None]) + colour * alpha[..., None]

    local_coverage = layers.coverage()
    output[window] = np.where(local_coverage[..., None], np.clip(np.rint(blended), 0, 255), original).astype(np.uint8)
    coverage[window] = local_coverage
    return (output, coverage) if return_coverage else output


def mask_region(landmarks: np.ndarray, style: MaskStyle, shape: Sequence[int]) -> np.ndarray:
    """Return the (H, W) bool coverage of the mask that :func:`draw_mask` draws with the same arguments.

    A pixel is covered when the mask's opacity there is above zero, which takes in
    the antialiased rim and the ear loops or straps. :func:`draw_mask` changes no
    pixel outside it.

    Args:
        landmarks: (5, 2) ``(x, y)`` pixels, ordered as for :func:`draw_mask`.
        style: the mask.
        shape: ``(H, W)`` or ``(H, W, C)`` of the image.

    Raises:
        ValueError: ``shape`` has no positive height and width, or the landmarks are invalid.
    """
    if len(shape) not in (2, 3) or int(shape[0]) < 1 or int(shape[1]) < 1:
        raise ValueError(f"shape must be (H, W) or (H, W, C) with H, W >= 1, got {tuple(shape)!r}")
    size = (int(shape[0]), int(shape[1]))
    coverage = np.zeros(size, dtype=bool)
    layers = _layout(_FaceFrame.fit(_check_landmarks(landmarks)), style, size)
    if layers is not None:
        top, left = layers.origin
        height, width = layers.body_alpha.shape
        coverage[top : top + height, left : left + width] = layers.coverage()
    return coverage


def synthesize_masked(
    pixels: np.ndarray,
    landmarks: np.ndarray,
    count: int,
    *,
    seed: int,
    kinds: Sequence[str] = MASK_TYPES,
    restyle: Callable[[MaskStyle], MaskStyle] | None = None,
) -> list[np.ndarray]:
    """Draw ``count`` different random masks on one face and return the masked copies.

    Each run of ``len(kinds)`` variants uses every kind once, in an order shuffled
    by the seed, so a dataset built from them stays balanced. The same arguments
    always return the same images.

    Args:
        pixels: (H, W, 3) uint8 RGB image.
        landmarks: (5, 2) ``(x, y)`` pixels, ordered as for :func:`draw_mask`.
        count: number of variants, 0 or more.
        seed: seed of every random choice.
        kinds: mask kinds to draw from.
        restyle: applied to each drawn style before the mask is painted, for example to
            raise every mask. The random draws stay the same, so the masks differ from the
            default ones only in what ``restyle`` changes.

    Raises:
        ValueError: ``count`` is negative, ``kinds`` is empty or names an unknown
            kind, or the image or landmarks are invalid.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    if not kinds:
        raise ValueError(f"kinds must name at least one of {', '.join(MASK_TYPES)}")
    for kind in kinds:
        if kind not in MASK_TYPES:
            raise ValueError(f"unknown mask kind {kind!r}; expected one of {', '.join(MASK_TYPES)}")
    _check_pixels(pixels)
    checked = _check_landmarks(landmarks)

    rng = np.random.default_rng(seed)
    order: list[str] = []
    variants = []
    for _ in range(count):
        if not order:
            order = [str(kind) for kind in rng.permutation(np.array(kinds))]
        style = random_mask_style(rng, order.pop())
        if restyle is not None:
            style = restyle(style)
        variants.append(draw_mask(pixels, checked, style))
    return variants


def _check_pixels(pixels: np.ndarray) -> None:
    if not isinstance(pixels, np.ndarray) or pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
        shape = getattr(pixels, "shape", None)
        dtype = getattr(pixels, "dtype", type(pixels).__name__)
        raise ValueError(f"pixels must be an (H, W, 3) uint8 RGB array, got shape {shape} dtype {dtype}")
    if pixels.shape[0] < 1 or pixels.shape[1] < 1:
        raise ValueError(f"pixels must have at least one row and column, got shape {pixels.shape}")


def _check_landmarks(landmarks: np.ndarray) -> np.ndarray:
    try:
        points = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"landmarks must be a (5, 2) array of numbers: {exc}") from None
    if points.shape != (5, 2):
        raise ValueError(
            f"landmarks must have shape (5, 2) (eyes, nose tip, mouth corners as x, y), got {points.shape}"
        )
    if not np.isfinite(points).all():
        raise ValueError("landmarks must be finite numbers, got NaN or infinity")
    return points


def _jitter_colour(rng: np.random.Generator, colour: Colour, spread: int) -> Colour:
    shifted = np.clip(np.array(colour) + rng.integers(-spread, spread + 1, size=3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def _contrasting_colour(rng: np.random.Generator, colour: Colour) -> Colour:
    """Pick a pattern colour from the cloth palette that differs clearly in lightness from ``colour``."""
    lightness = float(np.dot(colour, (0.299, 0.587, 0.114)))
    candidates = [
        candidate
        for candidate in _CLOTH_COLOURS.values()
        if abs(float(np.dot(candidate, (0.299, 0.587, 0.114))) - lightness) > 60
    ]
    return _jitter_colour(rng, candidates[int(rng.integers(len(candidates)))], 8)


@dataclass(frozen=True)
class _FaceFrame:
    """Map between the face frame (x0, y) and image pixels.

    ``x0`` is the frontal face-frame x, before the yaw of the cylinder head
    model moves it. ``affine`` maps yawed frame points ``(x, y, 1)`` to image
    ``(x, y)`` pixels.
    """

    affine: np.ndarray
    inverse: np.ndarray
    yaw: float
    eyes: np.ndarray
    eye_distance: float

    @classmethod
    def fit(cls, landmarks: np.ndarray) -> _FaceFrame:
        """Fit the frame to checked (5, 2) landmarks, or raise ValueError when they are degenerate."""
        eyes = landmarks[:2]
        eye_distance = float(np.linalg.norm(eyes[1] - eyes[0]))
        reference = landmarks[[0, 1, 3, 4]]
        design = np.hstack([_FRAME_POINTS, np.ones((4, 1))])
        solution, *_ = np.linalg.lstsq(design, reference, rcond=None)
        affine = solution.T
        determinant = float(np.linalg.det(affine[:, :2]))
        if eye_distance < 1e-3 or abs(determinant) < 1e-6 * max(eye_distance, 1.0) ** 2:
            raise ValueError(
                "landmarks are degenerate: the eyes coincide or lie on one line with the mouth corners, "
                f"got {landmarks.tolist()}"
            )
        linear_inverse = np.linalg.inv(affine[:, :2])
        inverse = np.hstack([linear_inverse, (-linear_inverse @ affine[:, 2])[:, None]])

        # The nose tip sits in front of the eyes and mouth, so under yaw it moves sideways
        # more than they do. Its offset in the fitted frame is tan(yaw) times the difference
        # of the radii of the nose tip and the eyes.
        # NOTE: both radii are typical values, so the yaw is an estimate, clamped to 45 degrees.
        nose_x = float(inverse[0, :2] @ landmarks[2] + inverse[0, 2])
        eye_depth = math.sqrt(_HEAD_RADIUS**2 - 0.25)
        yaw = float(np.clip(math.atan(nose_x / (_NOSE_RADIUS - eye_depth)), -_MAX_YAW, _MAX_YAW))
        return cls(affine, inverse, yaw, eyes.copy(), eye_distance)

    def yawed_x(self, x0: np.ndarray) -> np.ndarray:
        """Move frontal frame x onto the rotated cylinder. Points that turn out of view stay on its outline."""
        radius = _HEAD_RADIUS
        inside = np.clip(x0 / radius, -1.0, 1.0)
        angle = np.clip(np.arcsin(inside) + self.yaw, -math.pi / 2, math.pi / 2)
        projected = radius * np.sin(angle)
        # Points beyond the head radius (ear loops, straps) continue straight outwards.
        projected = projected + np.sign(x0) * np.maximum(np.abs(x0) - radius, 0.0)
        eye_depth = math.sqrt(radius**2 - 0.25)
        return (projected - eye_depth * math.sin(self.yaw)) / math.cos(self.yaw)

    def surface_angle(self, x0: np.ndarray) -> np.ndarray:
        """Angle between the head surface at frontal x ``x0`` and the camera, in radians."""
        inside = np.clip(x0 / _HEAD_RADIUS, -1.0, 1.0)
        return np.clip(np.arcsin(inside) + self.yaw, -math.pi / 2, math.pi / 2)

    def strap_visible(self, x0: np.ndarray) -> np.ndarray:
        """Return which points at frontal x ``x0`` face the camera, allowing straps to stand 10 degrees off the head."""
        inside = np.clip(x0 / _HEAD_RADIUS, -1.0, 1.0)
        return np.abs(np.arcsin(inside) + self.yaw) <= math.radians(100.0)

    def to_image(self, x0: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Map frontal frame points of any shape (...) to (..., 2) image pixels."""
        x = self.yawed_x(np.asarray(x0, dtype=np.float64))
        y = np.asarray(y, dtype=np.float64)
        return np.stack([x, y, np.ones_like(x)], axis=-1) @ self.affine.T

    def to_frame(self, image_x: np.ndarray, image_y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Map image pixels back to frontal frame ``(x0, y)``. Pixels beyond the head outline get its x0."""
        x = self.inverse[0, 0] * image_x + self.inverse[0, 1] * image_y + self.inverse[0, 2]
        y = self.inverse[1, 0] * image_x + self.inverse[1, 1] * image_y + self.inverse[1, 2]
        table_x0 = np.linspace(-3.0, 3.0, 1201)
        table_x = self.yawed_x(table_x0)
        # np.interp needs increasing sample points, and yawed_x is flat where points leave view.
        table_x = table_x + np.arange(len(table_x)) * 1e-9
        return np.interp(x, table_x, table_x0), y

    @property
    def pixels_per_unit(self) -> tuple[float, float]:
        """Image pixels per frame x unit and per frame y unit."""
        return float(np.linalg.norm(self.affine[:, 0])), float(np.linalg.norm(self.affine[:, 1]))


@dataclass(frozen=True)
class _Outline:
    """Top and bottom edge of a mask, sampled over its frontal width, in the face frame."""

    x0: np.ndarray
    top: np.ndarray
    bottom: np.ndarray

    def polygon(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the closed outline: the top edge left to right, then the bottom edge back."""
        return np.concatenate([self.x0, self.x0[::-1]]), np.concatenate([self.top, self.bottom[::-1]])

    def edges_at(self, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.interp(x0, self.x0, self.top), np.interp(x0, self.x0, self.bottom)


def _outline(style: MaskStyle) -> _Outline:
    """Build the outline of ``style`` before the position jitter is applied."""
    half_width = style.half_width
    # Cosine spacing puts more samples near the sides, where the outline bends fastest.
    x0 = -half_width * np.cos(np.linspace(0.0, math.pi, 161))
    across = np.abs(x0) / half_width

    lower = (1.0 - np.minimum(across, 1.0) ** style.roundness) ** (1.0 / style.roundness)
    bottom = style.jaw + (style.chin - style.jaw) * lower

    if style.kind == "surgical":
        # The nose wire pinches the top edge into a bump about a nose wide.
        bump = np.exp(-((x0 / 0.2) ** 2))
        top = style.top_side + (style.top - style.top_side) * bump + 0.06 * across**2
    elif style.kind == "cloth":
        bump = np.exp(-((x0 / 0.3) ** 2))
        top = style.top_side + (style.top - style.top_side) * bump + 0.08 * across**2
    elif style.kind == "kn95":
        # Straight edges rising to a ridge at the nose, as the fold of the mask makes them.
        top = style.top + (style.top_side - style.top) * np.minimum(across / 0.85, 1.0) ** 1.2
    else:
        # The N95 cup: an oval whose upper half narrows towards the nose bridge.
        middle = style.top_side
        upper = (1.0 - np.minimum(across, 1.0) ** 1.8) ** (1.0 / 1.8)
        top = middle - (middle - style.top) * upper
        bottom = middle + (style.chin - middle) * lower
    return _Outline(x0, top, np.maximum(bottom, top))


def _keep_eyes_clear(frame: _FaceFrame, outline: _Outline, offset: tuple[float, float]) -> _Outline:
    """Lower the top edge wherever it comes nearer to an eye than the clearance plus 10 % and a pixel.

    The edge then follows a circle below the eye instead of being cut off there.
    """
    dx, dy = offset
    minimum = 1.1 * EYE_CLEARANCE * frame.eye_distance + 1.0
    steps = np.arange(0.0, 2.0, 0.01)
    x0 = np.broadcast_to(outline.x0[:, None] + dx, (len(outline.x0), len(steps)))
    y = outline.top[:, None] + dy + steps[None, :]
    points = frame.to_image(x0, y)
    clear = np.ones(x0.shape, dtype=bool)
    for eye in frame.eyes:
        clear &= np.linalg.norm(points - eye, axis=-1) >= minimum
    first_clear = np.where(clear.any(axis=1), np.argmax(clear, axis=1), len(steps) - 1)
    top = np.minimum(outline.top + steps[first_clear], outline.bottom)
    return _Outline(outline.x0, top, outline.bottom)


@dataclass
class _Layers:
    """Opacities of one mask in a window of the image, with its outline and valve centre before the jitter."""

    origin: tuple[int, int]
    body_alpha: np.ndarray
    strap_alpha: np.ndarray
    valve_alpha: np.ndarray
    outline: _Outline
    valve_centre: tuple[float, float] | None

    def coverage(self) -> np.ndarray:
        return (self.body_alpha > 0) | (self.strap_alpha > 0) | (self.valve_alpha > 0)


def _strap_paths(style: MaskStyle, outline: _Outline) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ear loops or head straps as polylines in the face frame, from the mask edge to beyond the face outline."""
    paths = []
    half_width = style.half_width
    for side in (-1.0, 1.0):
        corner_x = side * half_width * 0.98
        corner_top, corner_bottom = outline.edges_at(np.array([corner_x]))
        if style.kind == "n95":
            starts = [(corner_x * 0.97, corner_top[0] - 0.12), (side * half_width * 0.8, style.chin - 0.35)]
            # Head straps run over and under the ears, so they end where the face outline hides them.
            ends = [(side * _HEAD_RADIUS, 0.15), (side * (_HEAD_RADIUS - 0.05), 1.5)]
        else:
            low_y = corner_top[0] + 0.75 * (corner_bottom[0] - corner_top[0])
            starts = [(corner_x, corner_top[0] + 0.04), (side * half_width * 0.96, max(low_y, corner_top[0] + 0.3))]
            ends = [(side * (_HEAD_RADIUS + 0.06), 0.12), (side * (_HEAD_RADIUS + 0.05), 0.75)]
        for (start_x, start_y), (end_x, end_y) in zip(starts, ends, strict=True):
            # A quadratic curve that leaves the mask sideways and bends towards the ear.
            control_x, control_y = (start_x + end_x) / 2 + side * 0.05, (start_y + end_y) / 2 + 0.03
            t = np.linspace(0.0, 1.0, 12)
            xs = (1 - t) ** 2 * start_x + 2 * (1 - t) * t * control_x + t**2 * end_x
            ys = (1 - t) ** 2 * start_y + 2 * (1 - t) * t * control_y + t**2 * end_y
            paths.append((xs, ys))
    return paths


def _layout(frame: _FaceFrame, style: MaskStyle, size: tuple[int, int]) -> _Layers | None:
    """Rasterise the opacities of the mask, its straps and its valve, or return None when all are outside the image."""
    image_height, image_width = size
    dx, dy = style.offset
    outline = _keep_eyes_clear(frame, _outline(style), style.offset)
    body_x0, body_y = outline.polygon()
    body = frame.to_image(body_x0 + dx, body_y + dy)

    straps = []
    for xs, ys in _strap_paths(style, outline):
        # A strap is drawn from the mask edge up to where it goes behind the head.
        visible = frame.strap_visible(xs + dx)
        visible_points = len(xs) if visible.all() else int(np.argmin(visible))
        if visible_points >= 2:
            straps.append(frame.to_image(xs[:visible_points] + dx, ys[:visible_points] + dy))
    strap_width = max(style.strap_width * frame.eye_distance, 0.6)

    valve_centre = None
    valve = None
    if style.kind == "n95" and style.valve:
        valve_centre = (style.valve_offset, style.top_side + 0.2)
        centre = frame.to_image(np.array([valve_centre[0] + dx]), np.array([valve_centre[1] + dy]))[0]
        radius = _VALVE_RADIUS * frame.eye_distance
        squash = math.cos(float(frame.surface_angle(np.array([valve_centre[0] + dx]))[0]))
        angles = np.linspace(0.0, 2 * math.pi, 40, endpoint=False)
        eye_line = frame.eyes[1] - frame.eyes[0]
        along = eye_line / np.linalg.norm(eye_line)
        down = np.array([-along[1], along[0]])
        valve = (
            centre
            + np.outer(np.cos(angles) * radius * max(squash, 0.3), along)
            + np.outer(np.sin(angles) * radius, down)
        )

    everything = np.vstack([body, *straps])
    margin = strap_width + 2.0
    left = max(math.floor(everything[:, 0].min() - margin), 0)
    top = max(math.floor(everything[:, 1].min() - margin), 0)
    right = min(math.ceil(everything[:, 0].max() + margin), image_width)
    bottom = min(math.ceil(everything[:, 1].max() + margin), image_height)
    if right <= left or bottom <= top:
        return None

    width, height = right - left, bottom - top
    scale = int(np.clip(_MAX_ALPHA_RASTER // max(width, height), 1, _MAX_SUPERSAMPLING))

    def raster(points: np.ndarray) -> list[tuple[float, float]]:
        # A supersampled pixel k has its centre at image x = left + (k + 0.5) / scale, and
        # Pillow fills a pixel when its centre is inside, so image x maps to (x - left) * scale - 0.5.
        shifted = (points - np.array([left, top])) * scale - 0.5
        return [(float(x), float(y)) for x, y in shifted]

    # Photos are rarely sharper than a pixel, so the outline is softened by about one.
    body_alpha = _soften(_rasterise(lambda draw: draw.polygon(raster(body), fill=255), width, height, scale))

    def draw_straps(draw: ImageDraw.ImageDraw) -> None:
        line_width = max(round(strap_width * scale), 1)
        for path in straps:
            draw.line(raster(path), fill=255, width=line_width, joint="curve")

    strap_alpha = _rasterise(draw_straps, width, height, scale)
    if valve is not None:
        valve_alpha = _rasterise(lambda draw: draw.polygon(raster(valve), fill=255), width, height, scale)
    else:
        valve_alpha = np.zeros_like(body_alpha)

    # Clear a disc around each eye last, so no style, jitter or strap can cover an eye.
    clearance = EYE_CLEARANCE * frame.eye_distance
    columns = left + np.arange(width) + 0.5
    rows = top + np.arange(height) + 0.5
    near_eye = np.zeros((height, width), dtype=bool)
    for eye_x, eye_y in frame.eyes:
        near_eye |= (columns[None, :] - eye_x) ** 2 + (rows[:, None] - eye_y) ** 2 <= clearance**2
    if near_eye.any() and (body_alpha[near_eye].any() or strap_alpha[near_eye].any()):
        logger.debug("mask %s reached within %.1f px of an eye and was cut back", style.kind, clearance)
    for alpha in (body_alpha, strap_alpha, valve_alpha):
        alpha[near_eye] = 0.0

    return _Layers((top, left), body_alpha, strap_alpha, valve_alpha, outline, valve_centre)


def _rasterise(draw_shape: Callable[[ImageDraw.ImageDraw], None], width: int, height: int, scale: int) -> np.ndarray:
    """Draw with ``draw_shape`` on a ``scale``-times supersampled canvas and box-filter it to float opacity."""
    canvas = Image.new("L", (width * scale, height * scale), 0)
    draw_shape(ImageDraw.Draw(canvas))
    supersampled = np.asarray(canvas, dtype=np.float32) / 255.0
    return supersampled.reshape(height, scale, width, scale).mean(axis=(1, 3))


def _soften(alpha: np.ndarray) -> np.ndarray:
    """Blur with the separable kernel [1, 2, 1] / 4, treating pixels beyond the window as 0."""
    padded = np.pad(alpha, 1)
    rows = (padded[:-2, :] + 2 * padded[1:-1, :] + padded[2:, :]) / 4
    return (rows[:, :-2] + 2 * rows[:, 1:-1] + rows[:, 2:]) / 4


def _paint(
    frame: _FaceFrame, style: MaskStyle, layers: _Layers, original: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compute the RGB colour of the body, the straps and the valve for every pixel of the window."""
    height, width = layers.body_alpha.shape
    top, left = layers.origin
    scale = int(np.clip(_MAX_TEXTURE_RASTER // max(width, height), 1, _MAX_SUPERSAMPLING))
    columns = left + (np.arange(width * scale) + 0.5) / scale
    rows = top + (np.arange(height * scale) + 0.5) / scale
    face_x0, face_y = frame.to_frame(columns[None, :], rows[:, None])
    # Mask coordinates: the face frame shifted with the mask's position jitter.
    x0 = face_x0 - style.offset[0]
    y = face_y - style.offset[1]

    brightness = _shading(frame, style, layers.outline, face_x0, x0, y)
    base = np.asarray(style.colour, dtype=np.float32)
    colour = np.broadcast_to(base, (*x0.shape, 3)).astype(np.float32)
    coverage = _pattern_coverage(frame, style, x0, y)
    if coverage is not None:
        colour = colour + (np.asarray(style.pattern_colour, dtype=np.float32) - base) * coverage[..., None]
    colour = colour * brightness[..., None]

    body = _box_reduce(colour, scale)
    strap = np.broadcast_to(np.asarray(style.strap_colour, dtype=np.float32), body.shape) * 0.92
    valve = _valve_colour(frame, style, layers, x0, y, scale)

    exposure = _scene_exposure(original, layers.body_alpha)
    grain = np.random.default_rng(style.seed).normal(0.0, style.noise, size=(height, width, 1)).astype(np.float32)
    return body * exposure + grain, strap * exposure + grain, valve * exposure + grain


def _shading(
    frame: _FaceFrame, style: MaskStyle, outline: _Outline, face_x0: np.ndarray, x0: np.ndarray, y: np.ndarray
) -> np.ndarray:
    """Brightness factor of the fabric: lighting, curvature, folds, pleats and seams.

    ``face_x0`` is the frontal face-frame x, and ``(x0, y)`` are mask coordinates.
    """
    x_pixels, y_pixels = frame.pixels_per_unit
    top_edge, bottom_edge = outline.edges_at(x0)
    depth = np.clip((y - top_edge) / np.maximum(bottom_edge - top_edge, 1e-6), 0.0, 1.0)
    across = np.clip(x0 / style.half_width, -1.0, 1.0)

    # Fabric turning away from the camera towards the cheeks catches less light.
    brightness = 1.0 - 0.25 * (1.0 - np.cos(frame.surface_angle(face_x0)))

    angle = math.radians(style.light_angle)
    brightness = brightness * (1.0 + style.shading * (across * math.cos(angle) + (2 * depth - 1) * math.sin(angle)))

    # Below the chin the fabric faces downwards, away from most light.
    brightness = brightness * (1.0 - 0.25 * np.clip((y - 1.6) / 0.3, 0.0, 1.0))

    def line(distance_in_pixels: np.ndarray, width_in_pixels: float) -> np.ndarray:
        width_in_pixels = max(width_in_pixels, 0.7)
        return np.exp(-((distance_in_pixels / width_in_pixels) ** 2))

    if style.kind == "n95":
        # A dome: brightest in the middle of the cup, darker towards the rim.
        middle = style.top_side
        vertical = np.where(y < middle, (middle - y) / (middle - style.top), (y - middle) / (style.chin - middle))
        radius = np.clip(across**2 + vertical**2, 0.0, 1.0)
        brightness = brightness * (0.9 + 0.1 * np.sqrt(1.0 - radius))
        rim = line((1.0 - np.sqrt(radius)) * 0.5 * (bottom_edge - top_edge) * y_pixels, 0.05 * frame.eye_distance)
        brightness = brightness * (1.0 - 0.12 * rim)
        # The metal nose clip shows as a short band just below the top edge.
        clip_distance = (y - top_edge - 0.06) * y_pixels
        nose_clip = line(clip_distance, 0.03 * frame.eye_distance) * (np.abs(x0) < 0.22)
        brightness = brightness * (1.0 - 0.15 * nose_clip)
    else:
        # The fabric tents over the nose.
        nose = np.exp(-((x0 / 0.22) ** 2) - ((y - _NOSE_FRAME_Y) / 0.3) ** 2)
        brightness = brightness * (1.0 + 0.07 * nose)

    if style.kind == "surgical":
        # Pleats run straight across, so they are placed below the top edge without its nose bump.
        pleat_top = style.top_side + 0.06 * across**2
        pleat_height = np.maximum(bottom_edge - pleat_top, 1e-6) * y_pixels
        pleat_depth = (y - pleat_top) * y_pixels / pleat_height
        height_pixels = (bottom_edge - top_edge) * y_pixels
        for index in range(style.pleats):
            fold = 0.2 + 0.5 * index / max(style.pleats - 1, 1)
            distance = (pleat_depth - fold) * pleat_height
            # A bright fold edge with a shadow right below it.
            brightness = brightness * (1.0 + 0.1 * line(distance + 0.6, 0.6) - 0.22 * line(distance - 0.9, 0.9))
        binding = line(np.minimum(depth, 1.0 - depth) * height_pixels, 0.04 * frame.eye_distance)
        brightness = brightness * (1.0 - 0.1 * binding)

    if style.kind == "kn95":
        # The two folded panels face slightly apart, so one is lit more than the other.
        brightness = brightness * (1.0 + 0.06 * np.tanh(x0 * x_pixels / 1.5) * math.cos(angle))
        inset = 0.045 * frame.eye_distance
        edge_distance = np.minimum(
            np.minimum(y - top_edge, bottom_edge - y) * y_pixels,
            (style.half_width - np.abs(x0)) * x_pixels,
        )
        brightness = brightness * (1.0 - 0.18 * line(edge_distance - inset, 0.5))

    if style.centre_seam:
        brightness = brightness * (1.0 - 0.25 * line(x0 * x_pixels, 0.5))
    return np.clip(brightness, 0.2, 1.3)


def _pattern_coverage(frame: _FaceFrame, style: MaskStyle, x0: np.ndarray, y: np.ndarray) -> np.ndarray | None:
    """Return the fraction of ``pattern_colour`` at each point, in [0, 1], or None for a plain mask."""
    if style.pattern == "plain":
        return None
    x_pixels, y_pixels = frame.pixels_per_unit
    # Pattern coordinates in eye distances, so stripes and dots keep their shape on any face.
    u = x0
    v = y * y_pixels / x_pixels
    angle = math.radians(style.pattern_angle)
    along = u * math.cos(angle) + v * math.sin(angle)
    across = -u * math.sin(angle) + v * math.cos(angle)
    period = style.pattern_period

    if style.pattern == "stripes":
        return (np.mod(along / period, 1.0) < 0.45).astype(np.float32)
    if style.pattern == "dots":
        row = np.floor(across / period)
        shifted = along / period + 0.5 * np.mod(row, 2)
        dx = np.mod(shifted, 1.0) - 0.5
        dy = np.mod(across / period, 1.0) - 0.5
        return (dx**2 + dy**2 < 0.22**2).astype(np.float32)
    first = (np.mod(along / period, 1.0) < 0.3).astype(np.float32)
    second = (np.mod(across / period, 1.0) < 0.3).astype(np.float32)
    fine = (np.mod(along / period + 0.5, 1.0) < 0.06).astype(np.float32)
    return np.clip(0.45 * first + 0.45 * second + 0.5 * fine, 0.0, 1.0)


def _valve_colour(
    frame: _FaceFrame, style: MaskStyle, layers: _Layers, x0: np.ndarray, y: np.ndarray, scale: int
) -> np.ndarray:
    """Colour of the valve: a plastic disc with a groove around its centre."""
    height, width = layers.body_alpha.shape
    base = np.asarray(style.valve_colour, dtype=np.float32)
    if layers.valve_centre is None:
        return np.broadcast_to(base, (height, width, 3))
    x_pixels, y_pixels = frame.pixels_per_unit
    centre_x, centre_y = layers.valve_centre
    radius = _VALVE_RADIUS * frame.eye_distance
    distance = np.hypot((x0 - centre_x) * x_pixels, (y - centre_y) * y_pixels)
    ring = np.clip(distance / radius, 0.0, 1.0)
    # A slightly domed cover with a groove around its vented centre.
    groove = np.exp(-(((ring - 0.6) / 0.08) ** 2))
    brightness = 1.05 - 0.15 * ring**2 - 0.25 * groove
    return _box_reduce(base * brightness[..., None], scale)


def _box_reduce(values: np.ndarray, scale: int) -> np.ndarray:
    if scale == 1:
        return values
    height, width = values.shape[0] // scale, values.shape[1] // scale
    return values.reshape(height, scale, width, scale, -1).mean(axis=(1, 3))


def _scene_exposure(original: np.ndarray, body_alpha: np.ndarray) -> float:
    """Dim the mask in dark photos: the square root of the 90th luminance percentile under it, over 220.

    The percentile picks the highlights, which follow the light more than the skin tone does.
    """
    under = body_alpha > 0.5
    if not under.any():
        return 1.0
    luminance = original[under] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return float(np.clip(math.sqrt(float(np.percentile(luminance, 90)) / 220.0), 0.65, 1.0))
