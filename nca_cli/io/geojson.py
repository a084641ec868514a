"""QuPath-readable GeoJSON polygons from class masks of any size, streamed band by band.

:func:`write_geojson` turns a ``[H, W]`` uint8 class mask (0 = background) into one Polygon
Feature per 4-connected region of each class, with holes as interior rings, in level-0
pixel coordinates. QuPath imports the file by drag and drop (or *File > Import objects*).

Memory. The mask is read in bands of rows, so a gigapixel ``numpy.memmap`` is never loaded
whole. Besides one band, only the regions that reach the band's last row are held: their
boundary pieces so far (polylines whose two ends lie on the band's lower edge) and their
already closed rings (holes). A region's Feature is written to the file, and forgotten, as
soon as the band holding its last row has been read.

Geometry. Pixel (row r, col c) covers x in [c, c+1], y in [r, r+1]; level-0 coordinates
are ``offset + downsample * (x, y)``. Boundaries run along pixel edges, so at
``tolerance=0`` filling the polygons at pixel centres gives back the mask exactly. Where a
region touches itself or a hole only at a pixel corner (a "pinch"), foreground is 4- and
background 8-connected: the boundary is split there into simple rings that share that one
point, as the OGC simple-features rules allow between a polygon's rings.

Orientation. Exterior rings have positive signed (shoelace) area computed on the numbers
as written and holes negative: counter-clockwise and clockwise in the sense of RFC 7946's
right-hand rule with x to the right and y up. Shown in image coordinates (y down) that is
clockwise on screen. QuPath builds its shapes with JTS, which does not depend on ring
orientation, so it reads either.

Simplification. Rings are simplified with Douglas-Peucker at ``tolerance`` mask pixels;
vertices where rings touch are kept. A simplified polygon is checked (every ring simple,
no crossings, holes inside the exterior, orientation kept, at least three vertices); rings
that fail are simplified again with a smaller tolerance, down to the exact pixel outline.
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from ..core.errors import NCAError
from ..core.files import atomic_path
from .palette import PALETTE

GEOJSON_SUFFIXES = (".geojson", ".json")
OBJECT_TYPES = ("annotation", "detection")
BAND_PIXELS = 1 << 23
"""Default band size in pixels (band rows = this / mask width): a few tens of MB of work arrays."""

_E, _S, _W, _N = 0, 1, 2, 3  # directions of travel (y down); a right turn is (d + 1) % 4
_STUB_IN, _STUB_OUT = 1, 2  # vertical edges of the row above a band, where pieces cross into it


# --------------------------------------------------------------------------- edges and their order


def _runs(code: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Maximal runs of one non-zero value along axis 1 of an int8 array whose last column is 0.

    Returns (row, first, end exclusive, value) per run.
    """
    width = code.shape[1]
    f = code.ravel()
    cut = np.flatnonzero(f[1:] != f[:-1]) + 1
    if f.size and f[0] != 0:
        cut = np.r_[0, cut]
    idx = np.flatnonzero(f[cut] != 0)
    start, end = cut[idx], cut[idx + 1]
    row = start // width
    return row, start - row * width, end - row * width, f[start]


def _band_edges(m: np.ndarray, up: np.ndarray, y0: int) -> dict[str, np.ndarray]:
    """Boundary edges of one class in the band ``m`` (rows ``y0 ...``; ``up`` is the row above).

    Edges are maximal straight runs along pixel edges, directed with the class on the right
    (y down): top edges of pixels run east, bottom edges west, left edges north and right
    edges south. The band owns the horizontal edges on the lines ``y0 ... y0+B-1`` and the
    vertical edges of its rows; the vertical edges of the row above are added as unit
    "stubs", the points where boundary pieces from the previous band enter and leave.
    Returns start/end vertices, direction, stub kind and the pixel on the right of each
    edge (row relative to the band, -1 for the row above; column).
    """
    B, W = m.shape
    m8, up8 = m.view(np.int8), up.view(np.int8)
    horizontal = np.zeros((B, W + 1), np.int8)  # +1: class below the line, -1: class above
    np.subtract(m8[0], up8, out=horizontal[0, :W])
    np.subtract(m8[1:], m8[:-1], out=horizontal[1:, :W])
    step = np.zeros((B, W + 1), np.int8)  # +1: class right of the vertical line x, -1: left
    step[:, 0] = m8[:, 0]
    np.subtract(m8[:, 1:], m8[:, :-1], out=step[:, 1:W])
    step[:, W] = -m8[:, W - 1]
    vertical = np.zeros((W + 1, B + 1), np.int8)
    vertical[:, :B] = step.T
    del step
    r, a, b, v = _runs(horizontal)
    east = v > 0
    y = y0 + r
    parts = [
        (np.where(east, a, b), y, np.where(east, b, a), y, np.where(east, _E, _W), 0, np.where(east, r, r - 1), a),
    ]
    x, a, b, v = _runs(vertical)
    north = v > 0
    parts.append((x, y0 + np.where(north, b, a), x, y0 + np.where(north, a, b), np.where(north, _N, _S), 0, a,
                  np.where(north, x, x - 1)))
    upad = np.zeros(W + 2, bool)
    upad[1:-1] = up
    x = np.flatnonzero(upad[:-1] & ~upad[1:])
    parts.append((x, y0 - 1, x, y0, _S, _STUB_IN, -1, x - 1))
    x = np.flatnonzero(upad[1:] & ~upad[:-1])
    parts.append((x, y0, x, y0 - 1, _N, _STUB_OUT, -1, x))
    names = ("sx", "sy", "ex", "ey", "dir", "stub", "rrow", "rcol")
    return {
        name: np.concatenate([np.broadcast_to(np.asarray(p[i], np.int64), np.shape(p[0])) for p in parts])
        for i, name in enumerate(names)
    }


