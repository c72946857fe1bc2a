"""``posenc tasks``: generators (deterministic, disjoint splits, checkable answers), exact-match scoring (an oracle
scores 1), a tiny run end to end with resume and refusal, and one-line CLI errors."""

from __future__ import annotations

import json
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import posenc
from posenc.cli import main
from posenc.experiments.checkpoints import run_lock
from posenc.experiments.dist import SINGLE, World
from posenc.experiments.tasks import TASKS, Task, TasksConfig, accuracy, available_tasks, run_tasks
from posenc.experiments.tasks.generators import COPY_SYMBOLS, is_test_example
from posenc.experiments.tasks.report import verdict
from posenc.experiments.tasks.run import answer_loss, task_batches, train_length

LENGTHS = [16, 33, 64, 200]


class Oracle(nn.Module):
    """Solves ``task`` from the prompt (``task.solve``) and puts all its logit mass on the right next byte;
    with ``wrong`` it predicts the answer's first byte plus one instead."""

    def __init__(self, task: Task, wrong: bool = False) -> None:
        super().__init__()
        self.task, self.wrong = task, wrong

    def forward(self, tokens: Tensor) -> Tensor:  # (B, S) -> (B, S, 256)
        b, s = tokens.shape
        a = self.task.answer_length(s + 1)
        out = torch.zeros(b, s, 256)
        for i in range(b):
            prompt = bytes(tokens[i, : s + 1 - a].tolist())
            answer = bytearray(self.task.solve(prompt))
            if self.wrong:
                answer[0] = (answer[0] + 1) % 256
            nxt = list(prompt + bytes(answer))[1:]
            out[i, torch.arange(s), torch.tensor(nxt)] = 1.0
        return out


@pytest.mark.parametrize("name", available_tasks())
def test_generators_are_deterministic_and_exact_length(name: str) -> None:
    task = TASKS[name]
    for length in LENGTHS:
        a = task.example(length, split="train", seed=3, index=7)
        assert a == task.example(length, split="train", seed=3, index=7)
        assert len(a) == length and a.isascii()
        assert a != task.example(length, split="train", seed=3, index=8)
        assert a != task.example(length, split="train", seed=4, index=7)
    assert torch.equal(task.batch(20, 5, split="test", seed=0), task.batch(20, 5, split="test", seed=0))


@pytest.mark.parametrize("name", available_tasks())
def test_train_and_test_never_overlap(name: str) -> None:
    task = TASKS[name]
    train = {task.example(16, split="train", seed=s, index=i) for s in range(2) for i in range(300)}
    test = {task.example(16, split="test", seed=0, index=i) for i in range(100)}
    assert not train & test
    assert all(is_test_example(x) for x in test) and not any(is_test_example(x) for x in train)


@pytest.mark.parametrize("name", available_tasks())
def test_answers_are_checkable(name: str) -> None:
    task = TASKS[name]
    for length in LENGTHS:
        for index in range(20):
            x = task.example(length, split="test", seed=0, index=index, depth=index % 5 / 4)
            a = task.answer_length(length)
            assert task.solve(x[:-a]) == x[-a:]


def test_copy_strings_repeat_no_symbol_up_to_the_alphabet() -> None:
    task = TASKS.get("copy")
    for length in (16, 64, 185):
        for i in range(20):
            s = task.example(length, split="train", seed=3, index=i)[-task.answer_length(length) :]
            assert len(set(s)) == len(s) == (length - 1) // 2 and b">" not in s and b"." not in s
    long = task.example(1001, split="test", seed=0, index=0)[-500:]
    assert len(set(long)) == len(COPY_SYMBOLS) and all(long.count(c) <= 6 for c in set(long))


def test_passkey_depth_places_the_key() -> None:
    task = TASKS["passkey"]
    first = task.example(100, split="train", seed=0, index=0, depth=0.0)
    last = task.example(100, split="train", seed=0, index=0, depth=1.0)
    assert first.index(b"#") == 0
    assert last.index(b"#") == 100 - 1 - 5 - 5 - 1  # filler, then "#key", then "#key" at the end
    with pytest.raises(ValueError, match="depth"):
        task.example(40, split="train", seed=0, index=0, depth=1.5)
    with pytest.raises(ValueError, match="length >= 12"):
        task.example(11, split="train", seed=0, index=0)


