"""Douglas-Peucker simplification of boundary rings that keeps every polygon valid (for GeoJSON).

Rings are simplified at the tolerance; a simplified polygon is checked (simple rings, no
crossings, holes inside the exterior, orientation kept, at least three vertices) and rings
that fail are simplified again with a smaller tolerance, down to the exact pixel outline.
"""
from __future__ import annotations

import math

import numpy as np

from .contours import _group_ranges, _key, _pieces, _ring_neighbours


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


def _chunked_groups(counts: np.ndarray, chunk: int):
    """``_group_ranges(counts)`` in pieces of about ``chunk`` items (whole groups, at least one
    per piece): yields each item's group and its index within the group."""
    total = np.cumsum(counts)
    done = 0
    while done < counts.size:
        stop = int(np.searchsorted(total, (total[done - 1] if done else 0) + chunk, "right"))
        stop = min(max(stop, done + 1), counts.size)
        group, within = _group_ranges(counts[done:stop])
        yield done + group, within
        done = stop


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
        for t, off in _chunked_groups(partners, chunk):
            i, j = box[t], box[t + 1 + off]
            overlap = (lo_x[i] <= hi_x[j]) & (lo_x[j] <= hi_x[i]) & (lo_y[i] <= hi_y[j]) & (lo_y[j] <= hi_y[i])
            here = (np.maximum(lo_x[i], lo_x[j]) // cell == cx[t]) & (np.maximum(lo_y[i], lo_y[j]) // cell == cy[t])
            keep = overlap & here
            yield np.minimum(i[keep], j[keep]), np.maximum(i[keep], j[keep])


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
    for seg, off in _chunked_groups(count, chunk):
        q = order[first[seg] + off]
        x_at = ax[seg] + (qy[q] - ay[seg]) * (bx[seg] - ax[seg]) / (by[seg] - ay[seg])
        inside += np.bincount(q[qx[q] < x_at], minlength=qx.size)
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
    bad = _shape_problems(v, prev, nxt, starts, lengths, ring_of)
    if bad:
        return bad
    bad = _segment_meetings(v, nxt, ring_of)
    if len(rings) == 1 or bad:
        return bad
    keys = _key(v)
    uniq, inverse, count = np.unique(keys, return_inverse=True, return_counts=True)
    bad |= _vertex_crossings(v, prev, nxt, ring_of, inverse, count)
    bad |= _containment_problems(v, starts, lengths, ring_of, count[inverse] == 1, len(rings))
    return bad


def _shape_problems(v, prev, nxt, starts, lengths, ring_of) -> set[int]:
    """Rings with under three vertices, a wrong orientation or a spike folding back on itself."""
    area = np.add.reduceat(v[:, 0] * v[nxt, 1] - v[nxt, 0] * v[:, 1], starts)
    wrong = (lengths < 3) | (area == 0) | ((area > 0) != (np.arange(len(lengths)) == 0))
    d_in, d_out = v - v[prev], v[nxt] - v
    fold = (d_in[:, 0] * d_out[:, 1] - d_in[:, 1] * d_out[:, 0] == 0) & ((d_in * d_out).sum(axis=1) < 0)
    return set(np.flatnonzero(wrong).tolist()) | set(ring_of[fold].tolist())


def _segment_meetings(v, nxt, ring_of) -> set[int]:
    """Rings with two segments that meet, other than neighbours in a ring or rings sharing one vertex."""
    bad: set[int] = set()
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
    return bad


def _vertex_crossings(v, prev, nxt, ring_of, inverse, count) -> set[int]:
    """Rings sharing a vertex that cross there: each ring's two directions must stay adjacent."""
    bad: set[int] = set()
    for u in np.flatnonzero(count > 1).tolist():
        (r1, (p, q)), (r2, (s, w)) = [
            (int(ring_of[t]), [math.atan2(*(d[::-1])) for d in (v[prev[t]] - v[t], v[nxt[t]] - v[t])])
            for t in np.flatnonzero(inverse == u)[:2].tolist()
        ]
        span = (q - p) % (2 * math.pi)
        if (((s - p) % (2 * math.pi)) < span) != (((w - p) % (2 * math.pi)) < span):
            bad.update((r1, r2))
    return bad


def _containment_problems(v, starts, lengths, ring_of, free, n_rings: int) -> set[int]:
    """Holes outside the exterior or inside another hole, probed at each ring's first vertex
    not shared with another ring (``free``)."""
    hit = np.flatnonzero(free)
    has, at = np.unique(ring_of[hit], return_index=True)
    probe = np.full(n_rings, -1)
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
    return set(which[wrong].tolist()) | set(target[wrong].tolist())


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


