#!/usr/bin/env bash
# Packaging check (issue 10): a non-editable `pip install .` of iagcn into an environment that already holds
# Hugging Face's `evaluate` leaves that package intact, and so does `pip uninstall iagcn` afterwards.
#
# Before the namespace (commit 43647dd) the stage folders installed as top-level packages: `pip install .`
# overwrote evaluate/__init__.py and `pip uninstall iagcn` then deleted the whole `evaluate` package.
#
#   bench/check_namespace_install.sh            # scratch venv under /tmp, removed at the end
#   KEEP=1 bench/check_namespace_install.sh     # keep it (path printed)
#   REV=e14c57e bench/check_namespace_install.sh  # check a commit instead of the working tree (e14c57e, before
#                                                 # the namespace, fails: the negative control)
#
# `evaluate` is installed with --no-deps (its dependencies, datasets/pyarrow, are heavy and irrelevant here):
# what is checked is its files, byte for byte (sha256 of every file its RECORD lists), not its import.
# iagcn is installed with --no-deps too (torch etc. are irrelevant to where its files land), from a wheel built
# with the venv's own setuptools (--no-build-isolation). Exit 0 when every check holds, 1 otherwise.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
SCRATCH=$(mktemp -d /tmp/iagcn-namespace-XXXXXX)
[[ -n "${KEEP:-}" ]] || trap 'rm -rf "$SCRATCH"' EXIT
echo "== scratch venv: $SCRATCH/venv ($($PYTHON --version))"
$PYTHON -m venv "$SCRATCH/venv"
V="$SCRATCH/venv/bin/python"
cd "$SCRATCH"  # nothing of the repository on sys.path (and -I below: no cwd, no PYTHON* variables)
$V -m pip install -q setuptools wheel >/dev/null

echo "== 1. Hugging Face's evaluate (--no-deps)"
$V -m pip install -q --no-deps evaluate
$V -m pip show evaluate | sed -n '1,2p'

fingerprint() {  # sha256 of every file of the `evaluate` distribution, and where its package lives
  "$V" -I - <<'EOF'
import hashlib, importlib.metadata as md, pathlib, sys
dist = md.distribution("evaluate")
files = sorted(str(f) for f in dist.files if str(f).startswith("evaluate/"))
base = pathlib.Path(dist.locate_file(""))
missing = [f for f in files if not (base / f).is_file()]
h = hashlib.sha256()
for f in files:
    if f not in missing:
        h.update(f.encode() + b"\0" + (base / f).read_bytes())
init = base / "evaluate" / "__init__.py"
print(f"files={len(files)} missing={len(missing)} sha256={h.hexdigest()[:16]} "
      f"__init__.py={hashlib.sha256(init.read_bytes()).hexdigest()[:16] if init.is_file() else 'GONE'} "
      f"version={dist.version}")
EOF
}
before=$(fingerprint)
echo "   evaluate before:          $before"

echo "== 2. pip install --no-deps --no-build-isolation . (non-editable; a copy of the working tree, so the build leaves no files in it)"
mkdir "$SCRATCH/src"
if [[ -n "${REV:-}" ]]; then
  git -C "$REPO" archive "$REV" | tar -xf - -C "$SCRATCH/src"
else
  (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 tar --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$SCRATCH/src"
fi
$V -m pip install -q --no-deps --no-build-isolation "$SCRATCH/src" 2>&1 | grep -v "^\s*$" | grep -iv "warning\|!!\|\*\*\*\|setuptools\|please\|see https\|by 20\|with strategy\|^ *$" || true
top_level=$("$V" -I - <<'EOF'
import importlib.metadata as md
files = [str(f) for f in md.distribution("iagcn").files]
tops = sorted({f.split("/")[0] for f in files if not f.startswith("..")})
print(" ".join(tops))
EOF
)
echo "   iagcn installs (top level): $top_level"
where=$("$V" -I -c "import importlib.util as u; s = u.find_spec('iagcn.evaluate') if u.find_spec('iagcn') else None; print(s.origin if s else None)")
echo "   iagcn.evaluate is          $where"
after_install=$(fingerprint)
echo "   evaluate after install:   $after_install"

echo "== 3. pip uninstall -y iagcn"
$V -m pip uninstall -q -y iagcn
after_uninstall=$(fingerprint)
echo "   evaluate after uninstall: $after_uninstall"

status=0
for t in $top_level; do
  case "$t" in iagcn|iagcn-*.dist-info) ;; *) echo "FAIL: iagcn installed a top-level entry '$t'"; status=1 ;; esac
done
[[ "$where" == "$SCRATCH"/venv/*/site-packages/iagcn/evaluate/__init__.py ]] || { echo "FAIL: iagcn.evaluate not from the installed wheel"; status=1; }
[[ "$before" == "$after_install" ]] || { echo "FAIL: installing iagcn changed the evaluate package"; status=1; }
[[ "$before" == "$after_uninstall" ]] || { echo "FAIL: uninstalling iagcn changed the evaluate package"; status=1; }
[[ "$before" != *GONE* && "$before" == *"missing=0"* ]] || { echo "FAIL: evaluate was not installed completely"; status=1; }
[[ $status == 0 ]] && echo "OK: evaluate intact before, after install and after uninstall; iagcn installs only iagcn/"
exit $status
