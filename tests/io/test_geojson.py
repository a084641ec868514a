"""GeoJSON polygons of class masks: validity by RFC 7946 / simple-feature rules, exact round trip."""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from nca_cli.core.errors import NCAError
from nca_cli.io import write_geojson
from nca_cli.io.palette import PALETTE

NAMES = ["background", "tumour", "stroma", "other"]


# ----------------------------------------------------------------------------- helpers


def area2(ring: np.ndarray) -> float:
    """Twice the signed shoelace area of a closed ring (first == last)."""
    x, y = ring[:-1, 0], ring[:-1, 1]
    return float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def orient(u, v, w):
    return np.sign((v[..., 0] - u[..., 0]) * (w[..., 1] - u[..., 1]) - (v[..., 1] - u[..., 1]) * (w[..., 0] - u[..., 0]))


def segments_meet(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """[len(p), len(q)] whether segment p_i meets segment q_j (touching counts); rows are x1, y1, x2, y2."""
    pa, pb = p[:, None, :2], p[:, None, 2:]
    qa, qb = q[None, :, :2], q[None, :, 2:]
    o1, o2 = orient(pa, pb, qa), orient(pa, pb, qb)
    o3, o4 = orient(qa, qb, pa), orient(qa, qb, pb)
    line = (o1 == 0) & (o2 == 0)
    general = (o1 * o2 <= 0) & (o3 * o4 <= 0) & ~line

    def within(u, v, w):  # w inside the box of segment u-v (enough once collinear)
        lo, hi = np.minimum(u, v), np.maximum(u, v)
        return ((lo <= w) & (w <= hi)).all(axis=-1)

    collinear = line & (within(pa, pb, qa) | within(pa, pb, qb) | within(qa, qb, pa) | within(qa, qb, pb))
    return general | collinear


def ring_segments(ring: np.ndarray) -> np.ndarray:
    return np.concatenate([ring[:-1], ring[1:]], axis=1)


def inside(point, ring: np.ndarray) -> bool:
    x1, y1, x2, y2 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
    px, py = point
    cross = (y1 > py) != (y2 > py)
    with np.errstate(divide="ignore", invalid="ignore"):
        xs = x1 + (py - y1) * (x2 - x1) / (y2 - y1)
    return bool(np.count_nonzero(cross & (xs > px)) % 2)


def check_collection(doc: dict, object_type: str = "annotation") -> None:
    """Structural validity by RFC 7946 and the simple-feature rules QuPath's JTS expects."""
    assert doc["type"] == "FeatureCollection"
    assert isinstance(doc["features"], list)
    for feature in doc["features"]:
        assert feature["type"] == "Feature"
        props = feature["properties"]
        assert props["objectType"] == object_type
        assert isinstance(props["classification"]["name"], str)
        colour = props["classification"]["color"]
        assert len(colour) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        rings = [np.asarray(r, dtype=np.float64) for r in geometry["coordinates"]]
        assert rings
        for k, ring in enumerate(rings):
            assert ring.ndim == 2 and ring.shape[1] == 2 and ring.shape[0] >= 4
            assert (ring[0] == ring[-1]).all(), "ring not closed"
            assert len({tuple(v) for v in ring[:-1].tolist()}) == ring.shape[0] - 1, "ring repeats a vertex"
            a = area2(ring)
            assert (a > 0) if k == 0 else (a < 0), "exterior must be counter-clockwise, holes clockwise (RFC 7946)"
            seg = ring_segments(ring)
            meet = segments_meet(seg, seg)
            n = seg.shape[0]
            idx = np.arange(n)
            neighbour = (idx[:, None] == idx[None, :]) | ((idx[:, None] + 1) % n == idx[None, :]) | (
                (idx[None, :] + 1) % n == idx[:, None])
            assert not (meet & ~neighbour).any(), "ring is not simple"
            if k:
                shared = {tuple(v) for v in ring.tolist()} & {tuple(v) for v in rings[0].tolist()}
                probe = next(tuple(v) for v in ring[:-1].tolist() if tuple(v) not in shared)
                assert inside(probe, rings[0]), "hole outside the exterior"
        for i in range(len(rings)):
            for j in range(i + 1, len(rings)):
                meet = segments_meet(ring_segments(rings[i]), ring_segments(rings[j]))
                if meet.any():  # rings may only touch at vertices they share
                    common = {tuple(v) for v in rings[i].tolist()} & {tuple(v) for v in rings[j].tolist()}
                    assert common and meet.sum() <= 4 * len(common), "rings cross"


def rasterise(rings: list[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Even-odd fill of rings (mask pixel coordinates) sampled at pixel centres."""
    h, w = shape
    parity = np.zeros((h, w + 1), np.int64)
    for ring in rings:
        x1, y1, x2, y2 = ring[:-1, 0], ring[:-1, 1], ring[1:, 0], ring[1:, 1]
        for k in np.flatnonzero(y1 != y2):
            lo, hi = sorted((y1[k], y2[k]))
            rows = np.arange(int(np.ceil(lo - 0.5)), int(np.ceil(hi - 0.5)))
            rows = rows[(rows >= 0) & (rows < h)]
            yc = rows + 0.5
            xs = x1[k] + (yc - y1[k]) * (x2[k] - x1[k]) / (y2[k] - y1[k])
            first = np.clip(np.ceil(xs - 0.5).astype(np.int64), 0, w)
            np.add.at(parity, (rows, first), 1)
    return (np.cumsum(parity, axis=1)[:, :w] % 2).astype(bool)


def rasterise_doc(doc: dict, shape, names=NAMES, downsample=1.0, offset=(0, 0)) -> np.ndarray:
    """The class mask the features describe (later features drawn over earlier ones)."""
    out = np.zeros(shape, np.uint8)
    index = {n: k for k, n in enumerate(names)}
    for feature in doc["features"]:
        rings = [(np.asarray(r, np.float64) - offset) / downsample for r in feature["geometry"]["coordinates"]]
        out[rasterise(rings, shape)] = index[feature["properties"]["classification"]["name"]]
    return out


def regions(doc: dict) -> set:
    """Features as comparable values: class and rings each as a vertex cycle from its smallest vertex."""
    out = set()
    for feature in doc["features"]:
        rings = []
        for ring in feature["geometry"]["coordinates"]:
            verts = [tuple(v) for v in ring[:-1]]
            k = verts.index(min(verts))
            rings.append(tuple(verts[k:] + verts[:k]))
        out.add((feature["properties"]["classification"]["name"], rings[0], frozenset(rings[1:])))
    return out


def components(mask: np.ndarray) -> int:
    """Number of 4-connected regions of equal non-zero class (reference count, by flood fill)."""
    seen = np.zeros(mask.shape, bool)
    count = 0
    h, w = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        count += 1
        cls = mask[r0, c0]
        stack = [(r0, c0)]
        seen[r0, c0] = True
        while stack:
            r, c = stack.pop()
            for rr, cc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= rr < h and 0 <= cc < w and not seen[rr, cc] and mask[rr, cc] == cls:
                    seen[rr, cc] = True
                    stack.append((rr, cc))
    return count


def write_and_load(tmp_path, labels, name="m.geojson", **kwargs):
    counts = write_geojson(tmp_path / name, labels, NAMES, **kwargs)
    doc = json.loads((tmp_path / name).read_text())
    return doc, counts


def blobs(shape, count, seed, classes=(1, 2, 3), radius=(2, 9)) -> np.ndarray:
    """Random overlapping discs and squares of random classes."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    mask = np.zeros(shape, np.uint8)
    for _ in range(count):
        cy, cx = rng.integers(0, h), rng.integers(0, w)
        r = rng.integers(*radius)
        if rng.random() < 0.7:
            hit = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        else:
            hit = (abs(yy - cy) <= r) & (abs(xx - cx) <= r // 2 + 1)
        mask[hit] = rng.choice(classes)
    return mask


# ----------------------------------------------------------------------------- masks


def ring_mask() -> np.ndarray:
    """A ring with a hole, an island of the same class in the hole, and a hole in the island."""
    m = np.zeros((40, 40), np.uint8)
    m[2:38, 2:38] = 1
    m[8:32, 8:32] = 0
    m[12:28, 12:28] = 1
    m[17:23, 17:23] = 0
    m[19:21, 19:21] = 2  # another class inside the innermost hole
    return m


def pinch_mask() -> np.ndarray:
    """Regions touching themselves, their holes and each other only at pixel corners."""
    m = np.zeros((14, 16), np.uint8)
    m[1:6, 1:6] = 1
    m[2, 2] = m[3, 3] = 0  # two one-pixel holes touching at a corner
    m[1, 5] = 0  # a notch ...
    m[2, 4] = 0  # ... joined diagonally to a hole: the outline pinches there
    m[8:12, 1:5] = 1
    m[9, 2] = 0
    m[10, 3] = 0
    m[11, 4] = 0  # hole chain reaching the outside at a corner
    m[7, 8] = m[8, 9] = m[9, 10] = 2  # diagonal staircase: three separate regions
    m[8, 8] = 3  # other classes fill the corners between them
    m[1:5, 11:15] = 3
    m[2, 12] = 0
    m[1, 11] = 0
    m[3, 13] = 0
    m[12:14, 12:14] = 2
    m[11, 11] = 2  # touches the square above diagonally only
    return m


def thin_mask() -> np.ndarray:
    """One-pixel lines, single pixels and a one-pixel-wide spiral."""
    m = np.zeros((30, 40), np.uint8)
    m[1, 1:39] = 1
    m[3:29, 1] = 2
    m[5, 5] = 3
    m[5, 7] = 3
    for k in range(12):  # 4-connected staircase
        m[6 + k, 10 + k] = m[6 + k, 11 + k] = 1
    r0, r1, c0, c1 = 8, 28, 24, 39  # spiral of width 1 with gaps of 1
    while r0 < r1 and c0 < c1:
        m[r0, c0:c1] = 3
        m[r0:r1, c1 - 1] = 3
        m[r1 - 1, c0 + 1 : c1] = 3
        m[r0 + 2 : r1, c0] = 3
        r0, r1, c0, c1 = r0 + 2, r1 - 2, c0 + 2, c1 - 2
        if c0 < c1:
            m[r0, c0 - 2 : c0 + 1] = 3
    return m


def walls_mask() -> np.ndarray:
    """A block with many small holes close to each other and to the outline: thin walls."""
    m = np.zeros((60, 60), np.uint8)
    m[2:58, 2:58] = 1
    rng = np.random.default_rng(0)
    for y, x, h, w in zip(*rng.integers(4, 52, (2, 40)), *rng.integers(2, 7, (2, 40))):
        m[y : y + h, x : x + w] = 0
    return m


MASKS = {
    "rings": ring_mask,
    "walls": walls_mask,
    "maze": lambda: (np.random.default_rng(5).random((40, 40)) < 0.62).astype(np.uint8),
    "pinches": pinch_mask,
    "thin": thin_mask,
    "blobs": lambda: blobs((120, 90), 60, seed=1),
    "noise": lambda: ((np.random.default_rng(2).random((50, 60)) < 0.45)
                      * np.random.default_rng(3).integers(1, 4, (50, 60))).astype(np.uint8),
    "checker": lambda: (np.indices((16, 16)).sum(axis=0) % 2).astype(np.uint8),
    "full": lambda: np.ones((7, 9), np.uint8),
}


@pytest.mark.parametrize("name", sorted(MASKS))
def test_exact_outlines_round_trip(tmp_path, name):
    mask = MASKS[name]()
    doc, counts = write_and_load(tmp_path, mask, tolerance=0)
    check_collection(doc)
    np.testing.assert_array_equal(rasterise_doc(doc, mask.shape), mask)
    assert counts["features"] == len(doc["features"]) == components(mask)
    assert sum(counts["features_per_class"].values()) == counts["features"]
    for cls in range(1, 4):
        region_mask = rasterise_doc({"features": [f for f in doc["features"] if f["properties"]["classification"]["name"] == NAMES[cls]]}, mask.shape)
        np.testing.assert_array_equal(region_mask > 0, mask == cls)


@pytest.mark.parametrize("name", ["rings", "walls", "maze", "pinches", "thin", "blobs", "noise"])
@pytest.mark.parametrize("tolerance", [0, 1.0])
def test_band_size_does_not_change_the_regions(tmp_path, name, tolerance):
    mask = MASKS[name]()
    reference, _ = write_and_load(tmp_path, mask, tolerance=tolerance)
    check_collection(reference)
    for band_rows in (1, 2, 3, 5, 16):
        doc, _ = write_and_load(tmp_path, mask, tolerance=tolerance, band_rows=band_rows)
        assert regions(doc) == regions(reference), band_rows


def test_band_boundaries_exactly_at_region_edges(tmp_path):
    mask = np.zeros((32, 30), np.uint8)
    mask[4:8, 2:10] = 1  # rows 4-7: starts and ends on a boundary of 4-row bands
    mask[8:12, 2:10] = 2  # directly below, other class
    mask[8:16, 12:20] = 1
    mask[12:16, 14:16] = 0  # hole ending on a band edge
    mask[16:17, 0:30] = 3  # a one-row region filling one band row
    mask[20:24, 5:9] = 1
    mask[24:28, 9:13] = 1  # touches the square above only at a corner that lies on a band edge
    reference, _ = write_and_load(tmp_path, mask, tolerance=0)
    for band_rows in (4, 8, 1):
        doc, counts = write_and_load(tmp_path, mask, tolerance=0, band_rows=band_rows)
        check_collection(doc)
        assert regions(doc) == regions(reference)
        np.testing.assert_array_equal(rasterise_doc(doc, mask.shape), mask)
        assert counts["features"] == components(mask) == 6


def test_region_spanning_many_bands(tmp_path):
    """One comb-shaped region down 300 rows, with holes closing and pieces joining in many bands."""
    mask = np.zeros((300, 60), np.uint8)
    mask[:, 1] = 1  # spine
    mask[2:298:4, 1:58] = 1  # teeth
    mask[2:298:8, 57] = 1
    mask[2:294:8, 57] = 1
    mask[6:296:8, 57] = 1  # every other gap closed on the right: holes
    mask[100:200, 20:40] = 1
    mask[120:180, 25:35] = 2  # other class in a hole
    for band_rows in (1, 7, 64, None):
        doc, counts = write_and_load(tmp_path, mask, tolerance=0, band_rows=band_rows)
        check_collection(doc)
        np.testing.assert_array_equal(rasterise_doc(doc, mask.shape), mask)
        tumour = [f for f in doc["features"] if f["properties"]["classification"]["name"] == "tumour"]
        assert len(tumour) == 1 and counts["features"] == components(mask)
        assert len(tumour[0]["geometry"]["coordinates"]) > 20  # many holes


def test_default_tolerance_stays_close_with_fewer_vertices(tmp_path):
    mask = blobs((300, 300), 50, seed=7, radius=(6, 25))
    exact, exact_counts = write_and_load(tmp_path, mask, tolerance=0)
    doc, counts = write_and_load(tmp_path, mask)
    check_collection(doc)
    assert counts["features"] == exact_counts["features"]
    assert counts["vertices"] < 0.5 * exact_counts["vertices"]
    back = rasterise_doc(doc, mask.shape)
    for cls in (1, 2, 3):
        inter = np.count_nonzero((back == cls) & (mask == cls))
        union = np.count_nonzero((back == cls) | (mask == cls))
        assert inter / union > 0.97, cls
    exact_masks = [(f["properties"], fill(f, mask.shape)) for f in exact["features"]]
    for feature in doc["features"]:  # each sizeable region on its own stays close too
        alone = fill(feature, mask.shape)
        if alone.sum() > 100:
            iou = max(np.count_nonzero(alone & m) / np.count_nonzero(alone | m)
                      for props, m in exact_masks if props == feature["properties"])
            assert iou > 0.85


def fill(feature: dict, shape) -> np.ndarray:
    return rasterise([np.asarray(r, np.float64) for r in feature["geometry"]["coordinates"]], shape)


def test_large_tolerance_keeps_every_ring_valid(tmp_path):
    """Simplification that would make rings cross or collapse falls back to smaller tolerances."""
    for name in ("walls", "maze", "thin", "pinches", "noise"):
        mask = MASKS[name]()
        for tolerance in (2.0, 3.0, 8.0, 50.0):
            doc, counts = write_and_load(tmp_path, mask, tolerance=tolerance)
            check_collection(doc)
            assert counts["features"] == components(mask)


def test_collinear_vertices_are_dropped(tmp_path):
    mask = np.zeros((10, 12), np.uint8)
    mask[1:5, 1:11] = 1  # rectangle: 4 corners
    mask[6:9, 1:4] = 2
    mask[8, 4:8] = 2  # L shape: 6 corners
    doc, counts = write_and_load(tmp_path, mask, tolerance=0)
    sizes = sorted(len(f["geometry"]["coordinates"][0]) for f in doc["features"])
    assert sizes == [5, 7] and counts["vertices"] == 10
    rect = next(f for f in doc["features"] if f["properties"]["classification"]["name"] == "tumour")
    ring = rect["geometry"]["coordinates"][0]
    assert sorted(map(tuple, ring[:-1])) == [(1, 1), (1, 5), (11, 1), (11, 5)]


def test_empty_mask(tmp_path):
    doc, counts = write_and_load(tmp_path, np.zeros((20, 30), np.uint8))
    assert doc == {"type": "FeatureCollection", "features": []}
    assert counts == {"features": 0, "features_per_class": {}, "holes": 0, "vertices": 0}
    doc, _ = write_and_load(tmp_path, np.zeros((0, 5), np.uint8))
    assert doc["features"] == []


def test_properties_as_qupath_reads_them(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 1:4] = 1
    mask[4:7, 1:4] = 2  # shares an edge with class 1: both keep it
    counts = write_geojson(tmp_path / "m.json", mask, {1: "Tumor", 2: "Stroma"}, object_type="detection",
                           colours={1: (200, 0, 0), 2: [0, 0, 200]})
    doc = json.loads((tmp_path / "m.json").read_text())
    check_collection(doc, object_type="detection")
    props = {f["properties"]["classification"]["name"]: f["properties"] for f in doc["features"]}
    assert props["Tumor"] == {"objectType": "detection", "classification": {"name": "Tumor", "color": [200, 0, 0]},
                              "isLocked": False}
    assert props["Stroma"]["classification"]["color"] == [0, 0, 200]
    assert counts["features_per_class"] == {"Tumor": 1, "Stroma": 1}
    doc, _ = write_and_load(tmp_path, mask)  # default colours: the project palette
    colours = {f["properties"]["classification"]["name"]: f["properties"]["classification"]["color"] for f in doc["features"]}
    assert colours == {"tumour": PALETTE[1].tolist(), "stroma": PALETTE[2].tolist()}


def test_downsample_and_offset_give_level0_coordinates(tmp_path):
    mask = ring_mask()
    doc, _ = write_and_load(tmp_path, mask, tolerance=0, downsample=4, offset=(1000, 2000))
    first = doc["features"][0]["geometry"]["coordinates"][0]
    assert all(isinstance(c, int) for xy in first for c in xy)
    xs, ys = zip(*first)
    assert (min(xs), max(xs), min(ys), max(ys)) == (1000 + 4 * 2, 1000 + 4 * 38, 2000 + 4 * 2, 2000 + 4 * 38)
    np.testing.assert_array_equal(rasterise_doc(doc, mask.shape, downsample=4, offset=(1000, 2000)), mask)
    doc, _ = write_and_load(tmp_path, mask, tolerance=0, downsample=(0.5, 2.0), offset=(10.25, 3))
    scale = np.array([0.5, 2.0])
    np.testing.assert_array_equal(rasterise_doc(doc, mask.shape, downsample=scale, offset=np.array([10.25, 3])), mask)


def test_bad_arguments(tmp_path):
    mask = np.ones((4, 4), np.uint8)
    with pytest.raises(NCAError, match=r"m\.txt.*\.geojson or \.json"):
        write_geojson(tmp_path / "m.txt", mask, NAMES)
    with pytest.raises(ValueError, match="class 5"):
        write_geojson(tmp_path / "m.geojson", mask * 5, NAMES)
    with pytest.raises(ValueError, match="uint8"):
        write_geojson(tmp_path / "m.geojson", mask.astype(np.int32), NAMES)
    with pytest.raises(ValueError, match="object_type"):
        write_geojson(tmp_path / "m.geojson", mask, NAMES, object_type="cell")
    assert list(tmp_path.iterdir()) == []


class Bands:
    """A row-sliceable mask that records reads and can act when a given band is read."""

    def __init__(self, mask, on_read=None):
        self.mask, self.on_read, self.reads = mask, on_read, []
        self.shape, self.dtype = mask.shape, mask.dtype

    def __getitem__(self, rows):
        self.reads.append((rows.start, rows.stop))
        if self.on_read:
            self.on_read(rows.start)
        return self.mask[rows]


def test_features_are_written_while_reading(tmp_path):
    """Regions finished in the top half are in the file before the bottom half is read."""
    mask = np.zeros((100, 50), np.uint8)
    mask[5:15, 5:15] = 1
    mask[20:30, 20:45] = 2
    mask[80:95, 10:20] = 3
    seen = {}

    def look(row):
        partial = [p for p in tmp_path.iterdir() if p.name.endswith(".partial.geojson")]
        assert len(partial) == 1 and not (tmp_path / "m.geojson").exists()
        seen[row] = partial[0].read_text().count('"type":"Feature"')

    source = Bands(mask, look)
    write_geojson(tmp_path / "m.geojson", source, NAMES, band_rows=10)
    assert len(source.reads) == 10 and all(b - a == 10 for a, b in source.reads)
    assert seen[40] == 2 and seen[90] == 2  # both upper regions written, the lower one not yet
    assert len(json.loads((tmp_path / "m.geojson").read_text())["features"]) == 3


def test_failure_leaves_no_file(tmp_path):
    def fail(row):
        if row >= 50:
            raise OSError("read error")

    mask = blobs((100, 60), 20, seed=3)
    with pytest.raises(OSError):
        write_geojson(tmp_path / "m.geojson", Bands(mask, fail), NAMES, band_rows=10)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_gigapixel_memmap_streams_with_bounded_memory(tmp_path):
    """A 20000 x 20000 (400 MB) mask on disk: regions everywhere, work memory a fraction of it."""
    h = w = 20000
    mask = np.lib.format.open_memmap(tmp_path / "mask.npy", mode="w+", dtype=np.uint8, shape=(h, w))
    mask[:, 100:103] = 1  # one region the whole height, with holes all the way down
    mask[::1000, 100:110] = 1
    mask[500::1000, 101] = 0
    rng = np.random.default_rng(0)
    for y, x in rng.integers(200, 19800, (300, 2)).tolist():
        mask[y - 5 : y + 5, x - 5 : x + 5] = 2
    mask[6000:6010, 6000:6010] = 3
    mask[6002:6004, 6002:6004] = 0
    mask.flush()
    del mask
    labels = np.load(tmp_path / "mask.npy", mmap_mode="r")
    tracemalloc.start()
    try:
        counts = write_geojson(tmp_path / "m.geojson", labels, NAMES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 150e6  # the mask is 400 MB; one band is 8 MB
    doc = json.loads((tmp_path / "m.geojson").read_text())
    check_collection(doc)
    by_class = counts["features_per_class"]
    assert by_class["tumour"] == 1 and by_class["other"] == 1 and counts["features"] == len(doc["features"])
    tall = next(f for f in doc["features"] if f["properties"]["classification"]["name"] == "tumour")
    ys = [y for _, y in tall["geometry"]["coordinates"][0]]
    assert min(ys) == 0 and max(ys) == h and len(tall["geometry"]["coordinates"]) == 21


def test_validity_check_catches_bad_polygons():
    """The check that decides when simplification must back off."""
    from nca_cli.io.simplify import _problems

    def ring(*xy):
        return np.array(xy, np.int64)

    square = ring((0, 0), (10, 0), (10, 10), (0, 10))  # positive area: an exterior
    hole = ring((2, 2), (2, 4), (4, 4), (4, 2))  # negative area
    assert _problems([square]) == set()
    assert _problems([square, hole]) == set()
    assert _problems([square[::-1]]) == {0}  # exterior the wrong way round
    assert _problems([square, hole[::-1]]) == {1}
    assert _problems([ring((0, 0), (10, 10), (10, 0), (0, 10))]) == {0}  # bow tie
    assert _problems([ring((0, 0), (10, 0), (10, 10), (5, 0), (0, 10))]) == {0}  # touches itself
    assert _problems([ring((0, 0), (6, 0), (3, 0), (3, 5))]) == {0}  # spike folding back
    assert _problems([square, ring((8, 8), (8, 12), (12, 12), (12, 8))]) == {0, 1}  # hole crossing out
    assert _problems([square, ring((20, 20), (20, 24), (24, 24), (24, 20))]) == {0, 1}  # hole outside
    assert _problems([square, ring((1, 1), (1, 9), (9, 9), (9, 1)), hole]) == {1, 2}  # hole in a hole
    assert _problems([square, ring((2, 2), (2, 5), (3, 5), (3, 2)), ring((2, 3), (2, 4), (5, 4), (5, 3))]) \
        == {1, 2}  # holes crossing
    # rings may share a vertex: touching there is fine, crossing there is not
    notched = ring((0, 0), (10, 0), (10, 10), (0, 10), (0, 5))
    assert _problems([notched, ring((0, 5), (2, 7), (4, 5), (2, 3))]) == set()
    assert _problems([square, ring((0, 0), (0, 3), (3, 3), (3, 0))]) == {0, 1}  # shares an edge
    assert _problems([square, hole, ring((4, 4), (4, 6), (6, 6), (6, 4))]) == set()
    a = ring((2, 5), (5, 8), (8, 5), (5, 2))  # two holes sharing (2, 5) and (8, 5),
    b = ring((2, 5), (5, 9), (8, 5), (5, 6))  # crossing each other at both
    assert _area2_sign(a) < 0 and _area2_sign(b) < 0
    assert _problems([square, a, b]) == {1, 2}


def _area2_sign(r):
    return np.sign(area2(np.concatenate([r, r[:1]]).astype(float)))
