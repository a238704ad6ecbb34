#!/usr/bin/env bash
# The mutation score of the metrics (caslab/results/metrics/), the cost meter (caslab/run/cost.py) and
# the capture cross-check (compare, one_sided and cross_check in caslab/results/capture.py): mutmut changes
# the code one small mutation at a time, in a copy under mutants/, and runs the pure tests
# named in pyproject.toml ([tool.mutmut]) against each mutant. A mutant the tests do not
# notice "survived". docs/MUTATION.md has the last score and every survivor with a reason.
#
#   tools/mutation.sh               every mutant, from scratch (22-29 min measured on 2 busy cores)
#   tools/mutation.sh --survivors   again only the mutants that did not die last time
#   tools/mutation.sh --score       the last run's score and survivors; runs nothing
#
# Needs the venv of ./lab.sh setup (mutmut is in the test extra), no root, no network.
# MUTATION_JOBS sets the number of parallel mutants (default: the number of cores).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${CASLAB_VENV:-$HERE/.venv}"
if [ ! -x "$VENV/bin/mutmut" ]; then
  echo "tools/mutation.sh: no mutmut in $VENV: run ./lab.sh setup first (or set CASLAB_VENV)" >&2
  exit 2
fi
cd "$HERE"
SCOPE=("caslab.results.metrics.*" "caslab.run.cost.*" "caslab.results.capture.x_compare__mutmut_*"
       "caslab.results.capture.x_cross_check__mutmut_*" "caslab.results.capture.x_one_sided__mutmut_*")

case "${1:-all}" in
  all)
    rm -rf mutants
    targets=("${SCOPE[@]}")
    ;;
  --survivors)
    read -r -a targets <<<"$("$VENV/bin/python" tools/mutation_score.py --globs)"
    if [ ${#targets[@]} -eq 0 ]; then
      echo "tools/mutation.sh: no survivors to run again" >&2
      exec "$VENV/bin/python" tools/mutation_score.py --survivors
    fi
    ;;
  --score)
    exec "$VENV/bin/python" tools/mutation_score.py --survivors
    ;;
  *)
    echo "usage: tools/mutation.sh [--survivors | --score]" >&2
    exit 2
    ;;
esac

mkdir -p mutants
started=$(date +%s)
echo "mutmut: ${#targets[@]} mutant pattern(s); progress in mutants/run.log" >&2
if ! "$VENV/bin/mutmut" run --max-children "${MUTATION_JOBS:-$(nproc)}" "${targets[@]}" > mutants/run.log 2>&1; then
  tail -c 3000 mutants/run.log >&2
  echo "tools/mutation.sh: mutmut failed (mutants/run.log)" >&2
  exit 1
fi
echo "mutmut took $(( $(date +%s) - started )) s" >&2
exec "$VENV/bin/python" tools/mutation_score.py --survivors
