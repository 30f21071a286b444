"""The GPU machine's carried set (bench/gpu_requirements.txt, checked by bench/gpu_deps.py) without the
network: one pin per package, each within the project's own ranges, none shadowing the image; the
dependency check finds what is met, missing or in conflict, and runs against this environment."""

import subprocess
import sys

from helpers_launch import REPO
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

sys.path.insert(0, str(REPO / "bench"))
import gpu_deps  # noqa: E402


def test_pins_are_exact_within_the_project_ranges_and_apart_from_the_image():
    pins, image = gpu_deps.read_list(gpu_deps.PINS), gpu_deps.read_list(gpu_deps.IMAGE)
    assert pins and all(pins.values())  # every carried package at one exact version
    assert not set(pins) & set(image)
    assert {"torch", "transformers", "accelerate"} <= {n for n, v in image.items() if v}
    for text in gpu_deps.project_needs():
        requirement = Requirement(text)
        name = canonicalize_name(requirement.name)
        assert name in pins or name in image, f"{name}: neither carried nor on the image"
        if name in pins:
            assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} outside {requirement}"


def test_where_a_requirement_is_met():
    carried, image = {"dill": ("0.4.1", [])}, {"torch": "2.11.0", "pandas": None}
    assert gpu_deps.where(Requirement("dill<0.4.2"), carried, image) == ("carried 0.4.1", False)
    assert gpu_deps.where(Requirement("torch>=2.0"), carried, image) == ("image 2.11.0", False)
    assert gpu_deps.where(Requirement("torch>=2.13"), carried, image)[1]
    assert gpu_deps.where(Requirement("pandas>=2"), carried, image) == (
        "image, version unchecked here (needs >=2)", False)
    assert gpu_deps.where(Requirement("hjson"), carried, image) == ("MISSING", True)
    assert not gpu_deps.applies(Requirement("pywin32; sys_platform == 'win32'"))


def test_installed_check_runs_here():
    """The mode the GPU machine runs after installing the wheels, against this environment."""
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "gpu_deps.py"), "--installed"],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "OK:" in proc.stdout and "deepspeed" in proc.stdout
