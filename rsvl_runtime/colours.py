"""Class colours: the palette of a vocabulary, chosen by meaning, and the reserved colours.

:func:`class_palette` is the one way a vocabulary gets its colours (the bundle's default
vocabulary, ``--vocab``, ``--vocab-file`` and :class:`~rsvl_runtime.options.SceneOptions`
all come through it): a colour given by the caller (``"color"`` in a ``--vocab-file`` JSON)
wins; a class whose name or synonym is a well-known land-cover term gets that term's colour
(:data:`MEANINGS`: water blue, trees green, buildings red, roads grey ...; matched without case,
on the whole phrase, then its last word, then any word, simple plurals folded); the
others get the first candidate hue at least :data:`MIN_DELTA_E` (CIE76 Delta-E in CIELAB) from
every colour already taken and from the reserved colours. A meaning colour that clashes with a
taken one (two classes both "water") is shifted lighter/darker, then replaced by a free hue.

Reserved: :data:`NODATA_COLOR` (nodata: transparent in ``preview.png`` and in the colour table
of ``labels.tif``; the colour drawn under a hatched legend swatch) and
:data:`UNCLASSIFIED_COLOR` (the "unclassified" id of the ``min_score`` threshold,
:mod:`rsvl_runtime.postprocess`). :func:`palette_lut` turns a palette into a 256-entry RGBA
lookup table (class id -> RGBA, 255 = nodata with alpha 0).
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Iterable, Sequence

import numpy as np

from .outputs import LABEL_NODATA

Color = tuple[int, int, int]

#: Nodata: transparent (alpha 0) in previews and colour tables; this RGB sits under the alpha.
NODATA_COLOR: Color = (0, 0, 0)
#: The "unclassified" class of the ``min_score`` threshold (magenta: never a land-cover colour).
UNCLASSIFIED_COLOR: Color = (255, 0, 255)
#: Least CIE76 Delta-E between two class colours (and from the reserved colours) when rsvl picks them.
MIN_DELTA_E = 20.0

#: Well-known class terms -> colour. Keys are folded words/phrases (:func:`_fold`).
MEANINGS: dict[str, Color] = {}


def _meaning(color: Color, *terms: str) -> None:
    for t in terms:
        MEANINGS[_fold(t)] = color


def _stem(word: str) -> str:
    """Fold simple English plurals: trees->tree, bodies->body, bushes->bush (grass stays)."""
    w = word
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x")):
        if w.endswith(suffix) and len(w) > len(suffix) + 1:
            return w[: -len(suffix)] + repl
    if w.endswith("s") and not w.endswith(("ss", "us", "is")) and len(w) > 3:
        return w[:-1]
    return w


def _words(text: str) -> list[str]:
    return [_stem(w) for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def _fold(text: str) -> str:
    return " ".join(_words(text))


_meaning((31, 120, 180), "water", "water body", "river", "lake", "sea", "ocean", "pond", "reservoir", "stream",
         "canal", "lagoon", "bay", "waterbody")
_meaning((0, 160, 150), "wetland", "marsh", "swamp", "bog", "mangrove", "fen")
_meaning((51, 160, 44), "vegetation", "tree", "forest", "woodland", "wood", "jungle", "high vegetation",
         "tall vegetation", "canopy", "orchard")
_meaning((152, 223, 138), "low vegetation", "grass", "grassland", "meadow", "pasture", "lawn", "shrub",
         "shrubland", "scrub", "bush")
_meaning((205, 220, 57), "crop", "cropland", "farmland", "agriculture", "agricultural field", "field",
         "cultivated land", "paddy", "rice")
_meaning((227, 26, 28), "building", "house", "roof", "built up", "built up area", "urban", "settlement",
         "residential", "industrial", "impervious")
_meaning((140, 140, 140), "road", "street", "highway", "pavement", "motorway", "parking", "parking lot",
         "runway", "railway", "rail")
_meaning((166, 118, 64), "bare", "bare ground", "bare soil", "bare land", "soil", "barren", "barren ground",
         "ground", "dirt", "earth", "rock", "quarry")
_meaning((222, 196, 140), "sand", "beach", "dune", "desert")
_meaning((235, 245, 255), "snow", "ice", "glacier", "snow ice")
_meaning((150, 190, 225), "cloud", "haze", "cirrus")
_meaning((70, 60, 100), "shadow", "cloud shadow")
_meaning((196, 186, 170), "other", "background", "clutter", "misc", "miscellaneous", "unknown", "rest")


def meaning_color(phrases: Iterable[str]) -> Color | None:
    """The colour of the first phrase that is a well-known term: the whole phrase, then its last
    word (the head noun: "tall trees"), then any word ("water body"); None when none is."""
    folded = [_fold(p) for p in phrases if p and p.strip()]
    for key in folded:
        if key in MEANINGS:
            return MEANINGS[key]
    for key in folded:
        words = key.split()
        for w in [*words[-1:], *words[:-1]]:
            if w in MEANINGS:
                return MEANINGS[w]
    return None


# ----------------------------------------------------------------------------- distances
def _lab(c: Sequence[Sequence[int]] | np.ndarray) -> np.ndarray:
    """sRGB colours ``[n, 3]`` (0..255) -> CIELAB (D65) ``[n, 3]``."""
    rgb = np.asarray(c, np.float64).reshape(-1, 3)[:, :3] / 255.0
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def delta_e(a: Sequence[int], b: Sequence[int]) -> float:
    """CIE76 colour difference of two sRGB colours (about 2.3 is just noticeable)."""
    la, lb = _lab([list(a[:3]), list(b[:3])])
    return float(np.linalg.norm(la - lb))


def _min_distances(candidates: np.ndarray, taken: Sequence[Color]) -> np.ndarray:
    """Per candidate (Lab ``[n, 3]``), its Delta-E to the nearest taken colour."""
    if not taken:
        return np.full(len(candidates), np.inf)
    return np.linalg.norm(candidates[:, None, :] - _lab(taken)[None, :, :], axis=2).min(axis=1)


def default_colors(n: int) -> list[Color]:
    """``n`` candidate colours (golden-angle hues, alternating brightness)."""
    out = []
    for i in range(n):
        s, v = ((0.65, 0.95), (0.85, 0.70), (0.45, 0.85))[(i // 7) % 3]
        r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, s, v)
        out.append((int(r * 255), int(g * 255), int(b * 255)))
    return out


_CANDIDATES = default_colors(256)
_CANDIDATES_LAB = _lab(_CANDIDATES)


def _shifted(c: Color) -> list[Color]:
    """The colour and lighter/darker variants of it (a second "water" class)."""
    h, light, s = colorsys.rgb_to_hls(*(v / 255 for v in c))
    out = [c]
    for dl in (-0.2, 0.2, -0.32, 0.32):
        r, g, b = colorsys.hls_to_rgb(h, min(0.95, max(0.1, light + dl)), s)
        out.append((round(r * 255), round(g * 255), round(b * 255)))
    return out


def _first_free(options: Sequence[Color], lab: np.ndarray, taken: Sequence[Color], fallback: bool) -> Color | None:
    """The first of ``options`` at least :data:`MIN_DELTA_E` from ``taken``; with ``fallback`` the
    farthest one when none is (else None)."""
    d = _min_distances(lab, taken)
    ok = np.flatnonzero(d >= MIN_DELTA_E)
    if ok.size:
        return options[int(ok[0])]
    return options[int(np.argmax(d))] if fallback else None


def class_palette(classes: Sequence[Sequence[str]], given: Sequence[Sequence[int] | None] | None = None,
                  reserved: Sequence[Color] = (NODATA_COLOR, UNCLASSIFIED_COLOR)) -> list[Color]:
    """One colour per class. ``classes``: per class its phrases (name first, then synonyms);
    ``given``: per class a caller's colour or None (given colours are kept as they are).
    Classes without one get their meaning colour (:func:`meaning_color`) when it is free, else
    a distinct one (see the module docstring); ``reserved`` colours are never picked."""
    given = list(given or [])
    out: list[Color | None] = [None] * len(classes)
    taken: list[Color] = list(reserved)
    for i in range(len(classes)):
        g = given[i] if i < len(given) else None
        if g is not None:
            out[i] = (int(g[0]), int(g[1]), int(g[2]))
            taken.append(out[i])  # type: ignore[arg-type]
    for i, phrases in enumerate(classes):  # meanings first, so a free hue never takes "water"'s blue
        if out[i] is None and (m := meaning_color(phrases)) is not None:
            variants = _shifted(m)
            pick = _first_free(variants, _lab(variants), taken, fallback=False)
            if pick is not None:
                out[i] = pick
                taken.append(pick)
    for i in range(len(classes)):
        if out[i] is None:
            out[i] = _first_free(_CANDIDATES, _CANDIDATES_LAB, taken, fallback=True)
            taken.append(out[i])  # type: ignore[arg-type]
    return [c for c in out if c is not None]


def palette_lut(colors: Sequence[Sequence[int]]) -> np.ndarray:
    """``[256, 4]`` uint8 RGBA: class id -> its colour (opaque); unused ids and 255 (nodata) are
    transparent."""
    lut = np.zeros((256, 4), np.uint8)
    for i, c in enumerate(colors[:LABEL_NODATA]):
        lut[i] = [int(c[0]), int(c[1]), int(c[2]), 255]
    lut[LABEL_NODATA] = [*NODATA_COLOR, 0]
    return lut
