"""The docs say what luna does: every ``python -m luna.*`` command in README.md and docs/*.md composes and passes
luna's own validation (or its argument parser), every ```python block runs, every relative link resolves.
Nothing trains: commands are composed and validated, as ``python -m luna.train`` does before it builds anything."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Tuple

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser

from luna.config import CONF_DIR, check_mel_compatible
from luna.validation import validate
from tests.paths import ROOT

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
HYDRA_ENTRIES = {"luna.train": "train", "luna.eval": "eval", "luna.tokenize": "tokenize", "luna.serve": "serve"}
PLACEHOLDER = re.compile(r"<[^<>\s]+>|(?<==)\.\.\.")  # a path the reader fills in: <run>, checkpoint=...
#: python blocks that need a running server: the named test runs them against ``python -m luna.serve``
RUN_ELSEWHERE = {"ws://127.0.0.1:8765": ROOT / "tests" / "serving" / "test_server.py"}


def name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if ROOT in path.parents else path.name


def code_blocks(path: Path, langs: Tuple[str, ...]) -> Iterator[Tuple[str, str]]:
    """(``file:line``, text) of each fenced block in ``path`` whose language is one of ``langs``."""
    text = path.read_text()
    for m in FENCE.finditer(text):
        if m.group(1) in langs:
            yield f"{name(path)}:{text[:m.start()].count(chr(10)) + 1}", m.group(2)


def documented_commands(docs: List[Path] = DOCS) -> List[Tuple[str, str, List[str]]]:
    """(where, module, arguments) of every shell line that runs ``python -m luna.X`` (or ``torchrun ... -m luna.X``),
    and the quality yardstick's arms (``python -m benchmarks.quality``)."""
    found = []
    for path in docs:
        for where, block in code_blocks(path, ("bash", "sh", "shell", "")):
            for line in block.replace("\\\n", " ").splitlines():
                if line.split()[:1] not in (["python"], ["python3"], ["torchrun"]):
                    continue
                words = shlex.split(PLACEHOLDER.sub("PLACEHOLDER", line), comments=True)
                if "-m" not in words:
                    continue
                module = words[words.index("-m") + 1]
                if module.startswith("luna.") or module == "benchmarks.quality":
                    found.append((where, module, words[words.index("-m") + 2:]))
    return found


def sweep_combinations(overrides: List[str], sweep_params: Dict[str, str]) -> List[List[str]]:
    """Every job of ``-m``: the command's overrides plus ``hydra.sweeper.params``, expanded as Hydra's basic sweeper does."""
    parsed = OverridesParser.create().parse_overrides(overrides + [f"{k}={v}" for k, v in sweep_params.items()])
    return [job for batch in BasicSweeper.split_arguments(parsed, max_batch_size=None) for job in batch]


def check_hydra_command(module: str, args: List[str], checkpoint: Path) -> int:
    """Compose the entry config with the command's overrides and run luna's validation; returns the jobs checked."""
    multirun = "-m" in args or "--multirun" in args
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    # the checkpoints a command names are the reader's (validate() asks that they exist): a stand-in file
    overrides = [f"{o.split('=')[0]}={checkpoint}" if o.split("=")[0].endswith("checkpoint") else o for o in overrides]
    if not torch.cuda.is_available():  # a documented device=cuda: the keys are checked, not this machine
        overrides = ["device=cpu" if o == "device=cuda" else o for o in overrides]
    name = HYDRA_ENTRIES[module]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        jobs = [overrides]
        if multirun:  # the experiment may add its own sweep (hydra.sweeper.params): read it from the first job
            first = sweep_combinations(overrides, {})[0]
            params = compose(name, overrides=first, return_hydra_config=True).hydra.sweeper.params or {}
            jobs = sweep_combinations(overrides, {str(k): str(v) for k, v in params.items()})
        for job in jobs:
            cfg = compose(name, overrides=job)
            validate(cfg)
            if cfg.get("model") is not None and cfg.get("vocoder") is not None:  # as SpeechTokenizer checks it
                check_mel_compatible(cfg.model.mel, cfg.vocoder.mel)
    return len(jobs)


def parsers() -> Dict[str, Callable]:
    from luna import client, report

    return {"luna.report": report.parser, "luna.client": client.parser}


def check_command(module: str, args: List[str], checkpoint: Path) -> int:
    if module in HYDRA_ENTRIES:
        return check_hydra_command(module, args, checkpoint)
    if module == "benchmarks.quality":  # an arm: its overrides on top of experiment=quickstart
        from benchmarks.quality import parser

        return check_hydra_command("luna.train", ["experiment=quickstart", *parser().parse_args(args).overrides], checkpoint)
    if module in parsers():
        parsers()[module]().parse_args(args)  # argparse: a bad argument is SystemExit(2)
        return 1
    assert module == "luna.doctor" and not args, f"{module} {args}: no check for this entry point"
    return 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    path.write_bytes(b"")  # validate() only asks that the file exists; nothing loads it
    return path


def test_the_docs_show_commands_of_every_entry_point():
    modules = {m for _, m, _ in documented_commands()}
    assert {"luna.train", "luna.eval", "luna.tokenize", "luna.serve", "luna.report"} <= modules, modules
    assert any("-m" in args for _, m, args in documented_commands() if m == "luna.train")  # a sweep
    # model=tiny picks its vocoder itself: the docs never tell a reader to add one
    assert not [w for w, _, args in documented_commands() if "model=tiny" in args and "vocoder=griffinlim" in args]


