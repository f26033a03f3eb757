"""Run every benchmark, print one table and write the rows as JSON (issue 8).

    python -m benchmarks.run [--quick] [--json OUT] [--only tokenize,rvq,...]

Every speed target is a ratio measured side by side in the same process: luna and its baseline are
called in alternation (ABBA order, see :func:`interleaved`) and the medians are compared, so load from
other processes on a shared machine hits both alike. Absolute figures are printed too, but only the
ratios (and luna's own real-time factors) are what the targets judge. ``ratio`` is always "how many
times faster luna is" (baseline time / luna time, or luna rate / baseline rate).

CPU rows run with ``torch.set_num_threads(2)`` (:data:`CPU_THREADS`) unless the row says otherwise;
GPU rows run only when CUDA is available and otherwise appear as ``skipped: no CUDA device``.
``--quick`` uses fewer repeats (and, where a row says so, shorter inputs) and finishes in a few minutes
on 2 cores; ``--smoke`` shrinks everything further for the unit test (its numbers mean nothing).
"""
from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import math
import os
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import torch

#: torch intra-op threads of the CPU rows (the CI machine and the target figures assume 2 cores)
CPU_THREADS = 2

#: benchmark modules in the order they run; each has ``run(quick=False, smoke=False) -> list[dict]``
SECTIONS = ("tokenize", "rvq", "detokenize", "data_pipeline", "training_step")

#: the fields every row has (``None`` where a field does not apply, e.g. no baseline)
ROW_FIELDS = ("section", "what", "luna", "baseline", "ratio", "unit", "threads", "device", "target", "met", "note")


