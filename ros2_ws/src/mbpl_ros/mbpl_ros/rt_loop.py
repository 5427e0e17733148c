"""A control thread that runs one tick per period against absolute wall-clock deadlines.

Deadline i is t_0 + i·period (monotonic clock). The thread sleeps until the deadline, runs ``tick`` and
moves on to deadline i+1, so sleep overshoot and compute time do not accumulate into drift (a relative
``sleep(period)`` loop runs slow by both). rclpy timers drop ticks at 1 kHz and cost ~5× the CPU of
this loop on the project's machines (DESIGN.md), which is why the sampler does not use them.

Deadline misses: a tick that starts more than ``miss_tolerance`` after its deadline is a miss; when the
loop falls more than a whole period behind, the missed deadlines are skipped (each counted as a miss)
and the loop resynchronises on the same grid instead of bursting ticks to catch up — a burst of stale
commands is worse for a robot than a skipped one.

:class:`LoopStats` keeps the last ``window`` ticks' start times, deadlines and compute durations to
report period jitter |Δt_start − period|, start lateness and compute time percentiles.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class TickInfo:
    """What a tick knows about its timing: index i, deadline_ns = t_0 + i·period, actual start_ns."""

    index: int
    deadline_ns: int
    start_ns: int


class LoopStats:
    """Ring buffers of the last ``window`` ticks: start times (ns), lateness (ns), compute times (ns).

    Thread-safe: the loop thread records, any other thread reads a :meth:`summary`.
    """

    def __init__(self, period_ns: int, window: int = 10_000) -> None:
        if period_ns <= 0 or window < 2:
            raise ValueError(f"LoopStats needs period_ns > 0 and window >= 2, got {period_ns}, {window}")
        self.period_ns = int(period_ns)
        self._start = np.zeros(window, dtype=np.int64)
        self._late = np.zeros(window, dtype=np.int64)
        self._compute = np.zeros(window, dtype=np.int64)
        self._count = 0
        self.deadline_misses = 0
        self._lock = threading.Lock()

    @property
    def ticks(self) -> int:
        """Ticks recorded since the start."""
        return self._count

    def record(self, info: TickInfo, end_ns: int) -> None:
        """One tick: started at info.start_ns for deadline info.deadline_ns, finished at end_ns."""
        i = self._count % self._start.size
        with self._lock:
            self._start[i] = info.start_ns
            self._late[i] = info.start_ns - info.deadline_ns
            self._compute[i] = end_ns - info.start_ns
            self._count += 1

    def add_misses(self, n: int) -> None:
        """Count n missed deadlines."""
        with self._lock:
            self.deadline_misses += int(n)

    def _ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n = min(self._count, self._start.size)
        order = (np.arange(n) + (self._count - n)) % self._start.size
        return self._start[order], self._late[order], self._compute[order]

    def summary(self) -> dict[str, float | int]:
        """Ticks and misses (counts); achieved rate (Hz) over the window; p50/p99 of period jitter,
        lateness and compute time (µs)."""
        with self._lock:
            start, late, compute = (a.copy() for a in self._ordered())
            misses = self.deadline_misses
        out: dict[str, float | int] = {"ticks": self._count, "deadline_misses": misses}
        if start.size >= 2:
            periods = np.diff(start)
            out["achieved_rate_hz"] = float(NS_PER_S * periods.size / max(1, start[-1] - start[0]))
            jitter = np.abs(periods - self.period_ns) * 1e-3
            out["period_jitter_p50_us"] = float(np.percentile(jitter, 50))
            out["period_jitter_p99_us"] = float(np.percentile(jitter, 99))
        if start.size >= 1:
            out["lateness_p50_us"] = float(np.percentile(late, 50) * 1e-3)
            out["lateness_p99_us"] = float(np.percentile(late, 99) * 1e-3)
            out["compute_p50_us"] = float(np.percentile(compute, 50) * 1e-3)
            out["compute_p99_us"] = float(np.percentile(compute, 99) * 1e-3)
        return out


class DeadlineLoop:
    """Calls ``tick(TickInfo)`` on its own thread at absolute deadlines t_0 + i·period.

    ``clock`` (ns) and ``sleep_until`` are injectable so tests can drive the loop on a fake clock;
    ``sleep_until(deadline_ns, stop)`` must return early when ``stop`` is set. An exception in ``tick``
    stops the loop and is kept in :attr:`error` (the owner decides what a dead control loop means).

    ``priority`` 1–99 asks for SCHED_FIFO at that priority for the loop thread alone (as ros2_control's
    controller manager does; needs root or CAP_SYS_NICE); refused, the loop runs at normal priority and
    :attr:`scheduling` says why. 0 keeps normal scheduling.
    """

    def __init__(
        self,
        period_s: float,
        tick: Callable[[TickInfo], None],
        name: str = "deadline_loop",
        miss_tolerance_s: float | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        sleep_until: Callable[[int, threading.Event], None] | None = None,
        priority: int = 0,
    ) -> None:
        if not np.isfinite(period_s) or period_s <= 0:
            raise ValueError(f"period_s must be a positive number of seconds, got {period_s}")
        if not 0 <= priority <= 99:
            raise ValueError(f"priority must be in [0, 99], got {priority}")
        self.priority = int(priority)
        self.scheduling = "normal"  # set by the loop thread when it starts
        self.started = threading.Event()
        self.period_ns = int(round(period_s * NS_PER_S))
        tolerance = 0.5 * period_s if miss_tolerance_s is None else miss_tolerance_s
        self.miss_tolerance_ns = int(round(tolerance * NS_PER_S))
        self._tick = tick
        self._clock = clock
        self._sleep_until = sleep_until or self._default_sleep_until
        self.stats = LoopStats(self.period_ns)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._thread_main, name=name, daemon=True)

    def _default_sleep_until(self, deadline_ns: int, stop: threading.Event) -> None:
        delay = deadline_ns - self._clock()
        if delay > 0:
            stop.wait(delay / NS_PER_S)

    def start(self) -> None:
        """Start the loop thread; the first tick is one period from now."""
        self._thread.start()

    def _thread_main(self) -> None:
        if self.priority:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(self.priority))  # this thread only
                self.scheduling = f"SCHED_FIFO {self.priority}"
            except (OSError, AttributeError) as err:  # no permission, or a platform without it
                self.scheduling = f"normal (SCHED_FIFO {self.priority} refused: {err})"
        self.started.set()
        self.run()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to end and wait up to ``timeout`` s for the thread."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """The loop thread is alive (False after stop() or a tick error)."""
        return self._thread.is_alive()

    def run(self, max_ticks: int | None = None) -> None:
        """The loop body (the thread's target; tests may call it directly with ``max_ticks``)."""
        index, deadline = 0, self._clock() + self.period_ns
        while not self._stop.is_set() and (max_ticks is None or index < max_ticks):
            self._sleep_until(deadline, self._stop)
            if self._stop.is_set():
                return
            start = self._clock()
            late = start - deadline
            if late > self.period_ns:
                skipped = late // self.period_ns
                self.stats.add_misses(skipped)
                deadline += skipped * self.period_ns
                late -= skipped * self.period_ns
            if late > self.miss_tolerance_ns:
                self.stats.add_misses(1)
            info = TickInfo(index=index, deadline_ns=deadline, start_ns=start)
            try:
                self._tick(info)
            except BaseException as err:  # noqa: B036 - kept for the owner, the thread must end cleanly
                self.error = err
                return
            self.stats.record(info, self._clock())
            index += 1
            deadline += self.period_ns
