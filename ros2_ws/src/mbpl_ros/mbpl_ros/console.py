"""What ``mbpl launch`` shows of the graph: one progress line per iteration, warnings, errors, the summary.

Every node line still goes to ``<run_dir>/logs/<node>.log``; :class:`Console` decides which ones reach the
terminal. A node line in the ROS console format (``[SEVERITY] [time] [logger]: message``, the rcutils
default the launcher sets for its nodes) is shown when

* its severity is WARN, ERROR or FATAL (as ``[node] WARN: message``, without the raw timestamp);
* it is a progress record (message ``progress: {json}``, :func:`progress_message`, logged by the trainer
  once per iteration): shown as one compact line, ``iteration i/N: cost, distances, time, time left``;
* it is a summary (message ``summary: ...``, the trainer's end-of-run lines).

Other DEBUG/INFO lines go to the log files only, unless ``verbose``. A line that is not in that format
(a traceback, a Python warning, a plain print) is shown as it came: a node says such things when it
fails. Where the output is a terminal a live status line under the others shows a progress bar, the time
elapsed and the estimated time left.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import IO, Any

PROGRESS_PREFIX = "progress: "
SUMMARY_PREFIX = "summary: "
ROS_LOG_FORMAT = "[{severity}] [{time}] [{name}]: {message}"  # rcutils' default console format
SHOWN_SEVERITIES = ("WARN", "ERROR", "FATAL")
_ROS_LINE = re.compile(r"^\[(DEBUG|INFO|WARN|ERROR|FATAL)\] \[[0-9.]+\] \[[^\]]*\]: (.*)$")
BAR_WIDTH = 24


@dataclass(frozen=True)
class Progress:
    """One finished iteration, as the trainer reports it.

    iteration: its index (from 0); iterations: how many the run has; cost: mean sample cost over the
    conditions; distances: (M,) final end-effector distance per condition in m; seconds: the iteration's
    wall time; policy_distances: (M,) the policy's final tip distances (GPS), or None.
    """

    iteration: int
    iterations: int
    cost: float
    distances: tuple[float, ...]
    seconds: float
    policy_distances: tuple[float, ...] | None = None


def progress_message(iteration: int, iterations: int, cost: float, distances: Sequence[float],
                     seconds: float, policy_distances: Sequence[float] | None = None) -> str:
    """The trainer's per-iteration log message: :data:`PROGRESS_PREFIX` and a JSON object."""
    record: dict[str, Any] = {"iteration": int(iteration), "iterations": int(iterations),
                              "cost": float(cost), "distances": [float(d) for d in distances],
                              "seconds": float(seconds)}
    if policy_distances is not None:
        record["policy_distances"] = [float(d) for d in policy_distances]
    return PROGRESS_PREFIX + json.dumps(record, separators=(",", ":"))


def parse_progress(message: str) -> Progress | None:
    """The :class:`Progress` of a log message written by :func:`progress_message`; None for any other."""
    if not message.startswith(PROGRESS_PREFIX):
        return None
    try:
        data = json.loads(message[len(PROGRESS_PREFIX):])
        policy = data.get("policy_distances")
        return Progress(int(data["iteration"]), int(data["iterations"]), float(data["cost"]),
                        tuple(float(d) for d in data["distances"]), float(data["seconds"]),
                        None if policy is None else tuple(float(d) for d in policy))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def parse_ros_line(text: str) -> tuple[str, str] | None:
    """(severity, message) of a line in the ROS console format; None for any other line."""
    match = _ROS_LINE.match(text)
    return None if match is None else (match.group(1), match.group(2))


