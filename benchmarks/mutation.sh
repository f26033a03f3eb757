#!/usr/bin/env bash
# Mutation testing: how many deliberate bugs (mutmut's mutants) in a module its own tests catch.
#   bash benchmarks/mutation.sh schedule|checkpoint|encoder|vq   (one group; ~1-20 min on 2 cores)
# Each group runs in a scratch copy of the work tree (/tmp/luna-mutation/<group>) whose [tool.mutmut] names
# only that group's module(s) and test file(s). mutmut goes into a scratch folder, never into .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  schedule)   mods='"luna/training/schedule.py"';   tests='"tests/training/test_schedule.py"' ;;
  checkpoint) mods='"luna/training/checkpoint.py"'; tests='"tests/training/test_checkpoint.py"' ;;
  encoder)    mods='"luna/streaming/encoder.py"';   tests='"tests/streaming/test_encoder.py"' ;;
  vq)         mods='"luna/models/codebook.py", "luna/models/quantizer.py"'; tests='"tests/models/test_quantizer.py"' ;;
  *) echo "usage: $0 schedule|checkpoint|encoder|vq" >&2; exit 2 ;;
esac
PY=${PY:-$PWD/.venv/bin/python}
pkgs=${MUTMUT_PKGS:-/tmp/luna-mutmut-pkgs}
UV=${UV:-$([ -x .uv/bin/uv ] && echo .uv/bin/uv || echo uv)}
[ -d "$pkgs/mutmut" ] || { "$UV" pip install --python "$PY" --target "$pkgs" mutmut==3.8.1 \
  && rm -rf "$pkgs"/{pytest,_pytest,pluggy,iniconfig,packaging,py.py}; }  # keep the venv's pytest
work=/tmp/luna-mutation/$1
rm -rf "$work" && mkdir -p "$work"
git ls-files -co --exclude-standard -z | xargs -0 cp -d --parents -t "$work"
cd "$work"
"$PY" - "$mods" "$tests" <<'PYEOF'
import re, sys
text = open("pyproject.toml").read()
text = re.sub(r"only_mutate = \[.*?\]", f"only_mutate = [{sys.argv[1]}]", text, flags=re.S)
text = re.sub(r"pytest_add_cli_args_test_selection = \[.*?\]", f"pytest_add_cli_args_test_selection = [{sys.argv[2]}]",
              text, flags=re.S)
open("pyproject.toml", "w").write(text)
PYEOF
export OMP_NUM_THREADS=1 PYTHONPATH="$pkgs"
"$PY" -m mutmut run --max-children "${JOBS:-2}" >mutmut.log 2>&1 || { tail -30 mutmut.log; exit 1; }
"$PY" -m mutmut results --all true >results.txt 2>&1 || true
# a mutant that makes the tests hang (stopped at its CPU-time limit: 'timeout') is caught too
killed=$(grep -cE ': (killed|timeout)' results.txt || true); total=$(grep -c ': ' results.txt || true)
echo "$1: $killed of $total mutants killed (timeouts included); survivors: $work/results.txt ('mutmut show NAME' there)"
grep -vE ': (killed|timeout)' results.txt || true
