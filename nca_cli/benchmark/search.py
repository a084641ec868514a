"""The largest input one pass of a subject fits in a memory budget: measured, fitted, verified.

1. Ladder: passes on growing inputs (each in a fresh process) until a pass takes
   ``ladder_seconds`` or needs half the budget. NCAs run these as probes: at most
   ``PROBE_STEPS`` steps per level, which hold the same tensors as every later step, so the
   peak is the full pass's at a fraction of the time.
2. Fit peak bytes against pixels (a line) and predict the largest size within the budget.
3. Timing: full passes (every configured step), from the size the probes suggest takes half
   of ``timing_seconds``, growing until one takes about ``timing_seconds``; the time at the limit is the largest one's scaled by pixels. A probe
   at that size checks the probe against the full pass; when the full pass peaks higher,
   probe peaks are scaled up by that factor against the budget.
4. Verify: run at the predicted limit; over the budget, step down and run again. When the
   limit needs more memory than this machine can give a run, or a pass there would take
   longer than ``verify_seconds``, run at the largest size that is possible instead, refit
   with it and report the limit as extrapolated.
5. A pass that crashes (not out of memory) bounds the answer too: the search bisects
   between the largest size that ran and the size that crashed, and reports both.

The budget bounds the whole process, as in ``nca segment``: a pass may add what the memory
model's ``usable_budget`` leaves above the measuring process's own baseline (Python, its
libraries, the model; the largest seen, rounded up to ``BASELINE_STEP`` so that a few MiB of
noise do not move the answer). A budget below that baseline is refused with ``segment``'s
sentence (``inference.memory.check_budget``). For fused NCAs, the passes ``segment`` runs, the
limit is the memory model's (the largest input ``segment`` would run in one pass), which does
not depend on noisy measurements; the runs verify it.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

from ..inference.memory import check_budget, format_size, usable_budget
from .fit import LinearFit, fit_line, largest_size
from .geometry import GEOMETRIES, Geometry
from .measure import make_spec, run_measurement
from .subjects import PROBE_STEPS, Subject

Measure = Callable[[dict, float], dict]
Log = Callable[[str], None]


@dataclass
class SearchSettings:
    budget: int                     # bytes the whole measuring process may peak at (the memory budget)
    machine_bytes: int              # bytes this machine can give one measuring process
    device: str = "cpu"
    ladder_seconds: float = 10.0    # longest ladder pass
    timing_seconds: float = 45.0    # longest full pass used for timing
    verify_seconds: float = 150.0   # longest verification pass
    min_points: int = 3
    max_points: int = 6
    crash_steps: int = 3            # bisection runs after a crash
    seed: int = 0
    startup_seconds: float = 300.0  # allowance per process for start-up (imports, kernel builds)


@dataclass
class MaxSizeResult:
    task: str
    subject: Subject
    budget: int
    size: int | None = None
    verification: str = "failed"    # measured | extrapolated | crash-limited | does-not-fit | unavailable | failed
    verified_text: str = ""
    verified_short: str = ""
    fit: LinearFit | None = None
    memory_limit: int | None = None     # the size the memory fit allows (before any crash bound)
    crash: dict | None = None           # {"size", "error"} of the smallest size seen to crash
    seconds_at_size: float | None = None
    time_text: str = ""
    peak_at_size: int | None = None
    measurements: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    elapsed: float = 0.0

    @property
    def geometry(self) -> Geometry:
        return GEOMETRIES[self.task]

    @property
    def value(self) -> float | None:
        return None if self.size is None else self.geometry.value(self.size)

    @property
    def rate(self) -> float | None:
        if self.size is None or self.seconds_at_size is None:
            return None
        return self.geometry.rate(self.size, self.seconds_at_size)

    @property
    def bytes_per_pixel(self) -> float | None:
        return None if self.fit is None else self.fit.slope

    def to_dict(self) -> dict:
        g = self.geometry
        return {
            "model": self.subject.model, "label": self.subject.label, "impl": self.subject.impl,
            "impl_label": self.subject.impl_label, "state_dtype": self.subject.state_dtype,
            "input": self.subject.input_mode, "paper_row": self.subject.paper_row, "budget_bytes": self.budget,
            "max_size": self.size, "size_unit": g.size_name,
            "max_shape": list(g.spatial_shape(self.size)) if self.size else None,
            "max_value": self.value, "value_unit": g.value_unit,
            "max_megapixels": g.pixels(self.size) / 1e6 if self.size else None,
            "memory_limit_size": self.memory_limit,
            "memory_limit_value": g.value(self.memory_limit) if self.memory_limit else None,
            "crash": self.crash,
            "throughput": self.rate, "throughput_unit": g.rate_unit,
            "seconds_at_max": self.seconds_at_size, "time_source": self.time_text,
            "bytes_per_pixel": self.bytes_per_pixel, "peak_bytes_at_max": self.peak_at_size,
            "verification": self.verification, "verified": self.verified_text,
            "verified_short": self.verified_short or self.verification,
            "memory_fit": self.fit.to_dict() if self.fit else None,
            "notes": list(self.notes), "measurements": list(self.measurements), "elapsed_seconds": self.elapsed,
        }


BASELINE_STEP = 8 << 20     # the measured baseline is rounded up to this


def _gib(n: float) -> str:
    return format_size(n)


def _crashed(r: dict) -> bool:
    return not r.get("ok") and not (r.get("oom") or r.get("timeout") or r.get("unavailable"))


class _Search:
    def __init__(self, task: str, subject: Subject, settings: SearchSettings, measure: Measure, log: Log | None):
        self.g = GEOMETRIES[task]
        self.task = task
        self.subject = subject
        self.s = settings
        self.measure = measure
        self.log = log or (lambda text: None)
        self.q = max(1, subject.divisor)
        self.probe = subject.is_nca
        self.probe_factor = 1.0     # full-pass peak / probe peak at the same size (>= 1)
        self.result = MaxSizeResult(task, subject, settings.budget)
        self.points: list[dict] = []    # successful runs in the search's mode (probe or full)
        self.full: list[dict] = []      # successful full passes (for the time)
        self.baseline = 0               # the measuring process's own memory (see the module doc)

    # -- sizes --------------------------------------------------------------------------
    def up(self, size: float) -> int:
        return max(self.q, math.ceil(size / self.q) * self.q)

    def down(self, size: float) -> int:
        return max(self.q, math.floor(size / self.q) * self.q)

    def size_for(self, pixels: float) -> float:
        return self.g.size_for_pixels(pixels)

    def px(self, size: int) -> int:
        return self.g.pixels(size)

    # -- runs ---------------------------------------------------------------------------
    def run(self, size: int, probe: bool, role: str, expect_seconds: float) -> dict:
        spec = make_spec(self.task, self.subject, size, probe=probe, device=self.s.device, seed=self.s.seed)
        r = self.measure(spec, 3 * expect_seconds + self.s.startup_seconds)
        r["role"] = role
        self.result.measurements.append(r)
        kind = "probe" if probe else "full"
        if r.get("ok") and r.get("baseline_bytes") is not None:
            self.baseline = max(self.baseline, math.ceil(r["baseline_bytes"] / BASELINE_STEP) * BASELINE_STEP)
            check_budget(self.s.budget, self.baseline)
        if r.get("ok"):
            if probe == self.probe:
                self.points.append(r)
            if not probe:
                self.full.append(r)
            self.log(f"{role:7s} {kind:5s} {self.g.describe(size):34s} peak {_gib(r['peak_bytes']):>10s}  "
                     f"{r['seconds']:7.2f} s")
        else:
            self.log(f"{role:7s} {kind:5s} {self.g.describe(size):34s} failed: {r.get('error')}")
        return r

    def fit(self) -> LinearFit:
        return fit_line([p["pixels"] for p in self.points], [p["peak_bytes"] for p in self.points])

    def predict_peak(self, size: int) -> float:
        if len(self.points) >= 2:
            return self.fit().predict(self.px(size))
        big = self.biggest()
        return big["peak_bytes"] * self.px(size) / big["pixels"]

    def predict_seconds(self, size: int, runs: list[dict] | None = None) -> float:
        """Time proportional to pixels, from the largest run (``self.points`` by default)."""
        big = max(runs or self.points, key=lambda p: p["pixels"])
        return big["seconds"] * self.px(size) / big["pixels"]

    def biggest(self) -> dict:
        return max(self.points, key=lambda p: p["pixels"])

    @property
    def pass_budget(self) -> float:
        """What one pass may add to the process within the budget."""
        return usable_budget(self.s.budget) - self.baseline

    # -- 1. ladder ------------------------------------------------------------------------
    def ladder(self) -> bool:
        size = self.up(self.g.start)
        room = self.s.machine_bytes
        while True:
            r = self.run(size, self.probe, "ladder", self.s.ladder_seconds)
            if not r.get("ok"):
                if r.get("unavailable"):
                    self.result.verification = "unavailable"
                    self.result.verified_text = r.get("error", "unavailable")
                    return False
                if len(self.points) >= 2:
                    self.result.notes.append(f"ladder stopped at {self.g.describe(size)}: {r.get('error')}")
                    break
                self.result.verified_text = f"measurement failed: {r.get('error')}"
                return False
            room = self.s.machine_bytes - r["baseline_bytes"]
            if len(self.points) >= self.s.max_points:
                break
            big = self.biggest()
            cap = 0.5 * min(self.pass_budget, room)
            nxt = None
            for growth in (4, 2):
                cand = max(self.up(self.size_for(big["pixels"] * growth)), big["size"] + self.q)
                if self.predict_seconds(cand) <= self.s.ladder_seconds and self.predict_peak(cand) <= cap:
                    nxt = cand
                    break
            if nxt is None:
                if len(self.points) >= self.s.min_points:
                    break
                nxt = self._extra_point(room)
                if nxt is None:
                    break
            size = nxt
        if len(self.points) < 2:
            self.result.verified_text = "too few measurements fit this machine to fit a line"
            return False
        return True

    def _extra_point(self, room: float) -> int | None:
        """A further ladder size when growing is too slow or too big: twice the largest if that
        still fits the machine and ``verify_seconds``, else half the smallest."""
        big = self.biggest()
        cand = max(self.up(self.size_for(big["pixels"] * 2)), big["size"] + self.q)
        if self.predict_peak(cand) <= room and self.predict_seconds(cand) <= self.s.verify_seconds:
            return cand
        small = min(self.points, key=lambda p: p["pixels"])
        cand = self.down(self.size_for(small["pixels"] / 2))
        return cand if cand < small["size"] else None

    # -- 3. timing ------------------------------------------------------------------------
    def timing(self, limit: int, room: float) -> None:
        """Full passes growing towards ``timing_seconds``; then the probe check (a probe at the
        size of the largest full pass), which sets ``probe_factor``."""
        if not self.probe:
            return
        cap_mem = largest_size(self.fit(), room, self.px, quantum=self.q) or self.q
        big = self.biggest()
        per_px = big["seconds"] / big["pixels"] * self._steps_ratio()         # a guess from the probes
        smallest = min(self.points, key=lambda p: p["pixels"])["size"]
        size = max(smallest, min(self.down(self.size_for(self.s.timing_seconds / 2 / per_px)), limit, cap_mem))
        expect = per_px * self.px(size)
        for _ in range(3):
            r = self.run(size, False, "timing", expect)
            if not r.get("ok"):
                self.result.notes.append(f"full-pass timing run failed: {r.get('error')}")
                break
            if r["seconds"] >= self.s.timing_seconds / 3:
                break
            nxt = min(self.down(self.size_for(r["pixels"] * self.s.timing_seconds / max(r["seconds"], 1e-3))),
                      limit, cap_mem)
            if self.px(nxt) < 2 * r["pixels"]:
                break
            size, expect = nxt, self.s.timing_seconds
        if not self.full:
            return
        ref = max(self.full, key=lambda p: p["pixels"])
        probe = next((p for p in self.points if p["size"] == ref["size"]), None)
        if probe is None:
            probe = self.run(ref["size"], True, "check", ref["seconds"] / self._steps_ratio())
            if not probe.get("ok"):
                return
        ratio = ref["peak_bytes"] / max(probe["peak_bytes"], 1)
        self.probe_factor = max(1.0, ratio)
        self.result.notes.append(
            f"probe check at {self.g.describe(ref['size'])}: full pass peak {_gib(ref['peak_bytes'])}, "
            f"{PROBE_STEPS}-step probe {_gib(probe['peak_bytes'])} ({100 * (ratio - 1):+.1f}%)"
            + (f"; probe peaks are scaled by {ratio:.3f} against the budget" if ratio > 1 else ""))

    def _steps_ratio(self) -> float:
        """Rough time of a full pass over a probe (for time-outs only)."""
        steps = self.subject.config.get("steps") or [1]
        return max(1.0, max(steps) / PROBE_STEPS)

    # -- whole search ---------------------------------------------------------------------
    def search(self) -> MaxSizeResult:
        t0 = time.perf_counter()
        try:
            self._search()
        finally:
            self.result.elapsed = time.perf_counter() - t0
        return self.result

    def _search(self) -> None:
        res, budget = self.result, self.s.budget
        if not self.ladder():
            return
        limit = largest_size(self.fit(), self.pass_budget, self.px, quantum=self.q)
        room = self.s.machine_bytes - max(p["baseline_bytes"] for p in self.points)
        if limit is None:
            res.fit = self.fit()
            res.verification = "does-not-fit"
            res.verified_text = (f"even the smallest input needs about {_gib(res.fit.predict(self.px(self.q)))} "
                                 f"above nca's own {_gib(self.baseline)} > budget {_gib(budget)}")
            return
        self.timing(limit, room)
        self.allowed = self.pass_budget / self.probe_factor if self.probe else self.pass_budget
        limit = self._model_limit() or largest_size(self.fit(), self.allowed, self.px, quantum=self.q)
        cap_mem = largest_size(self.fit(), room, self.px, quantum=self.q) or self.q
        cap_time = self.down(self.size_for(self.biggest()["pixels"] * self.s.verify_seconds
                                           / max(self.biggest()["seconds"], 1e-3)))
        if limit is not None and limit <= min(cap_mem, cap_time):
            self._verify_at_limit(limit)
        else:
            why = (f"this machine can give a run about {_gib(room)}" if cap_mem < cap_time else
                   f"a pass at the limit would take longer than {self.s.verify_seconds:.0f} s")
            self._extrapolate(min(cap_mem, cap_time), why)
        res.fit = self.fit()
        if res.size is not None:
            self._time_at_size()

    def _verify_at_limit(self, limit: int) -> None:
        res = self.result
        target = limit
        for _ in range(5):
            r = self.run(target, self.probe, "verify", self.predict_seconds(target))
            if r.get("ok") and r["peak_bytes"] <= self.allowed:
                res.size, res.memory_limit = target, target
                res.verification = "measured"
                res.peak_at_size = self._whole(r["peak_bytes"] * (self.probe_factor if self.probe else 1.0))
                res.verified_text = (f"measured at limit: {self._peak_text(r)} + nca's own {_gib(self.baseline)} "
                                     f"<= budget {_gib(self.s.budget)}")
                res.verified_short = f"measured: {_gib(res.peak_at_size)}"
                return
            if _crashed(r):
                self._after_crash(r, largest_size(self.fit(), self.allowed, self.px, quantum=self.q), "measured")
                return
            if r.get("ok"):
                nxt = largest_size(self.fit(), self.allowed, self.px, quantum=self.q)
                scaled = self.down(self.size_for(self.px(target) * self.allowed / r["peak_bytes"] * 0.995))
                nxt = scaled if nxt is None or nxt >= target else min(nxt, scaled)
            else:
                nxt = self.down(self.size_for(0.8 * self.px(target)))
            if nxt >= target:
                nxt = target - self.q
            if nxt < self.q:
                break
            target = nxt
        res.verification = "does-not-fit"
        res.verified_text = f"no verified size within budget {_gib(self.s.budget)}"

    def _extrapolate(self, target: int, why: str) -> None:
        res = self.result
        if target > self.biggest()["size"]:
            r = self.run(target, self.probe, "verify", self.predict_seconds(target))
            if not r.get("ok") and (r.get("oom") or r.get("timeout")):
                smaller = self.down(self.size_for(0.7 * self.px(target)))
                r = self.run(smaller, self.probe, "verify", self.predict_seconds(smaller))
            if _crashed(r):
                limit = largest_size(self.fit(), self.allowed, self.px, quantum=self.q)
                self._after_crash(r, limit, "extrapolated")
                return
            if not r.get("ok"):
                res.notes.append(f"verification run failed: {r.get('error')}")
        fit = self.fit()
        res.size = res.memory_limit = largest_size(fit, self.allowed, self.px, quantum=self.q)
        res.verification = "extrapolated"
        big = self.biggest()
        res.peak_at_size = (self._whole(fit.predict(self.px(res.size)) * self.pass_budget / self.allowed)
                            if res.size else None)
        res.verified_text = (f"extrapolated from {len(self.points)} runs up to {self.g.describe(big['size'])} "
                             f"(peak {self._peak_text(big)}; {why}); fit residual "
                             f"<= {100 * fit.max_rel_residual:.1f}% over the larger half of the runs")
        res.verified_short = (f"extrapolated ({len(self.points)} runs, largest {big['pixels'] / 1e6:.1f} MP, "
                              f"{_gib(big['peak_bytes'])})")

    def _after_crash(self, crashed: dict, memory_limit: int | None, how: str) -> None:
        """Bisect (in pixels, geometrically) between the largest size that ran and ``crashed``."""
        res = self.result
        lo, hi, error = self.biggest()["size"], crashed["size"], crashed.get("error")
        for _ in range(self.s.crash_steps):
            mid = self.down(self.size_for(math.sqrt(self.px(lo) * self.px(hi))))
            if mid <= lo or mid >= hi:
                break
            r = self.run(mid, self.probe, "crash", self.predict_seconds(mid))
            if r.get("ok") and r["peak_bytes"] <= self.allowed:
                lo = mid
            elif r.get("ok"):
                break
            else:
                hi, error = mid, r.get("error", error)
        ran = next(p for p in self.points if p["size"] == lo)
        res.crash = {"size": hi, "value": self.g.value(hi), "error": error}
        res.memory_limit = largest_size(self.fit(), self.allowed, self.px, quantum=self.q) or memory_limit
        res.size = lo
        res.verification = "crash-limited"
        res.peak_at_size = self._whole(ran["peak_bytes"] * (self.probe_factor if self.probe else 1.0))
        allows = (f"; memory alone would allow {self.g.describe(res.memory_limit)} ({how})"
                  if res.memory_limit else "")
        res.verified_text = (f"the pass crashes at {self.g.describe(hi)} ({error}); largest size that ran: "
                             f"{self.g.describe(lo)}, peak {self._peak_text(ran)}{allows}")
        res.verified_short = f"crashes above {self.g.value(lo):.1f} {self.g.value_unit}"

    def _time_at_size(self) -> None:
        res = self.result
        if not self.full:
            return
        ref = max(self.full, key=lambda p: p["pixels"])
        res.seconds_at_size = self.predict_seconds(res.size, self.full)
        res.time_text = ("measured at the limit" if ref["size"] == res.size else
                         f"scaled from a full pass on {self.g.describe(ref['size'])}")

    def _whole(self, pass_bytes: float) -> int:
        """The whole process's peak for a pass adding ``pass_bytes``."""
        return int(pass_bytes + self.baseline)

    def _model_limit(self) -> int | None:
        """For a fused NCA (the pass ``segment`` runs): the largest size whose single pass the
        memory model predicts within ``pass_budget``; None for other subjects."""
        if not (self.subject.is_nca and self.subject.impl == "fused"):
            return None
        import torch

        from ..inference.memory import InputCost, single_pass_bytes
        from ..core.choices import torch_dtype
        from .subjects import build_subject_model

        model = build_subject_model(self.subject, seed=self.s.seed)
        cost = InputCost(model.config.input_channels)
        device_type = torch.device(self.s.device).type

        def fits(size: int) -> bool:
            return single_pass_bytes(model, self.g.spatial_shape(size), dtype=torch_dtype(self.subject.state_dtype),
                                     impl="fused", cost=cost, device_type=device_type) <= self.pass_budget

        if not fits(self.q):
            return None
        lo, hi = self.q, self.q
        while fits(hi):
            lo, hi = hi, hi * 2
        while hi - lo > self.q:
            mid = self.down((lo + hi) / 2)
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
        return lo

    def _peak_text(self, run: dict) -> str:
        if not run["probe"]:
            return _gib(run["peak_bytes"])
        text = f"{_gib(run['peak_bytes'])} with {PROBE_STEPS} steps per level"
        if self.probe_factor > 1:
            text += (f", x {self.probe_factor:.3f} (probe check) = "
                     f"{_gib(run['peak_bytes'] * self.probe_factor)}")
        return text


def find_max_size(task: str, subject: Subject, settings: SearchSettings, *, measure: Measure = run_measurement,
                  log: Log | None = None) -> MaxSizeResult:
    """Largest single-pass input of ``subject`` within ``settings.budget`` (see module doc)."""
    return _Search(task, subject, settings, measure, log).search()