@pytest.mark.parametrize("name", available_tasks())
def test_oracle_scores_one_and_a_wrong_oracle_zero(name: str) -> None:
    task = TASKS[name]
    for length in (16, 48):
        examples = task.batch(length, 6, split="test", seed=0)
        a = task.answer_length(length)
        assert accuracy(Oracle(task), examples, a, batch_tokens=64) == 1.0
        assert accuracy(Oracle(task, wrong=True), examples, a) == 0.0


class Corrupted(nn.Module):
    """:class:`Oracle`, with its prediction of the byte ``back`` places from the end of the example made wrong."""

    def __init__(self, task: Task, back: int) -> None:
        super().__init__()
        self.oracle, self.back = Oracle(task), back

    def forward(self, tokens: Tensor) -> Tensor:
        out = self.oracle(tokens)  # (B, S, 256): row t predicts byte t + 1 of the example of S + 1 bytes
        row = tokens.shape[1] - self.back
        out[:, row] = out[:, row].roll(1, dims=-1)  # all the mass on a wrong byte
        return out


@pytest.mark.parametrize("name", available_tasks())
def test_exactly_the_answer_bytes_are_scored(name: str) -> None:
    """A wrong last answer byte, or a wrong first one, fails the example; a wrong byte just before the answer
    (the prompt's last byte) does not count: no off-by-one at either end of the scored span."""
    task = TASKS[name]
    for length in (16, 33):
        examples = task.batch(length, 4, split="test", seed=0)
        a = task.answer_length(length)
        assert accuracy(Corrupted(task, 1), examples, a) == 0.0  # the last answer byte
        assert accuracy(Corrupted(task, a), examples, a) == 0.0  # the first answer byte
        assert accuracy(Corrupted(task, a + 1), examples, a) == 1.0  # the prompt's last byte


@given(
    name=st.sampled_from(available_tasks()),
    extra=st.integers(0, 1500),
    split=st.sampled_from(["train", "test"]),
    seed=st.integers(0, 2**32 - 1),
    index=st.integers(0, 10**6),
    depth=st.floats(0.0, 1.0),
)
@settings(max_examples=40, deadline=None)
def test_every_example_is_exact_length_solvable_and_in_its_split(
    name: str, extra: int, split: str, seed: int, index: int, depth: float
) -> None:
    task = TASKS[name]
    length = task.min_length + extra
    x = task.example(length, split=split, seed=seed, index=index, depth=depth)
    a = task.answer_length(length)
    assert len(x) == length and 1 <= a < length and task.solve(x[:-a]) == x[-a:]
    assert is_test_example(x) == (split == "test")
    if name == "passkey":  # the key's "#" sits after round(depth * filler) bytes of filler
        assert x.index(b"#") == round(depth * (length - task.min_length))


def test_the_test_split_is_the_examples_whose_crc32_is_divisible_by_16() -> None:
    """The module docstring's rule, computed here: an example is a test example iff ``crc32(bytes) % 16 == 0``
    (a split that is disjoint but by another residue would pass the overlap test)."""
    for name in available_tasks():
        task = TASKS[name]
        for index in range(30):
            assert zlib.crc32(task.example(16, split="test", seed=0, index=index)) % 16 == 0
            assert zlib.crc32(task.example(16, split="train", seed=0, index=index)) % 16 != 0


def test_assoc_queries_every_pair() -> None:
    """Assoc's docstring: "then one key; the answer is its value": any of the pairs, the last one included."""
    task = TASKS["assoc"]
    length = 25
    n = task.pairs(length)
    assert n == 5
    queried = set()
    for index in range(200):
        x = task.example(length, split="train", seed=0, index=index)
        body, key = x[: -task.value_len].rsplit(b"?", 1)
        body = body.lstrip(b".")
        keys = [body[i : i + 2] for i in range(0, len(body), 4)]
        assert len(keys) == n
        queried.add(keys.index(key))
    assert queried == set(range(n))


