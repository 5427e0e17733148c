"""Mutation score of the fast tests: plant realistic bugs one at a time in a temporary copy of the tree.

Each mutant (bench/mutation/mutants.py: signs, dropped terms, transposes, off-by-one time indices, axis
mix-ups, and the bugs of issue 14) replaces one exact snippet of one target file in a throw-away copy of
the repository (the last commit by default, ``--worktree`` for the working tree as it is; the working
tree itself is never touched, others may be editing it), then runs the fast tests mapped to that file
with ``pytest -x``, quickest tests first. A mutant is *killed* when a test fails (or errors, or the run
times out), *survives* when the tests pass. Score = killed / non-equivalent mutants; mutants marked
``equivalent`` in the catalogue carry the reason (they change no observable behaviour) and count only
if a test kills them anyway (then the mark is wrong and the report says so).

    python bench/mutation/run.py                  # the whole catalogue (10-15 min on 2 shared cores)
    python bench/mutation/run.py --files mbpl_core/local/dynamics.py --files mbpl_core/local/gmm.py
    python bench/mutation/run.py --only dyn-niw-discrepancy --only mdgps-sstep-diagonal
    python bench/mutation/run.py --auto mbpl_core/models/ensemble.py --auto-tests tests/core/test_ensemble.py
    python bench/mutation/run.py --list

``--auto FILE`` adds operator mutants generated from the file's tokens (+/−, comparisons, min/max,
transposes, axis numbers, [t]/[t + 1]) for modules that have no hand-written entries yet; ``--max-auto``
samples that many (seeded). A benchmark, not a test: run it by hand or with ``make mutation`` (it has a
folder of its own so that ``make bench`` does not run it); writes bench/results/mutation.json
(git-ignored).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tokenize
import xml.etree.ElementTree as ET  # noqa: N817
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from mutants import MUTANTS, TESTS, Mutant  # noqa: E402

COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "runs", "results", "build", "install", "log",
                                     "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache",
                                     "*.egg-info")
PYTEST = ["-x", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "--no-header", "-o", "addopts="]


@dataclass
class Outcome:
    id: str
    file: str
    kind: str
    note: str
    status: str  # killed | survived | stale | equivalent (survived, marked equivalent) | wrongly-equivalent
    detail: str
    seconds: float
    tests: list[str]


def make_copy(dest: Path, worktree: bool) -> dict[str, str]:
    """Put the committed tree (HEAD, or with ``worktree`` the working tree as it is, uncommitted edits of
    everyone included) at dest; return the environment whose imports resolve to the copy, not the tree."""
    if worktree:
        shutil.copytree(ROOT, dest, ignore=COPY_IGNORE, symlinks=True)
    else:
        dest.mkdir(parents=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "HEAD"], check=True,
                                 capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    pkgs = dest / "_mutation_pkgs"
    pkgs.mkdir()
    (pkgs / "mbpl_sim").symlink_to(dest / "sim")
    env = dict(os.environ)
    paths = [str(dest), str(dest / "ros2_ws" / "src" / "mbpl_ros"), str(pkgs)]
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MUJOCO_GL", "osmesa")
    env.setdefault("ROS_LOG_DIR", str(dest / "runs" / "log"))
    return env


def check_imports_from_copy(dest: Path, env: dict[str, str]) -> None:
    code = ("import mbpl_core, mbpl_ros, mbpl_sim; "
            "print(mbpl_core.__file__); print(mbpl_ros.__file__); print(mbpl_sim.__file__)")
    out = subprocess.run([sys.executable, "-c", code], cwd=dest, env=env, capture_output=True, text=True)
    files = out.stdout.split()
    if out.returncode != 0 or len(files) != 3 or not all(Path(f).resolve().is_relative_to(dest.resolve())
                                                         for f in files):
        raise SystemExit(f"imports do not resolve to the copy {dest}: {out.stdout}{out.stderr}")


def run_tests(dest: Path, env: dict[str, str], tests: list[str], timeout: float,
              junit: Path | None = None) -> tuple[int, str, float]:
    """pytest -x over ``tests`` in the copy: (return code, first failures or last line, seconds).

    Return code -1: timed out. ``junit``: also write a junit xml report there (for the test order)."""
    extra = ["--junitxml", str(junit), "-o", "junit_family=xunit1"] if junit is not None else []
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", *PYTEST, *extra, *tests], cwd=dest, env=env,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {timeout:.0f} s", time.perf_counter() - start
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(("FAILED", "ERROR"))]
    tail = proc.stdout.strip().splitlines()[-1:] if proc.stdout.strip() else [proc.stderr[-300:]]
    return proc.returncode, "; ".join(lines[:2] or tail), time.perf_counter() - start


def fastest_first(junit: Path) -> list[str]:
    """Test node ids of a baseline run (junit xml, xunit1: with file names), quickest first.

    With ``-x`` a mutant dies at its first failing test; the oracles are quick and the learning tests slow,
    so running the quick ones first makes a killed mutant cost seconds instead of the whole file. A
    module-scoped fixture is charged to the first test that uses it, so a later user looks free and can
    come first, paying for the fixture; the test ids ("file::test") a catalogue entry lists before its
    file run first, in that order (pytest collects a file's tests in file order, so the runner passes
    every id itself).
    """
    timed = []
    for case in ET.parse(junit).getroot().iter("testcase"):
        file, classname, name = case.get("file", ""), case.get("classname", ""), case.get("name", "")
        module = file[:-3].replace("/", ".")
        inner = classname[len(module) + 1:].replace(".", "::") if classname != module else ""
        timed.append((float(case.get("time", 0.0)), "::".join(filter(None, [file, inner, name]))))
    return [node for _, node in sorted(timed)]


def apply(text: str, mutant: Mutant) -> str | None:
    """The mutated text, or None when the snippet is not there exactly once (the code moved on)."""
    if text.count(mutant.find) != 1:
        return None
    return text.replace(mutant.find, mutant.replace, 1)


# ----------------------------------------------------------------------------- generated mutants
_SWAPS = {"+": "-", "-": "+", "<": "<=", "<=": "<", ">": ">=", ">=": ">", "==": "!=", "!=": "==",
          "min": "max", "max": "min", "*": "/", "/": "*"}


def auto_mutants(path: str, tests: list[str], limit: int, seed: int) -> list[Mutant]:
    """Token-level operator mutants of ``path`` (code only: strings and comments are separate tokens).

    Each replaces one token at its exact position; the snippet is the whole line, so it is unique as long
    as the line is. Also: ``.T`` dropped, ``axis=a`` → ``axis=a±1``, ``[t]`` → ``[t + 1]``.
    """
    source = (ROOT / path).read_text()
    lines = source.splitlines(keepends=True)
    found: list[Mutant] = []
    tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    for i, tok in enumerate(tokens):
        row, col = tok.start
        if row > len(lines):
            break
        line = lines[row - 1]
        new: list[tuple[str, str]] = []
        if tok.type == tokenize.OP and tok.string in _SWAPS and tok.string not in ("*", "/"):
            new.append((tok.string, _SWAPS[tok.string]))
        elif tok.type == tokenize.NAME and tok.string in ("min", "max") and i + 1 < len(tokens) \
                and tokens[i + 1].string == "(":
            new.append((tok.string, _SWAPS[tok.string]))
        elif tok.type == tokenize.NAME and tok.string == "T" and i > 0 and tokens[i - 1].string == "." \
                and not (i + 1 < len(tokens) and tokens[i + 1].string == "("):
            new.append((".T", ""))
            col -= 1
        elif tok.type == tokenize.NAME and tok.string == "axis" and i + 2 < len(tokens) \
                and tokens[i + 1].string == "=" and tokens[i + 2].type == tokenize.NUMBER:
            num = tokens[i + 2].string
            if num.isdigit():
                new.append((f"axis={num}", f"axis={int(num) + 1}"))
        elif tok.type == tokenize.NAME and tok.string == "t" and i > 0 and i + 1 < len(tokens) \
                and tokens[i - 1].string == "[" and tokens[i + 1].string == "]":
            new.append(("t", "t + 1"))
        for old, rep in new:
            if line[col:col + len(old)] != old or source.count(line) != 1:
                continue
            mutated = line[:col] + rep + line[col + len(old):]
            found.append(Mutant(f"auto:{path}:{row}:{col}:{old.strip() or 'T'}->{rep.strip() or 'drop'}",
                                path, line, mutated, "auto", f"line {row}: {old!r} -> {rep!r}", tests=tests))
    random.Random(seed).shuffle(found)
    return sorted(found[:limit], key=lambda m: m.id) if limit else found


# ----------------------------------------------------------------------------- main
def select(args: argparse.Namespace) -> list[Mutant]:
    everything = not (args.files or args.only)  # otherwise the union of --files and --only
    chosen = [] if args.no_catalogue else [m for m in MUTANTS if everything or m.file in args.files
                                            or m.id in args.only]
    for path in args.auto:
        tests = args.auto_tests or TESTS.get(path, [])
        if not tests:
            raise SystemExit(f"--auto {path}: give --auto-tests (no tests are mapped to it in mutants.py)")
        chosen += auto_mutants(path, tests, args.max_auto, args.seed)
    return chosen


def summarise(outcomes: list[Outcome]) -> dict[str, object]:
    counted = [o for o in outcomes if o.status in ("killed", "survived", "wrongly-equivalent")]
    killed = [o for o in counted if o.status in ("killed", "wrongly-equivalent")]
    score = len(killed) / len(counted) if counted else float("nan")
    by_file: dict[str, dict[str, int]] = {}
    for o in counted:
        entry = by_file.setdefault(o.file, {"killed": 0, "non_equivalent": 0})
        entry["non_equivalent"] += 1
        entry["killed"] += o.status != "survived"
    core = [o for o in counted if o.file.startswith("mbpl_core/")]
    core_killed = sum(o.status != "survived" for o in core)
    return {"score": score, "killed": len(killed), "non_equivalent": len(counted),
            "core_score": core_killed / len(core) if core else float("nan"), "core_killed": core_killed,
            "core_non_equivalent": len(core),
            "equivalent": sum(o.status == "equivalent" for o in outcomes),
            "stale": sum(o.status == "stale" for o in outcomes),
            "killed_by_timeout": sum(o.status == "killed" and o.detail.startswith("timed out")
                                     for o in outcomes),
            "by_file": by_file}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", action="append", default=[], help="only mutants of these target files")
    parser.add_argument("--only", action="append", default=[], help="only these mutant ids")
    parser.add_argument("--auto", action="append", default=[], help="add generated mutants of this file")
    parser.add_argument("--no-catalogue", action="store_true", help="only the --auto mutants")
    parser.add_argument("--auto-tests", action="append", default=[], help="tests for --auto files")
    parser.add_argument("--max-auto", type=int, default=40, help="generated mutants per file (0: all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--all-core-tests", action="store_true", help="run all of tests/core per mutant")
    parser.add_argument("--worktree", action="store_true",
                        help="mutate a copy of the working tree (default: of the last commit, HEAD)")
    parser.add_argument("--list", action="store_true", help="list the selected mutants and exit")
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "mutation.json"))
    args = parser.parse_args()
    # A SIGTERM (kill PID) unwinds normally, so the temporary copy is removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    mutants = select(args)
    if args.list:
        for m in mutants:
            print(f"{m.id:40s} {m.file:50s} {m.kind:12s} {m.note}")
        return 0
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="mbpl-mutation-") as tmp:
        dest = Path(tmp) / "tree"
        env = make_copy(dest, args.worktree)
        check_imports_from_copy(dest, env)
        baseline: dict[tuple[str, ...], tuple[float, list[str]]] = {}
        started = time.perf_counter()
        for m in mutants:
            tests = ["tests/core"] if args.all_core_tests and m.file.startswith("mbpl_core") else m.tests
            key = tuple(tests)
            if key not in baseline:
                junit = Path(tmp) / "baseline.xml"
                rc, detail, seconds = run_tests(dest, env, tests, timeout=900, junit=junit)
                if rc != 0:
                    raise SystemExit(f"baseline tests fail on the unmutated copy ({' '.join(tests)}): "
                                     f"{detail}")
                baseline[key] = (seconds, fastest_first(junit))
                count = len(baseline[key][1])
                print(f"baseline {seconds:6.1f}s  {' '.join(tests)} ({count} tests)", flush=True)
            target = dest / m.file
            original = target.read_text()
            mutated = apply(original, m)
            if mutated is None:
                outcomes.append(Outcome(m.id, m.file, m.kind, m.note, "stale",
                                        "snippet not found exactly once", 0.0, tests))
                continue
            target.write_text(mutated)
            try:
                budget, ordered = baseline[key]
                first = [t for t in tests if "::" in t]  # an order the catalogue gives (see fastest_first)
                ordered = first + [node for node in ordered if node not in first]
                rc, detail, seconds = run_tests(dest, env, ordered, timeout=max(60.0, 3 * budget))
            finally:
                target.write_text(original)
            if rc == 0:
                status = "equivalent" if m.equivalent else "survived"
                detail = m.equivalent or "all selected tests pass"
            else:
                status = "wrongly-equivalent" if m.equivalent else "killed"
            outcomes.append(Outcome(m.id, m.file, m.kind, m.note, status, detail, round(seconds, 2), tests))
            print(f"{status:18s} {seconds:6.1f}s  {m.id:36s} {detail[:90]}", flush=True)
    summary = summarise(outcomes)
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    summary["command"] = " ".join([Path(sys.executable).name, *sys.argv])
    print(f"\nmutation score {summary['killed']}/{summary['non_equivalent']} = {summary['score']:.1%} of "
          f"non-equivalent mutants killed ({summary['equivalent']} equivalent, {summary['stale']} stale) "
          f"in {summary['wall_s']} s; mbpl_core: {summary['core_killed']}/{summary['core_non_equivalent']} = "
          f"{summary['core_score']:.1%}")
    if summary["killed_by_timeout"]:
        print(f"  {summary['killed_by_timeout']} killed only by the timeout: on a loaded machine that may be "
              "the load, not the mutant (rerun them with --only)")
    for o in outcomes:
        if o.status in ("survived", "equivalent", "stale", "wrongly-equivalent"):
            print(f"  {o.status:18s} {o.id:36s} {o.file}: {o.note} -- {o.detail}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"summary": summary, "mutants": [asdict(o) for o in outcomes]},
                                          indent=1))
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
