# Two commands do all set-up on a fresh machine: `make demo` and `make test` (see README).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum < pyproject.toml | cut -d' ' -f1)

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

# Train the quickstart tokenizer on the bundled corpus (2 CPU cores: ~5 min), then evaluate it.
demo: install
	$(PY) -m luna.train experiment=quickstart
	$(PY) -m luna.eval checkpoint=outputs/runs/quickstart/checkpoints/best.pt \
		test_dir=luna/data/minispeech/dev-mini hydra.run.dir=outputs/runs/quickstart/eval
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

clean:
	rm -rf outputs .pytest_cache