class Bigram(nn.Module):
    """Logits at position ``t`` from byte ``t`` alone (a causal model whose output is exact to compute)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.table = nn.Embedding(256, 256)

    def forward(self, tokens: Tensor) -> Tensor:  # (B, S) -> (B, S, 256)
        return self.table(tokens)


@pytest.mark.parametrize("name", available_tasks())
def test_answer_loss_is_the_cross_entropy_of_the_answer_given_the_bytes_before_it(name: str) -> None:
    """``answer_loss``: each answer byte is predicted from the bytes before it (the prediction of byte ``t`` is
    the model's output at ``t - 1``), never from an input that holds the answer itself."""
    task, model = TASKS[name], Bigram()
    for length in (16, 33):
        batch = task.batch(length, 3, split="train", seed=0)
        a = task.answer_length(length)
        want = F.cross_entropy(model(batch)[:, -a - 1 : -1].flatten(0, 1), batch[:, -a:].flatten())
        torch.testing.assert_close(answer_loss(model, batch, a), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("name", available_tasks())
def test_training_lengths_cover_every_length_up_to_l(name: str) -> None:
    """``train_length``: uniform in ``[task.min_length, L]``, L included (every figure "at L" is a trained
    length)."""
    task = TASKS[name]
    cfg = TasksConfig.quick().train
    lengths = {train_length(task, cfg, step) for step in range(1000)}
    assert lengths == set(range(min(task.min_length, cfg.train_len), cfg.train_len + 1))


#: The counts each emulated rank hands to the all-reduce, by rank.
_COUNTS: dict[int, Tensor] = {}


@dataclass(frozen=True)
class _Gather(World):
    """A rank of an emulated world that records its count for the all-reduce (and sees only its own)."""

    def sum(self, t: Tensor) -> Tensor:
        _COUNTS[self.rank] = t.clone()
        return t


@dataclass(frozen=True)
class _AllReduce(World):
    """A rank of an emulated world whose all-reduce returns the sum of every rank's recorded count."""

    def sum(self, t: Tensor) -> Tensor:
        return torch.stack([_COUNTS[r] for r in range(self.size)]).sum(0)


@pytest.mark.parametrize("name", available_tasks())
def test_accuracy_on_two_ranks_is_that_of_one_process(name: str) -> None:
    """Under DDP each rank scores every ``size``-th example and the counts are summed: every rank's figure is
    the fraction of all the examples that are right (7 examples: the ranks hold 4 and 3)."""
    task = TASKS[name]
    examples = task.batch(16, 7, split="test", seed=0)
    a = task.answer_length(16)
    for model, want in ((Oracle(task), 1.0), (Oracle(task, wrong=True), 0.0)):
        _COUNTS.clear()
        for r in range(2):
            accuracy(model, examples, a, world=_Gather(rank=r, size=2))
        assert [accuracy(model, examples, a, world=_AllReduce(rank=r, size=2)) for r in range(2)] == [
            want
        ] * 2


@pytest.mark.parametrize("name", available_tasks())
def test_training_batches_on_two_ranks_are_the_global_batch(name: str) -> None:
    """``task_batches``: step ``t`` holds examples ``t*B .. (t+1)*B - 1`` of the train split; each rank takes its
    own contiguous rows of them (so no example is drawn twice, on one rank or across ranks and steps)."""
    task = TASKS[name]
    cfg = TasksConfig.quick().train
    draw = task_batches(task, cfg)
    b = cfg.batch_size
    for step in range(3):
        want = task.batch(train_length(task, cfg, step), b, split="train", seed=cfg.seed, start=step * b)
        assert torch.equal(draw(step, SINGLE), want)
        parts = [draw(step, World(rank=r, size=2)) for r in range(2)]
        assert [p.shape[0] for p in parts] == [b // 2] * 2
        assert torch.equal(torch.cat(parts), want)


def test_verdicts() -> None:
    lengths = [8, 16, 32]
    assert verdict({"8": 1.0, "16": 0.95, "32": 0.9}, lengths) == "holds"
    assert verdict({"8": 1.0, "16": 0.95, "32": 0.1}, lengths) == "to 2L"
    assert verdict({"8": 1.0, "16": 0.2, "32": 0.9}, lengths) == "fails"
    assert verdict({"8": 0.3, "16": 0.3, "32": 0.3}, lengths) == "not learned"
    assert verdict({"8": 1.0, "16": None, "32": None}, lengths) == "n/a beyond L"


FAST = TasksConfig.quick(steps=4)
NAMES = [n for n in ("none", "learned", "rope") if n in posenc.available()]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("tasks") / "run"
    return out, run_tasks(FAST, encodings=NAMES, seeds=[0, 1], out=out, device="cpu", progress=False, jobs=1)


def test_quick_run_writes_everything(first_run: tuple[Path, dict]) -> None:
    out, results = first_run
    for name in ("results.json", "report.md", "accuracy.png", "config.json", "passkey_rope.png"):
        assert (out / name).is_file(), name
    assert (out / "checkpoints" / "copy" / "rope-s1.pt").is_file()
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["eval_lengths"] == [16, 32, 64] and on_disk["tasks"] == available_tasks()
    acc = on_disk["accuracy"]
    assert acc["copy"]["learned"]["32"] is None and 0 <= acc["copy"]["learned"]["16"] <= 1
    for method in on_disk["rope_extensions"]:
        assert f"rope+{method}" in acc["assoc"]
    assert set(on_disk["passkey_depth"]["none"]["64"]) == {"0", "1"}
    report = (out / "report.md").read_text()
    assert "## copy" in report and "Kazemnejad" in report and "Not learned at L" in report


def test_rerun_trains_nothing_again(first_run: tuple[Path, dict]) -> None:
    out, results = first_run
    again = run_tasks(FAST, encodings=NAMES, seeds=[0, 1], out=out, device="cpu", progress=False, jobs=2)
    assert len(again["resumed"]) == len(available_tasks()) * len(NAMES) * 2
    assert again["accuracy"] == results["accuracy"] and again["train_seconds"] == results["train_seconds"]


def test_changed_config_is_refused(first_run: tuple[Path, dict]) -> None:
    out, _ = first_run
    with pytest.raises(
        ValueError,
        match=r"different configuration \(--steps or --quick \(train\.steps\): 4 -> 5\).*new --out",
    ):
        run_tasks(TasksConfig.quick(steps=5), encodings=["none"], out=out, device="cpu", progress=False)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tasks", "sort"], "unknown task 'sort'"),
        (["--encodings", "nope"], "unknown encoding 'nope'"),
        (["--seeds", "0,x"], "--seeds takes a count (3) or a comma list (0,1,2), got '0,x'"),
        (["--seeds", "1,1"], "--seeds list must hold distinct non-negative integers, got '1,1'"),
        (["--seeds", "0"], "--seeds N needs a count N >= 1"),
        (["--steps", "0"], "--steps must be a positive integer, got 0"),
        (
            ["--train-len", "8"],
            "task 'passkey' needs length >= 12, got 8: passkey is trained up to L = 8 (--train-len)",
        ),
        (["--train-len", "700"], "length 2800 is too long: assoc is trained up to L = 700 (--train-len)"),
        (["--device", "tpu9"], "--device 'tpu9'"),
        (["--jobs", "0"], "jobs must be a positive integer, got 0"),
    ],
)
def test_cli_bad_input_is_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tasks", "--quick", "--out", str(tmp_path / "o"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posenc tasks: error:") and message in err
    assert not (tmp_path / "o").exists()


