"""Is the carried set complete and consistent for the GPU machine's image? (docs/gpu.md)

    python3 bench/gpu_deps.py --wheels bench/gpu-bundle/wheels    # here, after make gpu-bundle
    python3 bench/gpu_deps.py --installed                          # there, after installing the wheels

pip cannot resolve against packages it does not see (the image's torch), so the check is in two steps:
1. (--wheels) pip itself installs the pinned set with --no-index --no-deps for cp312 manylinux x86_64
   into a scratch folder: every pin has exactly one wheel, and each wheel's tags fit the image's Python;
2. every requirement of every carried wheel (Requires-Dist, markers evaluated for CPython 3.12 on
   x86-64 Linux), and the project's and the check's own needs, is met by a carried wheel or by the
   image: by its version where bench/gpu_image.txt knows it (torch, transformers, accelerate, numpy,
   ...), else it is listed as "image, unchecked here". On the machine (--installed) the same step runs
   against what is really installed there, every version known.
Exit 0 when nothing is missing or in conflict, else 1.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import zipfile
from email.parser import Parser
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PINS = REPO / "bench" / "gpu_requirements.txt"
IMAGE = REPO / "bench" / "gpu_image.txt"
# The check's own needs beyond the project's dependencies (bench/gpu_check.py's parts).
CHECK_NEEDS = ["faiss-cpu>=1.8", "pytrec-eval-terrier>=0.5", "pytest>=8", "pytest-timeout>=2"]
TARGET = {"python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
          "platform_python_implementation": "CPython", "sys_platform": "linux", "platform_system": "Linux",
          "platform_machine": "x86_64", "os_name": "posix", "extra": ""}
PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_17_x86_64", "manylinux_2_24_x86_64", "manylinux_2_27_x86_64",
             "manylinux_2_28_x86_64")


def read_list(path: Path) -> dict[str, str | None]:
    """{canonical name: version or None} of a `name==version` / `name` list (comments ignored)."""
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            found[canonicalize_name(name)] = version.strip() or None
    return found


def project_needs() -> list[str]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"] + CHECK_NEEDS


def wheel_dists(folder: Path) -> dict[str, tuple[str, list[str]]]:
    """{name: (version, Requires-Dist)} of every wheel in `folder`; two of one name is an error."""
    dists = {}
    for wheel in sorted(folder.glob("*.whl")):
        with zipfile.ZipFile(wheel) as z:
            meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode())
        name = canonicalize_name(meta["Name"])
        if name in dists:
            sys.exit(f"{folder}: two wheels of {name} ({dists[name][0]} and {meta['Version']}): keep one")
        dists[name] = (meta["Version"], meta.get_all("Requires-Dist") or [])
    return dists


def installed_dists(names) -> dict[str, tuple[str, list[str]]]:
    dists = {}
    for name in names:
        try:
            dists[name] = (metadata.version(name), metadata.requires(name) or [])
        except metadata.PackageNotFoundError:
            pass
    return dists


def applies(requirement: Requirement) -> bool:
    return requirement.marker is None or requirement.marker.evaluate(TARGET)


def where(requirement: Requirement, carried: dict, image: dict[str, str | None]) -> tuple[str, bool]:
    """(where the requirement is met, or why not; whether that is an error)."""
    name = canonicalize_name(requirement.name)
    for source, version in (("carried", carried.get(name, (None,))[0]), ("image", image.get(name, "absent"))):
        if version == "absent" or (source == "carried" and version is None):
            continue
        if version is None:
            return f"image, version unchecked here (needs {requirement.specifier or 'any'})", False
        if requirement.specifier.contains(version, prereleases=True):
            return f"{source} {version}", False
        return f"CONFLICT: {source} has {version}, needs {requirement.specifier}", True
    return "MISSING", True


def dependency_report(carried: dict, image: dict[str, str | None]) -> tuple[list[str], int]:
    lines, errors = [], 0
    owners = [(f"{n} {v}", reqs) for n, (v, reqs) in sorted(carried.items())] + [("project + check", project_needs())]
    for owner, reqs in owners:
        for text in reqs:
            requirement = Requirement(text)
            if not applies(requirement):
                continue
            found, bad = where(requirement, carried, image)
            errors += bad
            lines.append(f"  {owner:28} {str(requirement):42} {found}")
    return lines, errors


def pip_install(folder: Path, pins: dict[str, str | None]) -> tuple[list[str], int]:
    """Step 1: pip installs the pins from `folder` alone, for the image's Python and platform."""
    with tempfile.TemporaryDirectory() as target:
        cmd = [sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--find-links", str(folder),
               "--target", target, "--python-version", "3.12", "--implementation", "cp", "--abi", "cp312",
               "--only-binary=:all:", *(f"--platform={p}" for p in PLATFORMS), "--no-compile", "--quiet",
               *(f"{n}=={v}" for n, v in pins.items())]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        installed = sorted(p.name for p in Path(target).glob("*.dist-info"))
    shown = " ".join(c if not c.startswith("/") else "<" + Path(c).name + ">" for c in cmd[1:12]) + " ..."
    lines = [f"step 1: python -m {shown} (rc {proc.returncode})", *(f"  {d}" for d in installed)]
    lines += [f"  pip: {line}" for line in proc.stderr.splitlines() if not re.match(r"^\s*$", line)]
    return lines, int(proc.returncode != 0 or len(installed) != len(pins))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--wheels", type=Path, help="the carried wheels' folder (here)")
    mode.add_argument("--installed", action="store_true", help="what is installed (on the GPU machine)")
    args = parser.parse_args()
    pins = read_list(PINS)
    lines, errors = [], 0
    if args.wheels:
        carried = wheel_dists(args.wheels)
        image = read_list(IMAGE)
        for name, version in pins.items():
            if carried.get(name, (None,))[0] != version:
                lines.append(f"pin {name}=={version}: the folder holds {carried.get(name, ('no wheel',))[0]}")
                errors += 1
        for name in set(carried) - set(pins):
            lines.append(f"{name}: carried but not pinned in {PINS.name}")
            errors += 1
        for name in set(carried) & set(image):
            lines.append(f"{name}: carried and already on the image (the carried one would shadow it)")
            errors += 1
        step1, bad = pip_install(args.wheels, pins)
        lines += step1
        errors += bad
    else:
        carried = installed_dists(pins)
        image = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()
                 if canonicalize_name(d.metadata["Name"]) not in pins}
        lines += [f"carried, installed: {', '.join(f'{n} {v}' for n, (v, _) in sorted(carried.items()))}"]
        for name in set(pins) - set(carried):
            lines.append(f"{name}: pinned but not installed")
            errors += 1
    report, bad = dependency_report(carried, image)
    print("\n".join(lines + ["step 2: every requirement, where it is met:"] + report))
    errors += bad
    print(f"{'OK' if not errors else f'{errors} PROBLEM(S)'}: {len(carried)} carried distributions")
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
