"""The serving load benchmark (benchmarks/serving_load.py) end to end on a narrow model: it runs, the batched
server batched, nothing was dropped, and every stream's codes equal ``tokenize`` (checked inside --smoke)."""
from __future__ import annotations

import pytest

from benchmarks import serving_load


@pytest.mark.slow  # two server starts and 4 x 2 streams of the universal HiFi-GAN: ~25 s on 2 busy cores
def test_serving_load_smoke(capsys):
    rows = serving_load.main(["--smoke", "--streams", "2", "--seconds", "1", "--threads", "1", "--stage", "2"])
    assert [(r["max_batch"], r["mode"]) for r in rows] == [(1, "realtime"), (1, "flood"), (8, "realtime"), (8, "flood")]
    assert all(r["dropped_chunks"] == 0 and r["missing_samples"] == 0 and r["audio_x"] > 0 for r in rows)
    assert max(rows[0]["batches"]) == 1 and max(rows[-1]["batches"]) == 2  # one job per connection in a batch
    assert "flood throughput batched / unbatched" in capsys.readouterr().out
    (st,) = rows[0]["stage"]  # the decoder + vocoder stage of 2 streams, one by one vs batched
    assert st["streams"] == 2 and st["alone_rtf"] > 0 and st["batched_rtf"] > 0