@pytest.mark.parametrize("where,module,args", documented_commands(), ids=lambda x: x if isinstance(x, str) else None)
def test_every_documented_command_is_valid(where, module, args, checkpoint):
    try:
        assert check_command(module, args, checkpoint) >= 1
    except SystemExit as e:
        pytest.fail(f"{where}: python -m {module} {' '.join(args)}: its parser refused the arguments (exit {e.code})")
    except Exception as e:  # noqa: BLE001 - the message names the doc line and the command
        pytest.fail(f"{where}: python -m {module} {' '.join(args)}: {type(e).__name__}: {e}")


def test_a_wrong_command_in_the_docs_is_caught(tmp_path, checkpoint):
    """The checks above can fail: a bad key, a bad value, a sweep whose second job is bad, a bad flag."""
    doc = tmp_path / "bad.md"
    doc.write_text("```bash\npython -m luna.train model.codebook_sise=512   # typo\n```\n")
    [(_, module, args)] = documented_commands([doc])
    with pytest.raises(Exception, match="codebook_sise"):
        check_command(module, args, checkpoint)
    with pytest.raises(Exception, match="codebook_size"):
        check_command("luna.train", ["-m", "model.codebook_size=512,1"], checkpoint)
    with pytest.raises(Exception, match="vocoder.mel"):  # off the universal mel, with the universal vocoder
        check_command("luna.train", ["model=tiny", "vocoder=hifigan_universal"], checkpoint)
    with pytest.raises(SystemExit):
        check_command("luna.report", ["outputs/sweeps/x", "--evaluate"], checkpoint)


# ---- python blocks ---------------------------------------------------------------------------------------------

RUNNER = r"""
import json, sys, traceback
for where, code in json.load(open(sys.argv[1])):
    try:
        exec(compile(code, where, "exec"), {"__name__": "__main__"})
    except BaseException:
        traceback.print_exc()
        sys.exit(f"FAILED: {where}")
    print(f"ran {where}", flush=True)
"""


def python_blocks() -> List[Tuple[str, str]]:
    return [b for path in DOCS for b in code_blocks(path, ("python",))]


def prepare_outputs(work: Path) -> None:
    """What the blocks read, where a user's runs put it: the quickstart checkpoint (a tiny model, Griffin-Lim),
    a causal run (rvq8_causal at hidden 32, universal HiFi-GAN), and a token export of two dev-clean files."""
    from luna import SpeechTokenizer
    from luna.tokens.writer import export
    from tests.conftest import compose_train

    quick = work / "outputs" / "runs" / "quickstart" / "checkpoints" / "best.pt"
    SpeechTokenizer.from_config(compose_train(["model=tiny"])).save_checkpoint(quick)
    causal = work / "outputs" / "runs" / "rvq8_causal-librispeech_mini" / "model=rvq8_causal" / "checkpoints" / "best.pt"
    SpeechTokenizer.from_config(compose_train(["model=rvq8_causal", "model.hidden=32"])).save_checkpoint(causal)
    two = work / "two_files"
    two.mkdir()
    for name in ("84-121123-0007.flac", "84-121123-0000.flac"):
        (two / name).symlink_to(ROOT / "luna" / "data" / "librispeech_mini" / "dev-clean" / "84" / "121123" / name)
    export(compose_train([f"checkpoint={quick}", "data=folder", f"data.root={two}", f"output_dir={work / 'tokens' / 'bundled'}",
                          "device=cpu"], config_name="tokenize"))


def test_every_python_block_runs(tmp_path):
    blocks = []
    for where, code in python_blocks():
        elsewhere = [test for marker, test in RUN_ELSEWHERE.items() if marker in code]
        if elsewhere:  # that test must really read the page the block is on
            assert where.split(":")[0] in elsewhere[0].read_text(), f"{where}: {elsewhere[0]} does not run it"
            continue
        blocks.append((where, code.replace('"luna/data/', f'"{ROOT}/luna/data/')))  # the bundled corpus, from any cwd
    assert len(blocks) >= 3
    prepare_outputs(tmp_path)
    (tmp_path / "blocks.json").write_text(json.dumps(blocks))
    r = subprocess.run([sys.executable, "-c", RUNNER, "blocks.json"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert r.stdout.count("\nran ") + r.stdout.startswith("ran ") == len(blocks), r.stdout


# ---- links -----------------------------------------------------------------------------------------------------

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def anchors(md: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    heads = re.findall(r"^#+\s+(.*)$", FENCE.sub("", md.read_text()), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in heads}


def broken_links(docs: List[Path] = DOCS) -> List[str]:
    bad = []
    for path in docs:
        for target in LINK.findall(FENCE.sub("", path.read_text())):
            if re.match(r"[a-z]+:", target):  # https:, mailto:
                continue
            file, _, anchor = target.partition("#")
            dest = (path.parent / file).resolve() if file else path
            if not dest.exists():
                bad.append(f"{name(path)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
                bad.append(f"{name(path)}: {target}: no such heading")
    return bad


def test_every_relative_link_resolves():
    assert len(DOCS) >= 7 and broken_links() == []


def test_a_broken_link_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n[ok](a.md#top) [gone](b.md) [anchor](a.md#nowhere) ![pic](img.png)\n")
    assert [b.split(": ", 1)[1] for b in broken_links([tmp_path / "a.md"])] == [
        "b.md: no such file", "a.md#nowhere: no such heading", "img.png: no such file"]