def format_duration(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 07 min``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _distances_text(distances: Sequence[float], success_distance: float | None) -> str:
    """``(cm) [1.00 3.00], 1/2 within 2 cm``: each condition's distance (the worst beyond 6 conditions)."""
    cm = [100.0 * d for d in distances]
    if not cm:
        return "(cm) none"
    text = "(cm) [" + " ".join(f"{d:.2f}" for d in cm) + "]" if len(cm) <= 6 else f"(cm) worst {max(cm):.2f}"
    if success_distance is not None:
        within = sum(d <= success_distance for d in distances)
        text += f", {within}/{len(cm)} within {100.0 * success_distance:g} cm"
    return text


def format_progress(p: Progress, seconds_left: float | None, success_distance: float | None) -> str:
    """The console line of one iteration: ``iteration i/N: cost; distance; time, time left``."""
    line = (f"iteration {p.iteration + 1}/{p.iterations}: cost {p.cost:.4g}; distance "
            f"{_distances_text(p.distances, success_distance)}")
    if p.policy_distances:
        line += f"; policy distance {_distances_text(p.policy_distances, success_distance)}"
    line += f"; {p.seconds:.1f} s"
    if seconds_left is not None and p.iteration + 1 < p.iterations:
        line += f", ~{format_duration(seconds_left)} left"
    return line


class Console:
    """The launcher's output stream (module docstring): every write goes through it, from any thread.

    verbose: show every node line as it came (progress records still as their compact line).
    success_distance: m; progress lines count the conditions within it (None: worst distance only).
    live: draw the status line with the progress bar (default: where ``out`` is a terminal).
    """

    def __init__(self, out: IO[str], verbose: bool = False, success_distance: float | None = None,
                 live: bool | None = None, clock: Callable[[], float] = time.monotonic,
                 tick_seconds: float = 1.0) -> None:
        self.out, self.verbose, self.success_distance = out, verbose, success_distance
        isatty = getattr(out, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self._clock, self._start = clock, clock()
        self._lock = threading.Lock()
        self._seconds: list[float] = []  # wall time of each iteration reported in this launch
        self._last: Progress | None = None
        self._last_at = self._start
        self._bar_shown = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        if self.live:
            self._ticker = threading.Thread(target=self._tick, args=(tick_seconds,), daemon=True,
                                            name="console_status")
            self._ticker.start()

    # -- what is shown -----------------------------------------------------------------------------
    def launcher(self, text: str) -> None:
        """A line of the launcher itself: always shown."""
        self._write(f"[launch] {text}")

    def node_line(self, name: str, text: str) -> None:
        """One output line of node ``name``: shown, condensed or left to its log file (module docstring)."""
        text = text.rstrip("\r\n")
        parsed = parse_ros_line(text)
        if parsed is None:
            self._write(f"[{name}] {text}")
            return
        severity, message = parsed
        progress = parse_progress(message)
        if progress is not None:
            self._progress(name, progress)
        elif self.verbose:
            self._write(f"[{name}] {text}")
        elif severity in SHOWN_SEVERITIES:
            self._write(f"[{name}] {severity}: {message}")
        elif message.startswith(SUMMARY_PREFIX):
            self._write(f"[{name}] {message[len(SUMMARY_PREFIX):]}")

    def close(self) -> None:
        """Stop the status line and erase it (the lines above stay)."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join(timeout=5.0)
        with self._lock:
            self._erase_bar()
            self.out.flush()

    # -- progress ----------------------------------------------------------------------------------
    def seconds_left(self, p: Progress) -> float:
        """Mean wall time of the iterations seen so far times the iterations still to run."""
        remaining = max(0, p.iterations - p.iteration - 1)
        return remaining * (sum(self._seconds) / len(self._seconds)) if self._seconds else 0.0

    def _progress(self, name: str, p: Progress) -> None:
        with self._lock:
            self._seconds.append(p.seconds)
            self._last, self._last_at = p, self._clock()
            left = self.seconds_left(p)
        self._write(f"[{name}] {format_progress(p, left, self.success_distance)}")

    def status_line(self) -> str:
        """The live line: bar, iterations done, time elapsed and left (call with the lock held)."""
        now = self._clock()
        elapsed = f"{format_duration(now - self._start)} elapsed"
        p = self._last
        if p is None:
            return f"  waiting for the first iteration · {elapsed}"
        done = p.iteration + 1
        filled = int(BAR_WIDTH * done / p.iterations) if p.iterations else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"  [{bar}] {done}/{p.iterations} iterations · {elapsed}"
        if done < p.iterations:
            left = self.seconds_left(p) - (now - self._last_at)
            line += f" · ~{format_duration(max(0.0, left))} left"
        return line

    # -- the stream --------------------------------------------------------------------------------
    def _write(self, line: str) -> None:
        with self._lock:
            self._erase_bar()
            self.out.write(line + "\n")
            self._draw_bar()
            self.out.flush()

    def _erase_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False

    def _draw_bar(self) -> None:
        if self.live and not self._stop.is_set():
            self.out.write(self.status_line())
            self._bar_shown = True

    def _tick(self, period: float) -> None:
        while not self._stop.wait(period):
            with self._lock:
                self._erase_bar()
                self._draw_bar()
                self.out.flush()
