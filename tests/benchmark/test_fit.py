import pytest

from nca_cli.benchmark.fit import fit_line, largest_size
from nca_cli.benchmark.geometry import GEOMETRIES


def test_fit_recovers_an_exact_line():
    xs = [1e4, 4e4, 1.6e5, 6.4e5]
    ys = [3e6 + 35.5 * x for x in xs]
    fit = fit_line(xs, ys)
    assert fit.slope == pytest.approx(35.5)
    assert fit.intercept == pytest.approx(3e6)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.max_rel_residual < 1e-9
    assert fit.points == 4 and fit.x_max == 6.4e5


def test_fit_of_noisy_points_reports_its_residual():
    xs = [1.0, 2.0, 3.0, 4.0]
    ys = [10.0, 22.0, 29.0, 41.0]
    fit = fit_line(xs, ys)
    assert fit.slope == pytest.approx(10.0, abs=0.5)
    assert 0.9 < fit.r2 < 1.0
    worst = max(abs(y - fit.predict(x)) / y for x, y in zip(xs[2:], ys[2:]))
    assert fit.max_rel_residual == pytest.approx(worst)
    wide = fit_line([1.0, 2.0, 100.0, 200.0], [50.0, 60.0, 1000.0, 2000.0])   # the tiny points are off the line
    assert wide.max_rel_residual < 0.05                                     # only the larger half counts


def test_one_point_gives_the_line_through_the_origin():
    fit = fit_line([200.0], [50.0])
    assert fit.intercept == 0.0 and fit.slope == 0.25
    assert fit.predict(800) == 200.0


def test_fit_rejects_mismatched_input():
    with pytest.raises(ValueError):
        fit_line([1.0, 2.0], [1.0])
    with pytest.raises(ValueError):
        fit_line([], [])


def test_flat_line_allows_any_size_below_its_level():
    fit = fit_line([1.0, 2.0], [5.0, 5.0])
    assert largest_size(fit, 10.0, lambda s: s * s, hi=1000) == 1000
    assert largest_size(fit, 4.0, lambda s: s * s) is None


@pytest.mark.parametrize("quantum", [1, 16])
def test_largest_size_matches_brute_force_for_square_slides(quantum):
    g = GEOMETRIES["pathology"]
    fit = fit_line([1e4, 1e6], [2e6 + 40 * 1e4, 2e6 + 40 * 1e6])
    budget = 512 * 2 ** 20
    got = largest_size(fit, budget, g.pixels, quantum=quantum)
    want = max(s for s in range(quantum, 5000, quantum) if 2e6 + 40 * s * s <= budget)
    assert got == want
    assert fit.predict(g.pixels(got)) <= budget < fit.predict(g.pixels(got + quantum))


def test_largest_size_for_video_frames_and_limits():
    g = GEOMETRIES["surgery"]
    per_frame = 240 * 432 * 30.0
    fit = fit_line([g.pixels(1), g.pixels(10)], [per_frame, 10 * per_frame])
    assert largest_size(fit, 100.5 * per_frame, g.pixels) == 100
    assert largest_size(fit, 100.5 * per_frame, g.pixels, quantum=8) == 96
    assert largest_size(fit, 0.5 * per_frame, g.pixels) is None
    assert largest_size(fit, 1e30, g.pixels, hi=4096) == 4096


def test_geometry_reports_paper_units():
    path, surg = GEOMETRIES["pathology"], GEOMETRIES["surgery"]
    assert path.spatial_shape(1000) == (1000, 1000) and path.value(1000) == 1.0
    assert path.rate(2000, 2.0) == 2.0
    assert surg.spatial_shape(50) == (50, 240, 432) and surg.value(50) == 2.0
    assert surg.rate(50, 0.5) == 100.0
    assert path.size_for_pixels(path.pixels(777)) == pytest.approx(777)
    assert surg.size_for_pixels(surg.pixels(33)) == pytest.approx(33)
