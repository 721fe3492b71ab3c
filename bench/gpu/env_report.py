"""Step 1 of check.sh: what machine this is (GPU, driver, torch, CUDA, bf16, Python, cores).

Writes a JSON file and prints it. Exit status 1 when ``--require-cuda`` and torch sees no
GPU, so that the report says so in its first line instead of as 30 skipped tests.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys


def nvidia_smi() -> dict:
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return {"nvidia_smi": None}
    q = "name,driver_version,memory.total,compute_cap"
    try:
        out = subprocess.run(
            [exe, f"--query-gpu={q}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return {"nvidia_smi": f"failed: {e}"}
    first = [x.strip() for x in out.splitlines()[0].split(",")] if out else []
    return {"nvidia_smi": out, "driver": first[1] if len(first) > 1 else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--require-cuda", action="store_true")
    args = ap.parse_args()
    info = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "platform": platform.platform(),
        "glibc": "-".join(platform.libc_ver()),
        "cpu_count": os.cpu_count(),
        **nvidia_smi(),
    }
    try:
        with open("/proc/meminfo") as f:
            info["ram_gib"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        info["ram_gib"] = None
    import torch

    info.update(
        {
            "torch": str(torch.__version__),
            "torch_cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version()
            if torch.backends.cudnn.is_available()
            else None,
            "cuda_available": torch.cuda.is_available(),
            "device_count": torch.cuda.device_count(),
        }
    )
    try:
        try:  # cxrkit's shim for a CPU torch beside a CUDA torchvision (dev machines)
            from cxrkit._compat import ensure_torchvision

            ensure_torchvision()
        except ImportError:
            pass
        import torchvision

        info["torchvision"] = str(torchvision.__version__)
    except Exception as e:  # noqa: BLE001 - reported, not fatal here
        info["torchvision"] = f"import failed: {e}"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(
            {
                "gpu": p.name,
                "gpu_memory_gib": round(p.total_memory / 2**30, 1),
                "compute_capability": f"{p.major}.{p.minor}",
                "multiprocessors": p.multi_processor_count,
                "bf16_supported": torch.cuda.is_bf16_supported(),
                "nccl": ".".join(map(str, torch.cuda.nccl.version()))
                if hasattr(torch.cuda, "nccl")
                else None,
            }
        )
        x = torch.randn(1024, 1024, device="cuda")
        info["cuda_matmul_ok"] = bool(torch.isfinite(x @ x).all())
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)
    print(json.dumps(info, indent=1))
    if args.require_cuda and not info["cuda_available"]:
        print("FATAL: torch sees no CUDA GPU (torch.cuda.is_available() is False)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
