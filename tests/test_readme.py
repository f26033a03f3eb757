"""The README's Python example runs as written (against a checkpoint where `make demo` puts one)."""
from __future__ import annotations

import re
import subprocess
import sys

from luna import SpeechTokenizer
from tests.paths import ROOT
from tests.conftest import compose_train


def test_readme_python_example_runs(tmp_path):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Python API\s+```python\n(.*?)```", text, re.S).group(1)
    assert len(block.strip().splitlines()) <= 12
    ckpt = tmp_path / "outputs" / "runs" / "quickstart" / "checkpoints" / "best.pt"
    SpeechTokenizer.from_config(compose_train(["model=tiny", "vocoder=griffinlim"])).save_checkpoint(ckpt)
    block = block.replace('"luna/data/', f'"{ROOT}/luna/data/')  # the bundled corpus, from any cwd
    r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "tokens/s" in r.stdout and "kbps" in r.stdout
    assert (tmp_path / "reconstruction.wav").stat().st_size > 1000
    assert SpeechTokenizer.from_checkpoint(tmp_path / "my_tokenizer.pt").num_quantizers == 2


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    quick = text[text.index("## Quick start"):]
    first = re.search(r"```bash\n(.*?)```", quick, re.S).group(1)
    assert [line.split()[0:2] for line in first.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
