#!/usr/bin/env bash
# Download the wheels in bench/gpu/wheels.txt into .whl/ (git-ignored), for a machine with
# no network: manylinux x86_64 (glibc >= 2.28), CPython $PYVER (default 3.12), --no-deps (wheels.txt lists
# every dependency itself), binary wheels only. Exactly one file per line of wheels.txt;
# any package without such a wheel fails loudly, naming it. Prints the total size, which
# must stay well under the 64 MiB a lent GPU machine's `carry` allows.
#
#   bash bench/gpu/fetch_wheels.sh            # for Python 3.12
#   PYVER=3.11 bash bench/gpu/fetch_wheels.sh # where the GPU image has another Python
set -euo pipefail
cd "$(dirname "$0")/../.."
PYVER="${PYVER:-3.12}"
PIP="${PIP:-python3 -m pip}"
DEST="${DEST:-.whl}"
LIMIT_MIB="${LIMIT_MIB:-48}"
mkdir -p "$DEST"
rm -f "$DEST"/*.whl "$DEST"/*.whl.xz
echo "python $PYVER, manylinux2014_x86_64 -> $DEST/"
failed=()
n=0
while read -r spec _import _when how; do
  [[ -z "$spec" || "$spec" == \#* ]] && continue
  if [[ "${how:-}" == optional && "${WITH_OPTIONAL:-0}" != 1 ]]; then
    echo "skipped (optional, WITH_OPTIONAL=1 fetches it): $spec"
    continue
  fi
  n=$((n + 1))
  if [[ "${how:-}" == sdist ]]; then
    # pure Python with no wheel on the index: build one from its source archive
    rm -rf "$DEST/.sdist" && mkdir -p "$DEST/.sdist"
    if $PIP download -q --no-deps --no-binary=:all: --dest "$DEST/.sdist" "$spec" 2>"$DEST/.err" &&
       $PIP wheel -q --no-deps --no-build-isolation -w "$DEST/.sdist" "$DEST/.sdist"/*.tar.gz 2>>"$DEST/.err" &&
       ls "$DEST/.sdist"/*-py3-none-any.whl >/dev/null 2>&1; then
      mv "$DEST/.sdist"/*.whl "$DEST/" && rm -rf "$DEST/.sdist"
      continue
    fi
    echo "FAILED: could not build a py3-none-any wheel of $spec from its sdist:" >&2
    tail -3 "$DEST/.err" >&2
    failed+=("$spec")
    continue
  fi
  # manylinux2014 (glibc 2.17) or manylinux_2_28 (glibc 2.28: onnx, ml_dtypes publish no older)
  if ! $PIP download -q --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
        --platform manylinux_2_28_x86_64 --python-version "$PYVER" --implementation cp \
        --dest "$DEST" "$spec" 2>"$DEST/.err"; then
    echo "FAILED: no manylinux x86_64 / CPython $PYVER wheel for $spec:" >&2
    tail -3 "$DEST/.err" >&2
    failed+=("$spec")
  fi
done < bench/gpu/wheels.txt
rm -f "$DEST/.err"
if ((${#failed[@]})); then
  echo "fetch_wheels: ${#failed[@]} package(s) missing: ${failed[*]}" >&2
  exit 1
fi
# A wheel over $XZ_MIB MiB (opencv: 50 MB as a wheel) is repacked as NAME.whl.xz: the same
# files in a stored (uncompressed) zip, xz-compressed (opencv: 31 MB). check.sh unpacks it
# with Python's lzma back into a valid wheel. Takes a few minutes of one core.
XZ_MIB="${XZ_MIB:-16}"
for w in "$DEST"/*.whl; do
  if (( $(stat -c %s "$w") > XZ_MIB * 1048576 )); then
    echo "repacking $w as $w.xz (a few minutes)"
    python3 - "$w" <<'PY'
import lzma, shutil, sys, zipfile
src = sys.argv[1]
tmp = src + ".stored"
with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
    for info in zin.infolist():
        zout.writestr(info, zin.read(info), compress_type=zipfile.ZIP_STORED)
with open(tmp, "rb") as f, lzma.open(src + ".xz", "wb", preset=6) as g:
    shutil.copyfileobj(f, g, 1 << 20)
import os; os.remove(tmp); os.remove(src)
PY
  fi
done
got=$(find "$DEST" -maxdepth 1 \( -name '*.whl' -o -name '*.whl.xz' \) | wc -l)
if [[ "$got" -ne "$n" ]]; then
  echo "fetch_wheels: $n packages listed but $got wheels in $DEST (one version of each expected)" >&2
  ls "$DEST" >&2
  exit 1
fi
bytes=$(cat "$DEST"/* | wc -c)
mib=$(( (bytes + 1048575) / 1048576 ))
ls -la "$DEST"/ | awk 'NR > 3 {printf "%10d  %s\n", $5, $9}'
echo "fetch_wheels: $got wheels, $bytes bytes ($mib MiB) in $DEST"
if (( mib > LIMIT_MIB )); then
  echo "fetch_wheels: $mib MiB exceeds $LIMIT_MIB MiB: too big to carry to a lent GPU machine (64 MiB in all)" >&2
  exit 1
fi
