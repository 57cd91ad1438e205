"""Property-based fuzzing of the two input boundaries: the EMD solver and the image loader.

``solve_emd`` must solve every problem correctly (checked against an independent LP)
or refuse it with :class:`TransportError`; any other exception, and any warning (they
run as errors around the solver), is a failure. ``load_image`` must return a finite
(3, size, size) float32 array or raise :class:`ImageError`; any other exception is a
failure (Pillow's own warnings about corrupt metadata are tolerated).
"""

from __future__ import annotations

import functools
import io
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, note, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from emdcli.errors import ImageError, TransportError
from emdcli.io.images import Preprocess, load_image
from emdcli.matching.transport import solve_emd
from tests.test_transport import lp_emd

# --------------------------------------------------------------------------- transport

#: Values that break naive numerics: signed zeros, non-finite, overflow- and underflow-prone.
SPECIAL_VALUES = (0.0, -0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e300, -1e300, 1.7e308, 1e-300, 5e-324, -1e-300)
#: What is injected into an otherwise sensible array: a special value, a huge or tiny one, or any float.
ODD_VALUES = st.one_of(
    st.sampled_from(SPECIAL_VALUES),
    st.floats(1e250, 1e308),
    st.floats(0.0, 1e-250),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
)
#: Zero-weight problems: weights 0 or in [1e-2, 1e2] (so at least 1e-5 of the mass), costs 0 or 1e-3..1e3 in size.
MODERATE_WEIGHT = st.one_of(st.just(0.0), st.floats(1e-2, 1e2))
MODERATE_COST = st.one_of(st.just(0.0), st.floats(1e-3, 1e3), st.floats(-1e3, -1e-3))
#: The LP comparison needs every non-zero weight to be at least this fraction of its side's mass.
LP_MIN_WEIGHT = 1e-6


def max_abs(x: np.ndarray) -> float:
    return float(np.max(np.abs(x))) if x.size else 0.0


