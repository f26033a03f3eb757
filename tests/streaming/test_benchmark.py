"""benchmarks/streaming.py runs end to end (``--smoke``: tiny shapes; its numbers mean nothing)."""
from __future__ import annotations

import json
import math

from benchmarks import streaming


def test_streaming_benchmark_smoke(tmp_path):
    out = tmp_path / "stream.json"
    rows = streaming.main(["--smoke", "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == rows and rows
    for r in rows:
        assert all(math.isfinite(r[k]) and r[k] > 0 for k in ("rtf", "p50_ms", "p95_ms", "algorithmic_latency_ms"))
        assert r["tokens"] > 0
    assert "| `rvq8_causal` |" in streaming.table(rows)