# ---- measuring ----------------------------------------------------------------------------------
def interleaved(fns: Dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> Dict[str, List[float]]:
    """Wall seconds of ``repeats`` calls of each function, alternating between them.

    Round r calls the functions in order, round r+1 in reverse (ABBA...), so a slow spell of the machine
    lands on every contender alike and neither always runs right after the other. ``warmup`` untimed
    rounds come first (allocator, thread pool and kernel caches). Functions that run on a GPU must
    synchronize before returning.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


@contextmanager
def threads(n: int) -> Iterator[None]:
    """``torch.set_num_threads(n)`` for the block, restored afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compose(model: str, hardware: str = "cpu", overrides: Sequence[str] = ()) -> Any:
    """The train config for ``model=… hardware=…`` composed exactly as ``python -m luna.train`` does."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from luna.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=[f"model={model}", f"hardware={hardware}", *overrides])


def speech(seconds: float, sample_rate: int) -> torch.Tensor:
    """``[S]`` real speech from the bundled corpus (files concatenated, resampled): timing inputs that
    look like what the models see, without any download."""
    from luna.audio import load
    from luna.data import BUNDLED

    files = sorted((BUNDLED / "train-clean-100").rglob("*.flac"))
    need = math.ceil(seconds * sample_rate)
    parts, have = [], 0
    for f in files:
        wav, _ = load(f, sample_rate)
        parts.append(wav)
        have += wav.numel()
        if have >= need:
            break
    wav = torch.cat(parts)
    return wav.repeat(math.ceil(need / wav.numel()))[:need]


# ---- rows ---------------------------------------------------------------------------------------
def _round(x: Optional[float]) -> Optional[float]:
    if x is None or not math.isfinite(x) or x == 0:
        return x
    return round(x, max(0, 3 - int(math.floor(math.log10(abs(x)))) - 1))  # 3 significant digits


def row(
    section: str,
    what: str,
    luna: Optional[float],
    baseline: Optional[float],
    unit: str,
    threads: Optional[int],
    device: str,
    *,
    lower_is_better: bool = True,
    target: Optional[str] = None,
    met: Optional[bool] = None,
    note: str = "",
    times: Optional[Dict[str, List[float]]] = None,
    **extra: Any,
) -> Dict[str, Any]:
    """One result. ``ratio`` = how many times faster luna is; ``met`` is None when there is no target.

    ``times`` (``{"luna": [...], "baseline": [...]}``, seconds per call from :func:`interleaved`) adds the
    raw timings and two cross-checks of the ratio of medians: ``ratio_best`` (fastest call of each,
    roughly what an idle machine gives) and ``ratio_paired`` (median over rounds of the ratio of the two
    adjacent calls, which share the machine's state).
    """
    ratio = None
    if luna is not None and baseline is not None and luna > 0 and baseline > 0:
        ratio = baseline / luna if lower_is_better else luna / baseline
    if times is not None:
        lt, bt = times["luna"], times["baseline"]
        extra["ratio_best"] = _round(min(bt) / min(lt))
        extra["ratio_paired"] = _round(median([b / a for a, b in zip(lt, bt)]))
        extra["luna_times_ms"] = [round(v * 1e3, 2) for v in lt]
        extra["baseline_times_ms"] = [round(v * 1e3, 2) for v in bt]
        note = f"{note}; ratio of fastest calls {extra['ratio_best']:g}, paired {extra['ratio_paired']:g}"
    return {
        "section": section,
        "what": what,
        "luna": _round(luna),
        "baseline": _round(baseline),
        "ratio": _round(ratio),
        "unit": unit,
        "threads": threads,
        "device": device,
        "target": target,
        "met": met,
        "note": note,
        **extra,
    }


def main_of(run_fn: Callable[..., List[Dict[str, Any]]], doc: str) -> None:
    """``python -m benchmarks.<module> [--quick]``: print one module's rows."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    for r in run_fn(quick=parser.parse_args().quick):
        print(r)


def skipped(section: str, what: str, reason: str = "skipped: no CUDA device") -> Dict[str, Any]:
    """A row that could not be measured on this machine (``met`` stays None)."""
    return row(section, what, None, None, "", None, "cuda", target=None, met=None, note=reason, skipped=True)


def machine() -> Dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": CPU_THREADS,
        "loadavg_1min_at_start": round(os.getloadavg()[0], 2),
    }


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "met" if v else "NOT met"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def table(rows: List[Dict[str, Any]]) -> str:
    """A Markdown table of the rows, then their notes (numbered)."""
    head = ["#", "section", "what", "luna", "baseline", "ratio (x faster)", "unit", "threads/device", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for i, r in enumerate(rows, 1):
        where = f"{r['threads']} thr {r['device']}" if r.get("threads") else r.get("device") or "-"
        lines.append("| " + " | ".join([
            str(i), r["section"], r["what"], _cell(r["luna"]), _cell(r["baseline"]), _cell(r["ratio"]),
            r["unit"] or "-", where, r["target"] or "-", _cell(r["met"]),
        ]) + " |")
        if r.get("note"):
            notes.append(f"[{i}] {r['note']}")
    return "\n".join(lines + ([""] + notes if notes else []))


# ---- entry point --------------------------------------------------------------------------------
def run_sections(sections: Sequence[str], quick: bool, smoke: bool = False) -> List[Dict[str, Any]]:
    rows: List[Dict[str, Any]] = []
    for name in sections:
        module = importlib.import_module(f"benchmarks.{name}")
        t0 = time.perf_counter()
        if name == "data_pipeline":  # its own module, shared with the data work: rows get the common fields
            out = _data_pipeline_rows(module.run(quick=quick or smoke))
        else:
            out = module.run(quick=quick, smoke=smoke)
        load = round(os.getloadavg()[0], 2)  # other processes' load distorts 2-thread timings: keep it on record
        for r in out:
            r.setdefault("loadavg_1min", load)
        print(f"[benchmarks] {name}: {len(out)} rows in {time.perf_counter() - t0:.0f} s (load average {load})",
              file=sys.stderr, flush=True)
        rows.extend(out)
    return rows


#: benchmarks/data_pipeline.py's own target (its docstring): audio seconds per CPU second, per core
DATA_PIPELINE_TARGET = 2000.0
DATA_CACHE_TARGET = 20000.0  # the row read from the data.cache memory map (it carries vs_decode)


def _data_pipeline_rows(raw: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    rows = []
    for r in raw:
        extra = {k: v for k, v in r.items() if k not in ("what", "luna", "unit", "threads")}
        target = DATA_CACHE_TARGET if "vs_decode" in r else DATA_PIPELINE_TARGET
        rows.append(row(
            "data_pipeline", r["what"], r["luna"], None, f"{r['unit']} per core", r["threads"], "cpu",
            lower_is_better=False, target=f">= {target:g}x realtime per core", met=r["luna"] >= target,
            note=(f"audio s per CPU s of all loading processes; wall clock: {r['wall_x_realtime_total']}x realtime "
                  f"in total with {r['workers']} workers (benchmarks/data_pipeline.py)"),
            **extra,
        ))
    return rows


def main(argv: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats and shorter inputs (a few minutes)")
    parser.add_argument("--smoke", action="store_true", help="tiny sizes for the unit test; numbers are meaningless")
    parser.add_argument("--json", type=Path, default=None, help="write the rows (and the machine) to this file")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    args = parser.parse_args(argv)
    sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(sections) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    info = machine()
    t0 = time.perf_counter()
    rows = run_sections(sections, quick=args.quick, smoke=args.smoke)
    info["wall_seconds"] = round(time.perf_counter() - t0, 1)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    print(f"luna benchmarks ({mode}) — {info['date']} — {info['cpu']}, {info['cpu_count']} cores, "
          f"CPU rows at {CPU_THREADS} threads, CUDA: {info['cuda'] or 'none'} — torch {info['torch']} — "
          f"{info['wall_seconds']} s")
    print(table(rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "mode": mode, "rows": rows}, indent=2) + "\n")
    return rows


if __name__ == "__main__":
    main()