def well_posed(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> bool:
    """Whether solve_emd's documented preconditions hold (with masses equal to 1e-9 relative)."""
    if a.ndim != 1 or b.ndim != 1 or cost.shape != (a.size, b.size) or a.size == 0 or b.size == 0:
        return False
    weights = np.concatenate([a, b])
    if not (np.all(np.isfinite(weights)) and np.all(np.isfinite(cost)) and np.all(weights >= 0)):
        return False
    with np.errstate(over="ignore"):
        sa, sb = a.sum(), b.sum()
    return bool(0 < sa < np.inf and 0 < sb < np.inf and abs(sa - sb) <= 1e-9 * max(sa, sb))


def cost_scale(a: np.ndarray, cost: np.ndarray) -> float:
    """mass x largest |cost| (inf on overflow): a bound on |optimal cost|."""
    with np.errstate(over="ignore"):
        return float(a.sum()) * max_abs(cost)


def lp_checkable(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> bool:
    """Well posed, and moderately scaled once normalised by the masses and the largest |cost|.

    Non-zero weights of at least LP_MIN_WEIGHT of their side's mass (HiGHS' tolerances are about
    1e-7), and mass x largest |cost| far from float64's underflow and overflow (so that the flow
    is priced to ~1e-15 relative: the products that matter are normal numbers).
    """
    if not well_posed(a, b, cost):
        return False
    for w in (a, b):
        if np.any((w != 0) & (w < LP_MIN_WEIGHT * w.sum())):
            return False
    return max_abs(cost) == 0 or 1e-300 <= cost_scale(a, cost) <= 1e300


def check_plan(a: np.ndarray, b: np.ndarray, cost: np.ndarray) -> str | None:
    """Run ``solve_emd`` and check the plan it returns; the refusal message if it refused."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a warning is a crash under ``python -W error``
        try:
            plan = solve_emd(a, b, cost)
        except TransportError as exc:
            note(f"refused: {exc}")
            event("refused")
            return str(exc)
    event("solved")
    # It was accepted, so it must have been well posed (masses within the solver's 1e-6 tolerance).
    assert a.ndim == 1 and b.ndim == 1 and cost.shape == (a.size, b.size)
    assert np.all(a >= 0) and np.all(b >= 0) and np.all(np.isfinite(cost))
    flow = plan.flow
    assert isinstance(flow, np.ndarray) and flow.shape == (a.size, b.size) and flow.dtype == np.float64
    assert np.all(np.isfinite(flow)) and isinstance(plan.cost, float) and np.isfinite(plan.cost)
    mass = float(a.sum())
    target = b * (mass / b.sum())  # b rescaled to a's mass, as documented
    tol = max(1e-9 * mass, 1e-300)  # subnormal masses (1e-317) keep fewer digits: an ulp there is 1e-323
    assert np.all(flow >= -1e-12 * max(mass, 1.0)), flow
    np.testing.assert_allclose(flow.sum(axis=1), a, rtol=1e-9, atol=tol)
    np.testing.assert_allclose(flow.sum(axis=0), target, rtol=1e-9, atol=tol)
    assert np.all(flow[a == 0] == 0) and np.all(flow[:, b == 0] == 0)  # zero weights carry nothing
    scale = cost_scale(a, cost)
    with np.errstate(over="ignore", invalid="ignore"):
        direct = float(np.sum(flow * cost))
    if np.isfinite(direct) and np.isfinite(scale):
        assert plan.cost == pytest.approx(direct, rel=1e-9, abs=max(1e-9 * scale, 1e-300))
    if lp_checkable(a, b, cost):
        # Compare on the normalised problem: the 1e-6 tolerance is relative to mass x largest |cost|.
        cmax = max_abs(cost) or 1.0
        expected = lp_emd(a / a.sum(), b / b.sum(), cost / cmax)
        event("checked against the LP")
        assert plan.cost / mass / cmax == pytest.approx(expected, rel=1e-6, abs=1e-6)
    return None


def inject(draw: st.DrawFn, arr: np.ndarray) -> np.ndarray:
    """``arr`` with one to three entries replaced by odd values."""
    if arr.size:
        for pos, value in draw(st.lists(st.tuples(st.integers(0, arr.size - 1), ODD_VALUES), min_size=1, max_size=3)):
            arr.flat[pos] = value
    return arr


#: Ways to spoil a problem; an example gets none (about half the time) or up to three of them.
DEFECTS = ("odd weights", "odd costs", "shape of a", "shape of b", "shape of cost", "rounding mass", "unequal mass")


@st.composite
def transport_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, b, cost): well-formed (zeros, extreme scales, negative costs included) or spoiled by DEFECTS."""
    defects = draw(st.one_of(st.just(frozenset()), st.frozensets(st.sampled_from(DEFECTS), min_size=1, max_size=3)))
    n, m = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    shape_a = draw(st.sampled_from([(0,), (n, 1), (1, n), ()])) if "shape of a" in defects else (n,)
    shape_b = draw(st.sampled_from([(0,), (m, 2), ()])) if "shape of b" in defects else (m,)
    scale = draw(st.sampled_from([1.0, 1.0, 1.0, 5e-324, 1e-300, 1e-150, 1e150, 1e300]))  # of the whole problem
    a = draw(hnp.arrays(np.float64, shape_a, elements=st.floats(0.0, 10.0))) * scale
    b = draw(hnp.arrays(np.float64, shape_b, elements=st.floats(0.0, 10.0))) * scale
    for w in (a, b):  # plenty of zero weights, sometimes all of them
        if w.ndim == 1 and draw(st.integers(0, 3)) == 0:
            w[draw(st.integers(0, 1)) :: 2] = 0.0
    if a.size and b.size:
        factor = 1 + 1e-9 if "rounding mass" in defects else 1.0
        factor = 1.5 if "unequal mass" in defects else factor
        with np.errstate(all="ignore"):
            b = b * (a.sum() / b.sum()) * factor
    if "odd weights" in defects:
        a, b = inject(draw, a), inject(draw, b)
    cost_shape = (n, m)
    if "shape of cost" in defects:
        shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=8)
        cost_shape = draw(shapes.filter(lambda shape: shape != (n, m)))
    cscale = draw(st.sampled_from([1.0, 1.0, 1e3, 1e-300, 1e300, 1e307]))
    low = draw(st.sampled_from([0.0, 0.0, -10.0]))  # negative costs are allowed
    cost = draw(hnp.arrays(np.float64, cost_shape, elements=st.floats(low, 10.0))) * cscale
    if "odd costs" in defects:
        cost = inject(draw, cost)
    return a, b, cost


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(transport_problems())
def test_solve_emd_solves_or_refuses(problem: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, cost = problem
    refusal = check_plan(a, b, cost)
    if well_posed(a, b, cost) and cost_scale(a, cost) <= 1e300:  # its optimal cost cannot overflow
        assert refusal is None, "a well-posed problem was refused"


@st.composite
def moderate_problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Well-posed, LP-checkable problems, mostly with zero weights (each side keeps a positive one)."""
    n, m = draw(st.integers(1, 8)), draw(st.integers(1, 8))
    a = draw(hnp.arrays(np.float64, n, elements=MODERATE_WEIGHT))
    b = draw(hnp.arrays(np.float64, m, elements=MODERATE_WEIGHT))
    a[draw(st.integers(0, n - 1))] = draw(st.floats(1e-2, 1e2))
    b[draw(st.integers(0, m - 1))] = draw(st.floats(1e-2, 1e2))
    b = b * (a.sum() / b.sum())
    b[b < 1e-2] = 0.0
    assume(abs(a.sum() - b.sum()) <= 1e-9 * a.sum())
    cost = draw(hnp.arrays(np.float64, (n, m), elements=MODERATE_COST))
    return a, b, cost


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(moderate_problems())
def test_zero_weights_are_solved_exactly(problem: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    a, b, cost = problem
    event(f"zero weights: {int((a == 0).sum() + (b == 0).sum())}")
    assert lp_checkable(a, b, cost)
    assert check_plan(a, b, cost) is None, "a well-posed problem with zero weights was refused"


NOT_NUMBERS = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.lists(st.one_of(st.floats(0, 1), st.text(max_size=2), st.none()), max_size=3),
    st.lists(st.lists(st.floats(0, 1), max_size=3), max_size=3),  # often ragged
    st.lists(st.complex_numbers(max_magnitude=2), min_size=1, max_size=3),
    st.builds(lambda z: np.array(z, dtype=np.complex128), st.lists(st.complex_numbers(max_magnitude=2), max_size=3)),
    st.builds(lambda z: np.array(z, dtype=object), st.lists(st.floats(0, 1), max_size=3)),
    st.just({"a": 1.0}),
)


@settings(max_examples=150, deadline=None)
@given(
    st.one_of(NOT_NUMBERS, st.just([0.5, 0.5])),
    st.one_of(NOT_NUMBERS, st.just([1.0])),
    st.one_of(NOT_NUMBERS, st.just([[0.0], [1.0]])),
)
def test_solve_emd_refuses_non_numeric_input(a: object, b: object, cost: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            solve_emd(a, b, cost)
        except TransportError:
            event("refused")
            return
    event("solved")
    # Accepted, so all three were real numbers after all (numeric strings and object arrays convert).
    assert not any(np.iscomplexobj(x) for x in (a, b, cost))
    assert check_plan(*(np.asarray(x, dtype=np.float64) for x in (a, b, cost))) is None


# --------------------------------------------------------------------------- images

PREP = Preprocess(size=16, resize="squash")


def check_loaded(data: bytes, name: str) -> None:
    """Write ``data`` to a fresh ``name`` and check that load_image returns a sane array or ImageError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # Pillow's "Corrupt EXIF data" and the like
            try:
                arr = load_image(path, PREP)
            except ImageError as exc:
                event("ImageError")
                assert str(path) in str(exc)
                return
    event("decoded")
    assert isinstance(arr, np.ndarray) and arr.shape == (3, 16, 16) and arr.dtype == np.float32
    assert np.all(np.isfinite(arr))


#: File openings that get random bytes past Pillow's format sniffing, into the decoders.
MAGIC = (b"", b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF89a", b"GIF87a\x10\x00\x10\x00")


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(MAGIC), st.binary(max_size=2000), st.sampled_from(["x.png", "x.jpg", "x.gif"]))
def test_random_bytes_load_or_raise_image_error(magic: bytes, data: bytes, name: str) -> None:
    check_loaded(magic + data, name)


@functools.cache
def valid_image(kind: str) -> bytes:
    """A small valid image: ``"png"`` (RGB), ``"png-p"`` (palette, one transparent index) or ``"jpeg"`` (with EXIF)."""
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8))
    buf = io.BytesIO()
    if kind == "png":
        img.save(buf, format="PNG")
    elif kind == "png-p":
        img.quantize(8).save(buf, format="PNG", transparency=0)
    else:
        exif = Image.Exif()
        exif[0x0112] = 6  # orientation: rotated, so exif_transpose has work to do
        exif[0x010F] = "emdcli"  # make
        img.save(buf, format="JPEG", quality=80, exif=exif.tobytes())
    return buf.getvalue()


