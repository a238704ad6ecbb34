"""The mutation score of the metrics, the cost meter and the capture cross-check, read from
what ``mutmut run`` left in ``mutants/`` (tools/mutation.sh runs both; docs/MUTATION.md).

mutmut mutates all of capture.py (it mutates whole files), but the score counts only the
cross-check's functions, ``compare``, ``one_sided`` and ``cross_check``: the rest of capture.py (pcap
parsing, clock offsets) needs real captures and is not what this score is about.
A mutant counts as killed when a test failed on it or it ran past its time limit (an
endless loop is caught); a mutant no pure test reaches ("no tests") counts as a survivor.

    python tools/mutation_score.py [--survivors] [--globs]
"""

from __future__ import annotations

import fnmatch
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path

# The mutants in scope, as mutmut names them (module.x_function__mutmut_N, or
# module.xǁClassǁmethod__mutmut_N).
SCOPE = ("caslab.results.metrics.*", "caslab.run.cost.*", "caslab.results.capture.x_compare__mutmut_*",
         "caslab.results.capture.x_cross_check__mutmut_*", "caslab.results.capture.x_one_sided__mutmut_*")
KILLED = {1: "killed", 3: "killed", 36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout",
          37: "killed"}
STATUS = {0: "survived", 5: "no tests", 33: "no tests", None: "not run", 34: "skipped"}


def in_scope(name: str) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in SCOPE)


def results(root: Path = Path("mutants")) -> dict[str, str]:
    """Every mutant in scope -> its status."""
    out: dict[str, str] = {}
    for meta in sorted(root.glob("caslab/**/*.py.meta")):
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        for name, code in codes.items():
            if in_scope(name):
                out[name] = KILLED.get(code) or STATUS.get(code, f"suspicious ({code})")
    return out


def module_of(name: str) -> str:
    return name.split(".x_")[0].split(".xǁ")[0]


def main(argv: list[str]) -> int:
    status = results()
    if not status:
        print("no mutation results in mutants/: run tools/mutation.sh", file=sys.stderr)
        return 2
    if "--globs" in argv:  # the survivors, as arguments for mutmut run
        print(" ".join(n for n, s in sorted(status.items()) if s not in ("killed", "timeout")))
        return 0
    by_module: dict[str, Counter] = defaultdict(Counter)
    for name, s in status.items():
        by_module[module_of(name)][s] += 1
    print(f"{'module':32} {'mutants':>8} {'killed':>8} {'timeout':>8} {'survived':>9} {'no tests':>9} {'other':>6}")
    total = Counter()
    for module, c in sorted(by_module.items()):
        n = sum(c.values())
        other = n - c["killed"] - c["timeout"] - c["survived"] - c["no tests"]
        print(f"{module:32} {n:8} {c['killed']:8} {c['timeout']:8} {c['survived']:9} {c['no tests']:9} {other:6}")
        total += c
    n = sum(total.values())
    dead = total["killed"] + total["timeout"]
    print(f"{'total':32} {n:8} {total['killed']:8} {total['timeout']:8} {total['survived']:9} {total['no tests']:9}"
          f" {n - dead - total['survived'] - total['no tests']:6}")
    print(f"mutation score: {dead}/{n} = {100 * dead / n:.1f} % killed")
    if "--survivors" in argv:
        for name, s in sorted(status.items()):
            if s not in ("killed", "timeout"):
                print(f"  {name}: {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