def _copy_of(first_run: tuple[Path, dict], tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(first_run[0], out)
    return out


def test_rerun_with_a_subset_keeps_every_other_record(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    out, before = _copy_of(first_run, tmp_path), first_run[1]
    again = run_tasks(
        FAST, tasks=["copy"], encodings=["none"], seeds=[2], out=out, device="cpu", progress=False
    )
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["tasks"] == available_tasks() and on_disk["encodings"] == before["encodings"]
    assert on_disk["seeds"] == [0, 1, 2] and on_disk["this_run"]["seeds"] == [2]
    assert set(on_disk["runs"]["copy"]["none"]) == {"0", "1", "2"}
    assert set(on_disk["runs"]["copy"]["rope"]) == {"0", "1"}
    for task in ("passkey", "assoc"):  # untouched: exactly as before
        assert on_disk["accuracy"][task] == json.loads(json.dumps(before["accuracy"][task]))
    assert on_disk["accuracy"]["copy"]["rope"] == before["accuracy"]["copy"]["rope"]
    assert set(on_disk["accuracy_by_seed"]["copy"]["none"]) == {"0", "1", "2"}
    assert again["accuracy"] == on_disk["accuracy"]
    report = (out / "report.md").read_text()
    assert "## passkey" in report and "## assoc" in report


def test_rerun_replaces_the_records_it_reruns(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    out = _copy_of(first_run, tmp_path)
    path = out / "results.json"
    data = json.loads(path.read_text())
    data["runs"]["copy"]["none"]["0"]["cells"]["none"]["16"] = {"all": 0.123}  # a stale record
    path.write_text(json.dumps(data))
    again = run_tasks(
        FAST, tasks=["copy"], encodings=["none"], seeds=[0], out=out, device="cpu", progress=False
    )
    assert again["resumed"] == ["copy/none/s0"]
    assert again["runs"]["copy"]["none"]["0"]["cells"]["none"]["16"] != {"all": 0.123}
    assert set(again["runs"]["copy"]["none"]) == {"0", "1"}


def test_damaged_results_file_is_refused_before_training(
    first_run: tuple[Path, dict], tmp_path: Path
) -> None:
    out = _copy_of(first_run, tmp_path)
    (out / "results.json").write_text('{"runs": ')
    with pytest.raises(ValueError, match=r"results\.json is not a readable results file"):
        run_tasks(FAST, tasks=["copy"], encodings=["none"], seeds=[5], out=out, device="cpu", progress=False)
    (out / "results.json").write_text('{"runs": {"copy": []}}')
    with pytest.raises(ValueError, match=r"results\.json is not a posenc tasks results file"):
        run_tasks(FAST, tasks=["copy"], encodings=["none"], seeds=[5], out=out, device="cpu", progress=False)
    assert not (out / "checkpoints" / "copy" / "none-s5.pt").exists()


def test_a_results_file_of_another_config_or_with_damaged_cells_is_refused_before_training(
    first_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """With config.json deleted, a rerun of another configuration merged its records into the old ones (the report
    then named one step count for both), or trained and failed on the old cells; damaged cells failed after
    training, in a checkpoint unnamed."""
    out = _copy_of(first_run, tmp_path)
    (out / "config.json").unlink()
    with pytest.raises(
        ValueError, match=r"different configuration \(--steps or --quick \(train\.steps\): 4 -> 5\)"
    ):
        run_tasks(
            TasksConfig.quick(steps=5),
            tasks=["copy"],
            encodings=["none"],
            out=out,
            device="cpu",
            progress=False,
        )
    assert not (out / "config.json").exists()  # a refused run writes nothing
    data = json.loads((out / "results.json").read_text())
    data["runs"]["copy"]["none"]["0"]["cells"] = {"none": {"16": 5}}
    (out / "results.json").write_text(json.dumps(data))
    with pytest.raises(
        ValueError,
        match=r"results\.json is damaged \(runs\.copy\.none\.0\.cells\.none does not hold the lengths",
    ):
        run_tasks(FAST, tasks=["copy"], encodings=["none"], seeds=[5], out=out, device="cpu", progress=False)
    assert not (out / "checkpoints" / "copy" / "none-s5.pt").exists()
    out = _copy_of(first_run, tmp_path / "b")
    path = out / "checkpoints" / "copy" / "none-s0.pt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["cells"]["none"]["16"] = {"all": "high"}
    torch.save(ckpt, path)
    with pytest.raises(
        ValueError,
        match=r"none-s0\.pt is damaged \(cells\.none\.16\.all is 'high', not an accuracy\)",
    ):
        run_tasks(FAST, tasks=["copy"], encodings=["none"], seeds=[0], out=out, device="cpu", progress=False)


def test_cli_damaged_results_file_is_one_line_naming_it(
    first_run: tuple[Path, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = _copy_of(first_run, tmp_path)
    (out / "results.json").write_bytes(b"\xff\x00")
    argv = ["tasks", "--quick", "--steps", "4", "--out", str(out), "--tasks", "copy", "--encodings", "none"]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{out / 'results.json'} is not a readable results file" in err


@pytest.mark.parametrize("where", ["file", "under_file"])
def test_cli_out_that_cannot_be_a_folder_is_one_line(
    where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if where == "file" else tmp_path / "f" / "sub"
    argv = [
        "tasks",
        "--quick",
        "--out",
        str(out),
        "--tasks",
        "passkey",
        "--encodings",
        "none",
        "--no-progress",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("posenc tasks: error: --out") and "is a file" in err
    assert "Errno" not in err


def test_cli_second_run_into_one_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o"
    argv = ["tasks", "--quick", "--steps", "1", "--out", str(out), "--tasks", "copy", "--encodings", "none"]
    with run_lock(out):  # another run holds the folder
        assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "another posenc run is writing to --out" in err
    assert not (out / "config.json").exists()


@pytest.mark.parametrize("seeds", ["99999999999999999999999,", "0,-1", f"{2**32},"])
def test_cli_seeds_out_of_range_are_one_line(
    seeds: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["tasks", "--quick", "--out", str(tmp_path / "o"), "--seeds", seeds]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--seeds" in err and "2**32" in err
    assert not (tmp_path / "o").exists()


def test_checkpoint_of_another_model_is_named(first_run: tuple[Path, dict], tmp_path: Path) -> None:
    """A checkpoint copied over another one was blamed on the folder's configuration (which matched)."""
    out = _copy_of(first_run, tmp_path)
    ckpts = out / "checkpoints" / "copy"
    shutil.copy(ckpts / "rope-s1.pt", ckpts / "none-s0.pt")
    with pytest.raises(
        ValueError, match=r"none-s0\.pt was not made by this run \(a checkpoint of copy/rope/seed 1"
    ):
        run_tasks(FAST, tasks=["copy"], encodings=["none"], seeds=[0], out=out, device="cpu", progress=False)


def test_cli_names_only_the_files_it_wrote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without matplotlib no figure is written, but "wrote ..., accuracy.png" was printed all the same."""
    argv = ["tasks", "--quick", "--steps", "2", "--tasks", "passkey", "--encodings", "none", "--no-progress"]
    monkeypatch.setitem(sys.modules, "posenc.plots.tasks", None)  # as without the "plots" extra: ImportError
    assert main([*argv, "--out", str(tmp_path / "bare")]) == 0
    wrote = capsys.readouterr().out.strip().splitlines()[-1]
    assert wrote == f"wrote {tmp_path / 'bare' / 'results.json'}, {tmp_path / 'bare' / 'report.md'}"
    assert not list((tmp_path / "bare").glob("*.png"))
    monkeypatch.delitem(sys.modules, "posenc.plots.tasks")
    assert main([*argv, "--out", str(tmp_path / "full")]) == 0
    wrote = capsys.readouterr().out.strip().splitlines()[-1]
    assert wrote.endswith(f"{tmp_path / 'full' / 'accuracy.png'} and 1 passkey_<encoding>.png")
    assert (tmp_path / "full" / "accuracy.png").is_file() and (
        tmp_path / "full" / "passkey_none.png"
    ).is_file()


def test_depths_that_name_one_group_are_refused() -> None:
    """Depths 0.5 and 0.5 (or 0.1 and 0.1000001) share a record's group key: a run refused its own results as
    damaged on resume (review s7); now the configuration is refused up front."""
    from posenc.experiments.tasks import TasksConfig

    with pytest.raises(ValueError, match="depths must be distinct as their records name them"):
        TasksConfig(depths=(0.5, 0.5))
    with pytest.raises(ValueError, match="distinct"):
        TasksConfig(depths=(0.1, 0.1000001))