def repair_png_crcs(data: bytearray) -> bytearray:
    """Recompute every complete chunk's CRC, so that damage reaches the decoder instead of the CRC check."""
    pos = 8
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data):
            break
        data[end : end + 4] = zlib.crc32(data[pos + 4 : end]).to_bytes(4, "big")
        pos = end + 4
    return data


@pytest.mark.parametrize("kind", ["png", "png-p", "jpeg"])
def test_valid_images_load(kind: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / ("x.jpg" if kind == "jpeg" else "x.png")
        path.write_bytes(valid_image(kind))
        assert load_image(path, PREP).shape == (3, 16, 16)


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["png", "png-p", "jpeg"]),
    st.one_of(st.just(1.0), st.floats(0.0, 1.0)),  # fraction of the file kept
    st.lists(st.tuples(st.floats(0.0, 1.0, exclude_max=True), st.integers(0, 255)), max_size=8),  # byte flips
    st.booleans(),
)
def test_damaged_images_load_or_raise_image_error(
    kind: str, keep: float, flips: list[tuple[float, int]], repair: bool
) -> None:
    data = bytearray(valid_image(kind))
    for where, value in flips:
        data[int(where * len(data))] = value
    if kind != "jpeg" and repair:
        data = repair_png_crcs(data)
    data = data[: round(keep * len(data))] if keep < 1.0 else data
    note(f"{len(data)} bytes, flips={flips}")
    check_loaded(bytes(data), "x.jpg" if kind == "jpeg" else "x.png")