def _successors(e: dict[str, np.ndarray], width: int, y0: int) -> tuple[np.ndarray, np.ndarray]:
    """The edge that follows each edge (-1 where it continues outside the band).

    At a pixel corner where the class touches itself diagonally two edges leave; taking the
    right turn keeps to the same pixel, which is what makes foreground 4-connected. Also
    returns, per edge, whether it starts at such a corner.
    """
    skey = (e["sy"] - y0 + 1) * width + e["sx"]
    ekey = (e["ey"] - y0 + 1) * width + e["ex"]
    order = np.argsort(skey, kind="stable")
    sk = skey[order]
    lo = np.searchsorted(sk, ekey, "left")
    count = np.searchsorted(sk, ekey, "right") - lo
    succ = np.full(skey.size, -1, np.int64)
    one = count == 1
    succ[one] = order[lo[one]]
    two = np.flatnonzero(count == 2)
    saddle = np.zeros(skey.size, bool)
    if two.size:
        a, b = order[lo[two]], order[lo[two] + 1]
        succ[two] = np.where(e["dir"][a] == (e["dir"][two] + 1) % 4, a, b)
        saddle[a] = saddle[b] = True
    return succ, saddle


def _chains(succ: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the successor graph into cycles and paths, vectorised by pointer doubling.

    Returns the edges ordered chain by chain, the start of each chain in that order, and
    whether each chain is closed.
    """
    n = succ.size
    # cycles: the smallest edge index on each cycle, found by doubling windows; when the
    # two halves of a window hold the same minimum they overlap, so the cycle is covered
    low = np.arange(n)
    jump = succ.copy()
    on_cycle = np.zeros(n, bool)
    active = np.flatnonzero(jump >= 0)
    while active.size:
        j = jump[active]
        li, lj = low[active], low[j]
        done = li == lj
        on_cycle[active[done]] = True
        low[active] = np.minimum(li, lj)
        jump[active] = jump[j]
        active = active[~done & (jump[active] >= 0)]
    acyclic = succ.copy()
    reps = np.flatnonzero(on_cycle & (low == np.arange(n)))
    pred = np.full(n, -1, np.int64)
    has = succ >= 0
    pred[succ[has]] = np.flatnonzero(has)
    closing = pred[reps]
    acyclic[closing] = -1
    # list ranking: distance to the end of each path and that end
    nxt = acyclic.copy()
    dist = (nxt >= 0).astype(np.int64)
    last = np.where(nxt >= 0, nxt, np.arange(n))
    active = np.flatnonzero(nxt >= 0)
    while active.size:
        j = nxt[active]
        dist[active] += dist[j]
        last[active] = last[j]
        nxt[active] = nxt[j]
        active = active[nxt[active] >= 0]
    order = np.lexsort((-dist, last))
    tails = last[order]
    starts = np.flatnonzero(np.r_[True, tails[1:] != tails[:-1]]) if n else np.zeros(0, np.int64)
    closed = on_cycle[tails[starts]] if n else np.zeros(0, bool)
    return order, starts, closed


# --------------------------------------------------------------------------- rings


def _group_ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of ``counts`` items back to back: each item's group and index within it."""
    group = np.repeat(np.arange(counts.size), counts)
    within = np.arange(group.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return group, within


def _pieces(v: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> list[np.ndarray]:
    """Views of the groups stored back to back in ``v``."""
    return [v[a : a + n] for a, n in zip(starts.tolist(), lengths.tolist())]


def _key(v: np.ndarray) -> np.ndarray:
    """Vertices as sortable integers, (y, x) order."""
    return v[:, 1].astype(np.int64) * (1 << 32) + v[:, 0]


def _nxt(v: np.ndarray) -> np.ndarray:
    """The following vertex of each vertex of a closed ring."""
    return np.concatenate([v[1:], v[:1]])


def _prv(v: np.ndarray) -> np.ndarray:
    """The preceding vertex of each vertex of a closed ring."""
    return np.concatenate([v[-1:], v[:-1]])


def _drop_collinear(v: np.ndarray) -> np.ndarray:
    """Vertices of a closed pixel-edge walk where it turns (straight pass-through points removed)."""
    d_in, d_out = v - _prv(v), _nxt(v) - v
    return v[d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0]


def _area2(v: np.ndarray) -> int:
    """Twice the signed shoelace area of a closed ring given without its closing vertex."""
    v = v.astype(np.int64)
    w = _nxt(v)
    return int(np.dot(v[:, 0], w[:, 1]) - np.dot(w[:, 0], v[:, 1]))


def _ring_neighbours(starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For rings stored back to back: index of each vertex's predecessor and successor."""
    ring, pos = _group_ranges(lengths)
    base, n = starts[ring], lengths[ring]
    return base + (pos - 1) % n, base + (pos + 1) % n


def _batch_corners(v: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Collinear-free version of many rings at once: (vertices, new lengths, twice signed areas)."""
    prev, nxt = _ring_neighbours(starts, lengths)
    d_in, d_out = v - v[prev], v[nxt] - v
    keep = d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] != 0
    area = np.add.reduceat(v[:, 0] * v[nxt, 1] - v[nxt, 0] * v[:, 1], starts)
    return v[keep], np.add.reduceat(keep.astype(np.int64), starts), area


def _split_pinches(v: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Split a closed walk at repeated vertices into loops that each visit a vertex once.

    Returns the loops and the keys (see ``_key``) of the vertices where it was split.
    """
    keys = _key(v)
    uniq, count = np.unique(keys, return_counts=True)
    if uniq.size == keys.size:
        return [v], uniq[:0]
    keys = keys.tolist()
    loops, stack, seen = [], [], {}
    for i, k in enumerate(keys):
        if k in seen:
            at = seen[k]
            loop = stack[at:]
            del stack[at + 1 :]
            for j in loop[1:]:
                del seen[keys[j]]
            loops.append(v[loop])
        else:
            seen[k] = len(stack)
            stack.append(i)
    loops.append(v[stack])
    return loops, uniq[count > 1]


def _loops(walk: np.ndarray) -> list[tuple[np.ndarray, int, np.ndarray | None]]:
    """Simple rings of one closed walk: (corner vertices as int32, twice the signed area,
    which vertices are shared with another ring of the walk, or None)."""
    loops, pinches = _split_pinches(_drop_collinear(walk))
    out = []
    for loop in loops:
        loop = _drop_collinear(loop)
        fixed = np.isin(_key(loop), pinches) if pinches.size else None
        out.append((loop.astype(np.int32), _area2(loop), fixed))
    return out


class _Chain:
    """An open boundary piece: vertices (as parts to join) from port ``start`` to port ``end``.

    Both ports are x positions on the lower edge of the band read last; the piece leaves
    that edge upwards at ``start`` and comes back down to it at ``end``.
    """

    __slots__ = ("parts", "start", "end")

    def __init__(self, parts: list[np.ndarray], start: int, end: int):
        self.parts, self.start, self.end = parts, start, end


class _UnionFind:
    """Region identities for one band: the smaller id of two joined regions stays."""

    def __init__(self):
        self.parent: dict[int, int] = {}

    def find(self, a: int) -> int:
        root = a
        while self.parent.get(root, root) != root:
            root = self.parent[root]
        while a != root:
            self.parent[a], a = root, self.parent.get(a, a)
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _components(m: np.ndarray) -> tuple[Any, np.ndarray, int]:
    """4-connected components of a bool band: (image kept alive, label view, count)."""
    f = sitk.ConnectedComponentImageFilter()
    f.SetFullyConnected(False)
    image = f.Execute(sitk.GetImageFromArray(m.view(np.uint8)))
    return image, sitk.GetArrayViewFromImage(image), f.GetObjectCount()


class _ClassTracer:
    """Boundary tracing of one class across bands; see the module docstring for what it holds."""

    def __init__(self):
        self.prev: np.ndarray | None = None  # region id of each pixel of the last row read (0: other)
        self.by_start: dict[int, _Chain] = {}
        self.by_end: dict[int, _Chain] = {}
        self.pending: dict[int, list[tuple]] = {}  # region -> closed rings, as from _loops

    def idle(self) -> bool:
        return self.prev is None and not self.by_start and not self.pending

    def feed(self, m: np.ndarray, up: np.ndarray, y0: int, next_id: int) -> tuple[list, int]:
        """Trace band ``m`` (bool, rows from ``y0``) below row ``up``.

        Returns the regions finished in this band as ``(region id, rings)`` and the next
        free region id.
        """
        image, lab, n = _components(m)
        local, uf = self._join_regions(m, up, lab, n, next_id)
        e = _band_edges(m, up, y0)
        region = np.zeros(e["rrow"].size, np.int64)  # region on the right of each edge
        inside = e["rrow"] >= 0
        region[inside] = local[lab[e["rrow"][inside], e["rcol"][inside]]]
        if not inside.all():
            uniq, inv = np.unique(self.prev[e["rcol"][~inside]], return_inverse=True)
            region[~inside] = np.array([uf.find(int(i)) for i in uniq], np.int64)[inv]
        pending: dict[int, list[tuple]] = {}
        for k, rings in self.pending.items():
            pending.setdefault(uf.find(k), []).extend(rings)
        paths = self._trace(e, region, m.shape[1], y0, pending)
        self._join_pieces(paths, pending)

        self.prev = local[lab[-1]]
        del image, lab
        open_regions = set(np.unique(self.prev).tolist()) - {0}
        if not open_regions:
            self.prev = None
        done = [(k, rings) for k, rings in pending.items() if k not in open_regions]
        self.pending = {k: rings for k, rings in pending.items() if k in open_regions}
        return done, next_id + n

    def _join_regions(self, m, up, lab, n, next_id) -> tuple[np.ndarray, _UnionFind]:
        """Region id of each band component (``local[label]``; new ids from ``next_id``),
        joined with the regions of the row above that it touches."""
        local = np.arange(next_id - 1, next_id + n, dtype=np.int64)
        local[0] = 0
        uf = _UnionFind()
        if self.prev is not None:
            xs = np.flatnonzero(up & m[0])
            if xs.size:
                for a, b in np.unique(np.stack([self.prev[xs], local[lab[0, xs]]], axis=1), axis=0).tolist():
                    uf.union(a, b)
                for node in list(uf.parent):
                    if node >= next_id:
                        local[node - next_id + 1] = uf.find(node)
        return local, uf

    @staticmethod
    def _trace(e: dict[str, np.ndarray], region: np.ndarray, width: int, y0: int, pending: dict) -> dict:
        """Follow the band's edges: closed rings go to ``pending``; returns the open paths as
        ``{entry: (vertices, exit, region)}`` with entry/exit ``("top" | "bottom", x)``."""
        succ, saddle = _successors(e, width + 1, y0)
        order, starts, closed = _chains(succ)
        vx, vy = e["sx"][order], e["sy"][order]
        bounds = np.r_[starts, order.size]
        lengths = np.diff(bounds)
        heads = order[starts]
        pinched = np.add.reduceat(saddle[order].astype(np.int64), starts) > 0 if starts.size else closed
        plain = closed & ~pinched  # the common case, done for all rings at once
        if plain.any():
            sel = np.repeat(plain, lengths)
            n_plain = lengths[plain]
            corners, n_corners, areas = _batch_corners(
                np.stack([vx[sel], vy[sel]], axis=1), np.cumsum(n_plain) - n_plain, n_plain)
            rings = _pieces(corners.astype(np.int32), np.cumsum(n_corners) - n_corners, n_corners)
            for rid, ring, area in zip(region[heads[plain]].tolist(), rings, areas.tolist()):
                pending.setdefault(rid, []).append((ring, area, None))
        paths = {}
        for g in np.flatnonzero(~plain).tolist():
            a, b = bounds[g], bounds[g + 1]
            rid = int(region[heads[g]])
            verts = np.stack([vx[a:b], vy[a:b]], axis=1)
            if closed[g]:
                pending.setdefault(rid, []).extend(_loops(verts))
                continue
            first, last = order[a], order[b - 1]
            verts = np.concatenate([verts, [[e["ex"][last], e["ey"][last]]]])
            if e["stub"][first] == _STUB_IN:
                verts, entry = verts[1:], ("top", int(e["sx"][first]))
            else:
                entry = ("bottom", int(e["sx"][first]))
            if e["stub"][last] == _STUB_OUT:
                verts, exit_ = verts[:-1], ("top", int(e["sx"][last]))
            else:
                exit_ = ("bottom", int(e["ex"][last]))
            paths[entry] = (verts, exit_, rid)
        return paths

    def _join_pieces(self, paths: dict, pending: dict) -> None:
        """Join the pieces carried from above with this band's paths: pieces that reach the
        band's lower edge are carried on, the rest close into rings."""
        by_start, by_end = {}, {}
        for entry in [k for k in paths if k[0] == "bottom"]:
            verts, exit_, _ = paths.pop(entry)
            parts = [verts]
            while exit_[0] == "top":
                chain = self.by_start.pop(exit_[1])
                del self.by_end[chain.end]
                parts.append(chain.parts[0][1:])
                parts.extend(chain.parts[1:])
                verts, exit_, _ = paths.pop(("top", chain.end))
                parts.append(verts[1:])
            chain = _Chain(parts, entry[1], exit_[1])
            by_start[chain.start] = by_end[chain.end] = chain
        while self.by_start:
            first_port, chain = self.by_start.popitem()
            parts = []
            while True:
                del self.by_end[chain.end]
                parts.append(chain.parts[0][1:] if parts else chain.parts[0])
                parts.extend(chain.parts[1:])
                verts, exit_, rid = paths.pop(("top", chain.end))
                parts.append(verts[1:])
                if exit_ == ("top", first_port):
                    break
                chain = self.by_start.pop(exit_[1])
            pending.setdefault(rid, []).extend(_loops(np.concatenate(parts)[:-1]))
        if paths or self.by_end:
            raise AssertionError("boundary pieces left unmatched between bands")
        self.by_start, self.by_end = by_start, by_end


# --------------------------------------------------------------------------- simplification


def _first_max(values: np.ndarray, group: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per group of consecutive items (group starts ``starts``): the maximum and the first item holding it."""
    best = np.maximum.reduceat(values, starts)
    hit = np.flatnonzero(values == best[group])
    _, first = np.unique(group[hit], return_index=True)
    return best, hit[first]


def _douglas_peucker(verts: np.ndarray, starts: np.ndarray, lengths: np.ndarray, fixed: np.ndarray,
                     tol: np.ndarray) -> np.ndarray:
    """Douglas-Peucker on many closed rings at once; returns which vertices to keep.

    ``verts`` holds the rings back to back (ring k: ``lengths[k]`` vertices from
    ``starts[k]``, not closed), ``fixed`` the vertices that must stay, ``tol`` each ring's
    tolerance. The first vertex of each ring always stays; a ring with no other fixed
    vertex is split at its vertex farthest from the first. Rings of at most four vertices
    (rectangles) and rings at tolerance 0 are kept whole.
    """
    keep = fixed.copy()
    keep[starts] = True
    ring = np.repeat(np.arange(starts.size), lengths)
    whole = (tol <= 0) | (lengths <= 4)
    keep[whole[ring]] = True
    lone = np.add.reduceat(keep.astype(np.int64), starts) == 1
    if lone.any():  # a second anchor: the vertex farthest from the first
        sel = np.flatnonzero(lone[ring])
        d2 = ((verts[sel] - verts[starts[ring[sel]]]) ** 2).sum(axis=1)
        n = lengths[lone]
        _, far = _first_max(d2, _group_ranges(n)[0], np.cumsum(n) - n)
        keep[sel[far]] = True
    # segments between consecutive kept vertices of each ring, as positions within the ring
    idx = np.flatnonzero(keep)
    seg_ring = ring[idx]
    a = idx - starts[seg_ring]
    same = np.r_[seg_ring[1:] == seg_ring[:-1], False]
    b = np.where(same, np.r_[a[1:], 0], lengths[seg_ring])
    tol2 = (tol * tol)[seg_ring]
    while True:
        inner = b - a - 1
        live = inner > 0
        a, b, seg_ring, tol2, inner = a[live], b[live], seg_ring[live], tol2[live], inner[live]
        if not a.size:
            return keep
        seg, off = _group_ranges(inner)
        s0 = starts[seg_ring]
        pos = a[seg] + 1 + off
        p = verts[s0[seg] + pos].astype(np.float64)
        pa = verts[s0 + a].astype(np.float64)
        pb = verts[s0 + b % lengths[seg_ring]].astype(np.float64)
        d = pb - pa
        dd = (d * d).sum(axis=1)
        rel = p - pa[seg]
        t = np.clip((rel * d[seg]).sum(axis=1) / dd[seg], 0.0, 1.0)
        gap = rel - t[:, None] * d[seg]
        dist2 = (gap * gap).sum(axis=1)
        best, at = _first_max(dist2, seg, np.cumsum(inner) - inner)
        split = best > tol2
        k = pos[at[split]]
        keep[s0[split] + k] = True
        a = np.concatenate([a[split], k])
        b = np.concatenate([k, b[split]])
        seg_ring = np.concatenate([seg_ring[split], seg_ring[split]])
        tol2 = np.concatenate([tol2[split], tol2[split]])


# --------------------------------------------------------------------------- validity


def _orient(ax, ay, bx, by, cx, cy) -> np.ndarray:
    """Sign of the turn a -> b -> c (exact for integer coordinates)."""
    return np.sign((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


def _box_pairs(lo_x, lo_y, hi_x, hi_y, cell: int, chunk: int = 1 << 16):
    """Pairs (i, j), i < j, of overlapping integer boxes, found through a grid of ``cell`` px.

    Each box is entered in the grid cells it covers and pairs are formed within cells; a
    pair is reported by the cell holding the corner where the two boxes' overlap starts,
    so once. The grid is filled a strip of cell rows at a time, and pairs are yielded as
    index arrays of at most about ``chunk`` candidates, so memory stays small.
    """
    cx0, cy0, cx1, cy1 = lo_x // cell, lo_y // cell, hi_x // cell, hi_y // cell
    entries = (cx1 - cx0 + 1) * (cy1 - cy0 + 1)
    top, bottom = int(cy0.min()), int(cy1.max())
    strips = max(1, int(entries.sum()) // (4 * chunk))  # about 4 * chunk grid entries per strip
    height = -(-(bottom - top + 1) // strips)
    for s0 in range(top, bottom + 1, height):
        s1 = s0 + height - 1
        boxes = np.flatnonzero((cy0 <= s1) & (cy1 >= s0))
        if boxes.size < 2:
            continue
        r0, r1 = np.maximum(cy0[boxes], s0), np.minimum(cy1[boxes], s1)
        nx = cx1[boxes] - cx0[boxes] + 1
        member, k = _group_ranges(nx * (r1 - r0 + 1))
        box = boxes[member]
        cx, cy = cx0[box] + k % nx[member], r0[member] + k // nx[member]
        del member, k
        order = np.argsort((cy - s0) * (int(cx1.max()) + 2) + (cx - int(cx0.min())), kind="stable")
        box, cx, cy = box[order], cx[order], cy[order]
        new = np.r_[True, (cx[1:] != cx[:-1]) | (cy[1:] != cy[:-1])]
        size = np.diff(np.r_[np.flatnonzero(new), box.size])
        group, at = _group_ranges(size)
        partners = size[group] - at - 1
        total = np.cumsum(partners)
        done = 0
        while done < partners.size:
            stop = int(np.searchsorted(total, (total[done - 1] if done else 0) + chunk, "right"))
            stop = min(max(stop, done + 1), partners.size)
            src, off = _group_ranges(partners[done:stop])
            t = done + src
            i, j = box[t], box[t + 1 + off]
            overlap = (lo_x[i] <= hi_x[j]) & (lo_x[j] <= hi_x[i]) & (lo_y[i] <= hi_y[j]) & (lo_y[j] <= hi_y[i])
            here = (np.maximum(lo_x[i], lo_x[j]) // cell == cx[t]) & (np.maximum(lo_y[i], lo_y[j]) // cell == cy[t])
            keep = overlap & here
            yield np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])
            done = stop


def _even_odd(qx, qy, qring, v, starts, lengths, chunk: int = 1 << 16) -> np.ndarray:
    """Whether each query point lies inside its ring ``qring`` (even-odd rule, points off the boundary).

    A horizontal ray to the right is crossed by the segments whose half-open y range holds
    the point; queries sorted by (ring, y) find those segments' points by binary search.
    """
    inside = np.zeros(qx.size, np.int64)
    if not qx.size:
        return inside.astype(bool)
    order = np.lexsort((qy, qring))
    qkey = qring[order] * (1 << 32) + qy[order]
    rings = np.unique(qring)
    n = lengths[rings]
    ring, pos = _group_ranges(n)
    a = starts[rings][ring] + pos
    b = starts[rings][ring] + (pos + 1) % n[ring]
    ax, ay, bx, by = v[a, 0], v[a, 1], v[b, 0], v[b, 1]
    lo, hi = np.minimum(ay, by), np.maximum(ay, by)
    base = rings[ring] * (1 << 32)
    first = np.searchsorted(qkey, base + lo, "left")
    count = np.searchsorted(qkey, base + hi, "left") - first
    total = np.cumsum(count)
    done = 0
    while done < count.size:
        stop = int(np.searchsorted(total, (total[done - 1] if done else 0) + chunk, "right"))
        stop = min(max(stop, done + 1), count.size)
        seg, off = _group_ranges(count[done:stop])
        seg += done
        q = order[first[seg] + off]
        x_at = ax[seg] + (qy[q] - ay[seg]) * (bx[seg] - ax[seg]) / (by[seg] - ay[seg])
        inside += np.bincount(q[qx[q] < x_at], minlength=qx.size)
        done = stop
    return inside % 2 == 1


def _problems(rings: list[np.ndarray]) -> set[int]:
    """Indices of the rings of a polygon (exterior first) that break its validity.

    Checked: at least three vertices and orientation kept (exterior positive, holes
    negative), no spike folding back on itself, no two segments meeting except neighbours
    in a ring and rings touching at a shared vertex without crossing there, every hole
    inside the exterior and outside the other holes.
    """
    lengths = np.array([r.shape[0] for r in rings], np.int64)
    starts = np.cumsum(lengths) - lengths
    v = np.concatenate(rings).astype(np.int64)
    prev, nxt = _ring_neighbours(starts, lengths)
    ring_of, pos = _group_ranges(lengths)
    area = np.add.reduceat(v[:, 0] * v[nxt, 1] - v[nxt, 0] * v[:, 1], starts)
    wrong = (lengths < 3) | (area == 0) | ((area > 0) != (np.arange(len(rings)) == 0))
    d_in, d_out = v - v[prev], v[nxt] - v
    fold = (d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] == 0) & ((d_in * d_out).sum(axis=1) < 0)
    bad = set(np.flatnonzero(wrong).tolist()) | set(ring_of[fold].tolist())
    if bad:
        return bad
    ax, ay, bx, by = v[:, 0], v[:, 1], v[nxt, 0], v[nxt, 1]
    reach = np.maximum(np.abs(bx - ax), np.abs(by - ay))
    cell = max(4, 2 * int(np.median(reach)))
    for i, j in _box_pairs(np.minimum(ax, bx), np.minimum(ay, by), np.maximum(ax, bx), np.maximum(ay, by), cell):
        ri, rj = ring_of[i], ring_of[j]
        neighbours = (ri == rj) & ((nxt[i] == j) | (nxt[j] == i))
        i, j, ri, rj = i[~neighbours], j[~neighbours], ri[~neighbours], rj[~neighbours]
        o1 = _orient(ax[i], ay[i], bx[i], by[i], ax[j], ay[j])
        o2 = _orient(ax[i], ay[i], bx[i], by[i], bx[j], by[j])
        o3 = _orient(ax[j], ay[j], bx[j], by[j], ax[i], ay[i])
        o4 = _orient(ax[j], ay[j], bx[j], by[j], bx[i], by[i])
        line = (o1 == 0) & (o2 == 0)
        cross = ~line & (o1 * o2 <= 0) & (o3 * o4 <= 0)
        # collinear pairs meet where their extents along the line overlap
        use_x = ax[i] != bx[i]
        i0 = np.where(use_x, np.minimum(ax[i], bx[i]), np.minimum(ay[i], by[i]))
        i1 = np.where(use_x, np.maximum(ax[i], bx[i]), np.maximum(ay[i], by[i]))
        j0 = np.where(use_x, np.minimum(ax[j], bx[j]), np.minimum(ay[j], by[j]))
        j1 = np.where(use_x, np.maximum(ax[j], bx[j]), np.maximum(ay[j], by[j]))
        overlap = np.minimum(i1, j1) - np.maximum(i0, j0)
        shared = ((ax[i] == ax[j]) & (ay[i] == ay[j])) | ((ax[i] == bx[j]) & (ay[i] == by[j])) | (
            (bx[i] == ax[j]) & (by[i] == ay[j])) | ((bx[i] == bx[j]) & (by[i] == by[j]))
        # two rings may meet at one vertex they share; anything else is an intersection
        allowed = (ri != rj) & shared & ~(line & (overlap > 0))
        meet = (cross | (line & (overlap >= 0))) & ~allowed
        bad.update(ri[meet].tolist())
        bad.update(rj[meet].tolist())
    if len(rings) == 1 or bad:
        return bad
    # rings sharing a vertex must not cross there: each ring's two directions stay adjacent
    keys = _key(v)
    uniq, inverse, count = np.unique(keys, return_inverse=True, return_counts=True)
    for u in np.flatnonzero(count > 1).tolist():
        (r1, (p, q)), (r2, (s, w)) = [
            (int(ring_of[t]), [math.atan2(*(d[::-1])) for d in (v[prev[t]] - v[t], v[nxt[t]] - v[t])])
            for t in np.flatnonzero(inverse == u)[:2].tolist()
        ]
        span = (q - p) % (2 * math.pi)
        if (((s - p) % (2 * math.pi)) < span) != (((w - p) % (2 * math.pi)) < span):
            bad.update((r1, r2))
    # containment, probed at each ring's first vertex not shared with another ring
    free = count[inverse] == 1
    hit = np.flatnonzero(free)
    has, at = np.unique(ring_of[hit], return_index=True)
    probe = np.full(len(rings), -1)
    probe[has] = hit[at]
    holes = np.flatnonzero(probe[1:] >= 0) + 1
    qring = np.zeros(holes.size, np.int64)
    pairs = [(holes, qring)]
    if holes.size > 1:
        lo = np.minimum.reduceat(v, starts[holes])
        hi = np.maximum.reduceat(v, starts[holes])
        cell = max(4, int(np.median((hi - lo).max(axis=1))))
        for i, j in _box_pairs(lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1], cell):
            pairs += [(holes[i], holes[j]), (holes[j], holes[i])]
    which = np.concatenate([p for p, _ in pairs])
    target = np.concatenate([t for _, t in pairs])
    result = _even_odd(v[probe[which], 0], v[probe[which], 1], target, v, starts, lengths)
    wrong = result != (target == 0)  # inside the exterior, outside every other hole
    bad.update(which[wrong].tolist())
    bad.update(target[wrong].tolist())
    return bad


# --------------------------------------------------------------------------- polygons

_LEVELS = (1.0, 0.5, 0.25, 0.0)  # fractions of the tolerance tried in turn for rings that fail


def _first_min(values: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Position within each group (back to back) of its first smallest value."""
    group = np.repeat(np.arange(starts.size), lengths)
    best = np.minimum.reduceat(values, starts)
    hit = np.flatnonzero(values == best[group])
    _, first = np.unique(group[hit], return_index=True)
    return hit[first] - starts


def _small_rings_valid(v: np.ndarray, starts: np.ndarray, lengths: np.ndarray, limit: int = 64) -> np.ndarray:
    """Per ring (an exterior on its own): simple and counter-clockwise, tested all pairs at once.

    Rings longer than ``limit`` are reported invalid so that the caller checks them in full.
    """
    ok = np.zeros(starts.size, bool)
    for n in np.unique(lengths[lengths <= limit]).tolist():
        which = np.flatnonzero(lengths == n)
        a = v[starts[which][:, None] + np.arange(n)].astype(np.int64)  # [rings, n, 2]
        b = np.roll(a, -1, axis=1)
        area = (a[..., 0] * b[..., 1] - b[..., 0] * a[..., 1]).sum(axis=1)
        good = area > 0
        d_in, d_out = a - np.roll(a, 1, axis=1), b - a
        fold = ((d_in[..., 0] * d_out[..., 1] - d_in[..., 1] * d_out[..., 0]) == 0) & ((d_in * d_out).sum(-1) < 0)
        good &= ~fold.any(axis=1)
        i, j = np.triu_indices(n, 2)
        far = ~((i == 0) & (j == n - 1))
        i, j = i[far], j[far]
        if i.size:
            pa, pb, qa, qb = a[:, i], b[:, i], a[:, j], b[:, j]

            def orient(p, q, r):
                return np.sign((q[..., 0] - p[..., 0]) * (r[..., 1] - p[..., 1]) - (q[..., 1] - p[..., 1]) * (r[..., 0] - p[..., 0]))

            o1, o2, o3, o4 = orient(pa, pb, qa), orient(pa, pb, qb), orient(qa, qb, pa), orient(qa, qb, pb)
            # any contact between non-neighbouring segments (collinear ones counted too) fails
            meet = (o1 * o2 <= 0) & (o3 * o4 <= 0)
            good &= ~meet.any(axis=1)
        ok[which] = good
    return ok


def _simplified(rings: list[np.ndarray], fixed: list[np.ndarray], tols: list[float]) -> list[np.ndarray]:
    """Each ring simplified at its tolerance; a ring that would keep fewer than three vertices stays whole."""
    lengths = np.array([r.shape[0] for r in rings], np.int64)
    starts = np.cumsum(lengths) - lengths
    keep = _douglas_peucker(np.concatenate(rings).astype(np.int64), starts, lengths, np.concatenate(fixed),
                            np.asarray(tols, np.float64))
    out = []
    for r, s, n in zip(rings, starts.tolist(), lengths.tolist()):
        k = keep[s : s + n]
        out.append(r[k] if np.count_nonzero(k) >= 3 else r)
    return out


def _settle(full: list[np.ndarray], fixed: list[np.ndarray], current: list[np.ndarray], tol: float) -> list[np.ndarray]:
    """Lower the tolerance of the rings that make a polygon invalid until none does."""
    level = [0] * len(full)
    while True:
        problems = _problems(current)
        if not problems:
            return current
        bad = [k for k in sorted(problems) if level[k] < len(_LEVELS) - 1]
        if not bad:
            raise AssertionError("pixel outline rings found invalid")
        for k in bad:
            level[k] += 1
        redo = _simplified([full[k] for k in bad], [fixed[k] for k in bad], [tol * _LEVELS[level[k]] for k in bad])
        for k, r in zip(bad, redo):
            current[k] = r


def _prepare(rings: list[np.ndarray], fixed: list[np.ndarray | None], alone: np.ndarray, tol: float):
    """Rotate and simplify one batch of rings (any polygons); see ``_polygons``.

    Returns per ring: the exact ring, its fixed vertices, the simplified ring, whether
    simplification changed it, and whether it is known valid (a changed ring that forms a
    polygon ``alone`` and passed the small-ring test; unchanged rings are exact, so valid).
    """
    lengths = np.array([r.shape[0] for r in rings], np.int64)
    starts = np.cumsum(lengths) - lengths
    v = np.concatenate(rings).astype(np.int64)
    pinned = np.concatenate([f if f is not None else np.zeros(r.shape[0], bool) for r, f in zip(rings, fixed)])
    keys = _key(v)
    shift = _first_min(np.where(pinned, keys, keys | (1 << 62)), starts, lengths)
    del keys
    ring, pos = _group_ranges(lengths)
    take = starts[ring] + (pos + shift[ring]) % lengths[ring]
    del ring, pos
    v, pinned = v[take], pinned[take]
    del take
    full = _pieces(v.astype(np.int32), starts, lengths)
    fixed_out = _pieces(pinned, starts, lengths)
    if tol <= 0:
        return full, fixed_out, full, np.zeros(lengths.size, bool), np.ones(lengths.size, bool)
    keep = _douglas_peucker(v, starts, lengths, pinned, np.full(starts.size, float(tol)))
    kept = np.add.reduceat(keep.astype(np.int64), starts)
    keep[np.repeat(kept < 3, lengths)] = True
    kept = np.where(kept < 3, lengths, kept)
    changed = kept < lengths
    small = v[keep].astype(np.int32)
    simple = _pieces(small, np.cumsum(kept) - kept, kept)
    ok = ~changed
    check = np.flatnonzero(changed & alone)
    if check.size:
        n = kept[check]
        sel = np.repeat(np.isin(np.arange(lengths.size), check), kept)
        ok[check] = _small_rings_valid(small[sel], np.cumsum(n) - n, n)
    return full, fixed_out, simple, changed, ok


def _polygons(regions: list[list[tuple]], tol: float, chunk: int = 1 << 20) -> list[list[np.ndarray]]:
    """Rings (exterior first, then holes) of finished regions, simplified and valid.

    ``regions`` holds each region's rings as from ``_loops``. Rings are rotated to start at
    their first vertex in (y, x) order (first shared vertex where they touch another ring:
    those stay), so the result does not depend on where tracing began, and simplified in
    batches of about ``chunk`` vertices so that one huge region needs little extra memory.
    """
    members = []
    for loops in regions:
        shells = [(r, f) for r, a, f in loops if a > 0]
        if len(shells) != 1:
            raise AssertionError(f"a region traced into {len(shells)} exterior rings")
        members.append(shells + [(r, f) for r, a, f in loops if a < 0])
    flat = [m for ms in members for m in ms]
    if not flat:
        return [[] for _ in regions]
    alone = np.concatenate([[len(ms) == 1] + [False] * (len(ms) - 1) for ms in members])
    lengths = np.array([r.shape[0] for r, _ in flat], np.int64)
    batch = (np.cumsum(lengths) - lengths) // chunk
    cuts = np.r_[0, np.flatnonzero(np.diff(batch)) + 1, len(flat)].tolist()
    full, fixed, simple, changed, ok = [], [], [], [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out = _prepare([r for r, _ in flat[a:b]], [f for _, f in flat[a:b]], alone[a:b], tol)
        for acc, part in zip((full, fixed, simple, changed, ok), out):
            acc.extend(part)
    polygons, at = [], 0
    for ms in members:
        ks = range(at, at + len(ms))
        at += len(ms)
        rings = [simple[k] for k in ks]
        if not all(ok[k] for k in ks) or (len(ms) > 1 and any(changed[k] for k in ks)):
            rings = _settle([full[k] for k in ks], [fixed[k] for k in ks], rings, tol)
        polygons.append(rings)
    return polygons


# --------------------------------------------------------------------------- the writer


def _class_table(class_names, colours) -> dict[int, tuple[str, list[int]]]:
    """Class index -> (name, [r, g, b]) from a sequence (index = class) or a mapping."""
    names = dict(class_names.items()) if isinstance(class_names, Mapping) else dict(enumerate(class_names))
    if colours is None:
        cols = {k: PALETTE[k].tolist() for k in names if 0 <= k < 256}
    else:
        cols = dict(colours.items()) if isinstance(colours, Mapping) else dict(enumerate(colours))
    table = {}
    for k, name in names.items():
        if k == 0 or k not in cols:
            continue
        rgb = [int(c) for c in cols[k]]
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ValueError(f"colour of class {k} must be three values 0-255, got {cols[k]!r}")
        table[int(k)] = (str(name), rgb)
    return table


class _FeatureWriter:
    """Writes Features of finished regions to an open text file as they come, and counts them.

    Coordinates are formatted ring by ring, so even a region with millions of vertices is
    never held as Python objects all at once.
    """

    def __init__(self, out, table: dict[int, tuple[str, list[int]]], object_type: str,
                 downsample: tuple[float, float], offset: tuple[float, float]):
        self.out, self.table, self.object_type = out, table, object_type
        self.integral = all(float(v).is_integer() for v in (*downsample, *offset))
        kind = np.int64 if self.integral else np.float64
        self.scale, self.shift = np.array(downsample, kind), np.array(offset, kind)
        self.props: dict[int, str] = {}
        self.counts: dict[str, Any] = {"features": 0, "features_per_class": {}, "holes": 0, "vertices": 0}
        self.sep = "\n"
        out.write('{"type":"FeatureCollection","features":[')

    def _properties(self, cls: int) -> str:
        if cls not in self.props:
            name, rgb = self.table[cls]
            props = {"objectType": self.object_type, "classification": {"name": name, "color": rgb}, "isLocked": False}
            self.props[cls] = json.dumps(props, separators=(",", ":"))
            self.counts["features_per_class"].setdefault(name, 0)
        return self.props[cls]

    def write(self, classes: list[int], polygons: list[list[np.ndarray]]) -> None:
        """One Feature per polygon (rings in mask pixels, exterior first), coordinates scaled to level 0."""
        rings = [r for poly in polygons for r in poly]
        lengths = np.array([r.shape[0] for r in rings], np.int64)
        starts = np.cumsum(lengths) - lengths
        ring, within = _group_ranges(lengths + 1)
        v = np.concatenate(rings).astype(np.int64)[starts[ring] + within % lengths[ring]]  # closed rings
        del ring, within
        coords = v * self.scale + self.shift
        if not self.integral:
            coords = np.round(coords, 4)
        at = 0
        c = self.counts
        for cls, poly in zip(classes, polygons):
            parts = []
            for r in poly:
                n = r.shape[0] + 1
                parts.append(json.dumps(coords[at : at + n].tolist(), separators=(",", ":")))
                at += n
            self.out.write(f'{self.sep}{{"type":"Feature","geometry":{{"type":"Polygon","coordinates":['
                           f'{",".join(parts)}]}},"properties":{self._properties(cls)}}}')
            self.sep = ",\n"
            c["features_per_class"][self.table[cls][0]] += 1
        c["features"] += len(polygons)
        c["holes"] += len(rings) - len(polygons)
        c["vertices"] += int(lengths.sum())
        self.out.flush()  # a band's features go to disk now, not when the file closes

    def close(self) -> None:
        self.out.write("\n]}\n")


def write_geojson(
    path: str | Path,
    labels: np.ndarray,
    class_names: Sequence[str] | Mapping[int, str],
    *,
    colours: Sequence[Sequence[int]] | Mapping[int, Sequence[int]] | None = None,
    downsample: float | tuple[float, float] = 1.0,
    offset: tuple[float, float] = (0, 0),
    tolerance: float = 1.0,
    object_type: str = "annotation",
    band_rows: int | None = None,
) -> dict[str, Any]:
    """Write the regions of a class mask as a QuPath-readable GeoJSON FeatureCollection.

    ``labels`` is a ``[H, W]`` uint8 array of class indices, 0 = background; anything that
    slices by rows like an array works, e.g. a ``numpy.memmap`` of a gigapixel mask, which
    is read ``band_rows`` rows at a time (default: about 8 M pixels per band). Every
    4-connected region of a class becomes one Polygon Feature (holes as interior rings)
    with ``properties`` ``{"objectType": object_type, "classification": {"name", "color"},
    "isLocked": false}``, written as soon as the region is complete; the file appears
    under ``path`` only once everything is written.

    ``class_names[k]`` names class ``k`` (a sequence indexed by class, entry 0 ignored, or a
    mapping); ``colours`` likewise, default the project palette. Coordinates are level-0
    pixels: ``offset + downsample * (x, y)`` with ``(x, y)`` on the mask's pixel grid, so a
    mask of pyramid level L passes that level's downsample (a number, or ``(x, y)``
    factors) and ``offset`` places a crop ``(x, y)`` within the slide. ``tolerance`` is the
    simplification tolerance in mask pixels (0: exact pixel outlines).

    Returns counts: ``features``, ``features_per_class`` (by name), ``holes`` and
    ``vertices`` (distinct ring vertices, without the repeated closing ones).
    """
    path = Path(path)
    if path.suffix.lower() not in GEOJSON_SUFFIXES:
        raise NCAError(f"Cannot write polygons to {path}: use a .geojson or .json file name.")
    if len(labels.shape) != 2 or np.dtype(labels.dtype) != np.uint8:
        raise ValueError(f"labels must be uint8 [H, W], got {labels.dtype} {labels.shape}")
    if object_type not in OBJECT_TYPES:
        raise ValueError(f"object_type must be one of {OBJECT_TYPES}, got {object_type!r}")
    dx, dy = (downsample, downsample) if np.ndim(downsample) == 0 else tuple(downsample)
    ox, oy = offset
    if not (dx > 0 and dy > 0):
        raise ValueError(f"downsample must be positive, got {downsample!r}")
    if tolerance < 0:
        raise ValueError(f"tolerance must be >= 0, got {tolerance!r}")
    H, W = (int(n) for n in labels.shape)
    rows = int(band_rows) if band_rows is not None else max(1, BAND_PIXELS // max(W, 1))
    if rows < 1:
        raise ValueError(f"band_rows must be >= 1, got {band_rows!r}")
    table = _class_table(class_names, colours)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        writer = _FeatureWriter(out, table, object_type, (dx, dy), (ox, oy))
        tracers: dict[int, _ClassTracer] = {}
        next_id = 1
        up = np.zeros(W, np.uint8)
        for y0 in range(0, H if W else 0, rows):
            band = np.asarray(labels[y0 : y0 + rows])
            if y0 + rows >= H:  # a background row below closes every region
                band = np.concatenate([band, np.zeros((1, W), np.uint8)])
            present = set((np.flatnonzero(np.bincount(band.ravel(), minlength=256)[1:]) + 1).tolist())
            unnamed = present - table.keys()
            if unnamed:
                raise ValueError(f"labels hold class {min(unnamed)}, which class_names does not name")
            finished = []
            for cls in sorted(present | set(tracers)):
                tracer = tracers.setdefault(cls, _ClassTracer())
                done, next_id = tracer.feed(band == cls, up == cls, y0, next_id)
                finished.extend((cls, rings) for _, rings in done)
                if tracer.idle():
                    del tracers[cls]
            if finished:
                writer.write([c for c, _ in finished], _polygons([loops for _, loops in finished], tolerance))
            up = band[-1].copy()
        writer.close()
    return writer.counts
