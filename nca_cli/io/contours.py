"""Region boundaries of class masks, traced band by band along pixel edges (for GeoJSON).

Used by :mod:`nca_cli.io.geojson`; see its docstring for the geometry (pixel edges, pinches,
4-connected foreground) and the memory held between bands.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk

_E, _S, _W, _N = 0, 1, 2, 3  # directions of travel (y down); a right turn is (d + 1) % 4
_STUB_IN, _STUB_OUT = 1, 2  # vertical edges of the row above a band, where pieces cross into it

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


