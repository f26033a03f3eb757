# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README).
# Both go through `make install`: uv (pinned, in .uv/) installs exactly the versions in uv.lock into .venv.
VENV ?= .venv
PY := $(VENV)/bin/python
UV_VERSION := 0.13.9
UV := .uv/bin/uv
export UV_PROJECT_ENVIRONMENT := $(VENV)
STAMP := $(VENV)/.installed-$(shell cat uv.lock pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install lock lock-check doctor demo test test-fast bench gpu-check clean

$(UV):
	python3 -m venv .uv
	.uv/bin/python -m pip install -q uv==$(UV_VERSION)

# --locked: install the lock as it is, and refuse (naming the cause) if it no longer matches pyproject.toml
$(STAMP): uv.lock pyproject.toml | $(UV)
	$(UV) sync --locked --all-extras
	$(PY) -m luna.doctor
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# Re-resolve uv.lock after changing a dependency in pyproject.toml (commit both).
lock: $(UV)
	$(UV) lock

# Fails, with uv's reason, when uv.lock is stale or was edited by hand.
lock-check: $(UV)
	$(UV) lock --check

doctor: install
	$(PY) -m luna.doctor

# Train the quickstart tokenizer on the bundled real speech (2 CPU cores: 8 min), then evaluate it on held-out readers.
demo: install
	$(PY) -m luna.train experiment=quickstart
	$(PY) -m luna.eval checkpoint=outputs/runs/quickstart/checkpoints/best.pt \
		test_dir=luna/data/librispeech_mini/dev-clean hydra.run.dir=outputs/runs/quickstart/eval
	@echo "checkpoint: outputs/runs/quickstart/checkpoints/best.pt"
	@echo "logs:       outputs/runs/quickstart/train.log, outputs/runs/quickstart/tensorboard"
	@echo "audio:      outputs/runs/quickstart/eval/ (reconstructed WAVs, report.md)"

# The whole suite, slow and SLURM tests included (they skip with a reason when no cluster answers).
test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow and not slurm"

bench: install
	$(PY) -m benchmarks.run

# Before a GPU loan (issue 16): the wheels the GPU image lacks + an fp16 copy of the universal HiFi-GAN into
# .gpu-wheels/ (ignored), the size of what travels, and the one command to run there (benchmarks/README.md).
gpu-check: install
	$(PY) -m benchmarks.gpu_check --prepare

clean:
	rm -rf outputs .pytest_cache
