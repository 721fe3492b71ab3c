"""Install the carried wheels (``.whl/``) into a target folder, no network, no venv.

Standard library only: it runs on the GPU image's own Python before anything of cxrkit's
is importable. For each line of ``bench/gpu/wheels.txt`` it decides (``WHEN``): ``always``
installs; ``if-missing`` installs only where the image cannot already import the module
(its own numpy-/protobuf-bound binaries stay). ``NAME.whl.xz`` files (see fetch_wheels.sh)
are unpacked with :mod:`lzma` first. Then one ``pip install --no-index --no-deps
--target`` (where the image has no pip, the wheels are unzipped into the folder, which is
all these pure or self-contained wheels need). A wheel built for another CPython than this
one fails loudly, saying what to do, before anything is installed; so does a missing wheel.

    python bench/gpu/install_wheels.py --target DIR [--plan-only] [--json plan.json]

Exit status: 0 installed (or planned), 2 a wheel is missing or for another Python, 3 pip
failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import lzma
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def read_list(path: Path) -> list[dict]:
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        f = line.split()
        if len(f) < 3 or "==" not in f[0] or f[2] not in ("always", "if-missing"):
            raise SystemExit(
                f"{path}:{n}: expected 'NAME==VERSION IMPORT always|if-missing "
                f"[sdist|optional]', got {line!r}"
            )
        name, version = f[0].split("==", 1)
        rows.append(
            {
                "spec": f[0],
                "name": name,
                "version": version,
                "import": f[1],
                "when": f[2],
                "optional": len(f) > 3 and f[3] == "optional",
            }
        )
    return rows


def importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def find_wheel(whl_dir: Path, name: str, version: str) -> Path | None:
    prefix = f"{_norm(name)}-{version}-"
    for p in sorted(whl_dir.glob("*.whl*")):
        if _norm(p.name.split("-", 1)[0]) + "-" + p.name.split("-", 2)[1] + "-" == prefix:
            return p
    return None


def python_tags(wheel: str) -> set[str]:
    """Interpreter tags of a wheel file name (``cp312``, ``py3``, ``cp37`` for abi3...)."""
    stem = wheel.removesuffix(".xz").removesuffix(".whl")
    py, abi = stem.split("-")[-3:-1]
    return {t for t in py.split(".")} | ({"abi3"} if abi == "abi3" else set())


def compatible(wheel: str) -> bool:
    tags = python_tags(wheel)
    here = f"cp{sys.version_info.major}{sys.version_info.minor}"
    if here in tags or "py3" in tags or any(t == "py2.py3" for t in tags):
        return True
    if "abi3" in tags:  # stable ABI: any CPython at least as new as the tag
        return any(t.startswith("cp3") and int(t[3:]) <= sys.version_info.minor for t in tags)
    return False


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", type=Path, required=True)
    ap.add_argument("--wheels", type=Path, default=REPO / ".whl")
    ap.add_argument("--list", type=Path, default=REPO / "bench" / "gpu" / "wheels.txt")
    ap.add_argument("--plan-only", action="store_true", help="decide and check, install nothing")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    plan, missing, foreign = [], [], []
    for row in read_list(args.list):
        have = importable(row["import"])
        install = row["when"] == "always" or not have
        wheel = (
            find_wheel(args.wheels, row["name"], row["version"]) if args.wheels.is_dir() else None
        )
        status = "install" if install else "image has it"
        if install and wheel is None:
            if row["optional"]:
                status = "optional, not carried" + (" (image has it)" if have else "")
                install = False
            else:
                missing.append(row["spec"])
                status = "MISSING WHEEL"
        elif install and not compatible(wheel.name):
            foreign.append(wheel.name)
            status = f"WRONG PYTHON ({wheel.name})"
        plan.append(
            {
                **row,
                "image_has_it": have,
                "install": install and status == "install",
                "wheel": wheel.name if wheel else None,
                "status": status,
            }
        )
    for p in plan:
        print(f"  {p['spec']:36s} {p['status']}")
    result = {
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "target": str(args.target),
        "plan": plan,
        "missing": missing,
        "wrong_python": foreign,
        "installed": [],
        "plan_only": args.plan_only,
    }
    rc = 0
    if missing or foreign:
        if missing:
            print(
                f"FATAL: no wheel in {args.wheels}/ for {', '.join(missing)}: run "
                "`bash bench/gpu/fetch_wheels.sh` on a machine with network and carry .whl/",
                file=sys.stderr,
            )
        if foreign:
            tag = sorted(python_tags(foreign[0]) - {"abi3"})[0]
            print(
                f"FATAL: .whl/ holds wheels for another Python ({tag}; e.g. {foreign[0]}) "
                f"but {sys.executable} is Python {here}. On a machine with network run "
                f"`PYVER={here} bash bench/gpu/fetch_wheels.sh` and carry .whl/ again, or "
                "set PYTHON= to an interpreter of the wheels' version that has the GPU "
                "torch.",
                file=sys.stderr,
            )
        rc = 2
    elif not args.plan_only:
        todo = [p for p in plan if p["install"]]
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for p in todo:
                src = args.wheels / p["wheel"]
                if src.name.endswith(".xz"):  # repacked big wheel: back to a plain wheel
                    dst = Path(tmp) / src.name.removesuffix(".xz")
                    with lzma.open(src) as f, open(dst, "wb") as g:
                        shutil.copyfileobj(f, g, 1 << 20)
                    src = dst
                files.append(str(src))
            args.target.mkdir(parents=True, exist_ok=True)
            if files and not importable("pip"):
                # no pip in the image: a wheel is a zip laid out for site-packages
                print("no pip here: unpacking the wheels into the target folder")
                for f in files:
                    with zipfile.ZipFile(f) as z:
                        z.extractall(args.target)
                result["installed"] = [p["spec"] for p in todo]
            elif files:
                cmd = [
                    sys.executable,
                    "-m",
                    "pip",
                    "install",
                    "--no-index",
                    "--no-deps",
                    "--no-compile",
                    "--disable-pip-version-check",
                    "-q",
                    "--upgrade",
                    "--target",
                    str(args.target),
                    *files,
                ]
                done = subprocess.run(cmd)
                if done.returncode != 0:
                    print(
                        f"FATAL: pip install --target {args.target} failed "
                        f"(exit {done.returncode})",
                        file=sys.stderr,
                    )
                    rc = 3
                else:
                    result["installed"] = [p["spec"] for p in todo]
        print(f"installed {len(result['installed'])} wheels into {args.target}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return rc


if __name__ == "__main__":
    sys.exit(main())
