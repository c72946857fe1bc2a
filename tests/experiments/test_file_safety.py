"""File safety (issue #12): no file written through a link, one run per folder, output folders checked before
any work, damaged files named with what to do, binary data refused. The bad-input table is tests/test_bad_input.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from posenc.experiments.checkpoints import (
    check_out_dir,
    check_run_folder,
    load_checkpoint,
    run_lock,
    save_checkpoint,
    write_text,
)
from posenc.experiments.data import load_corpus


# -- files --------------------------------------------------------------------------------------------------
def test_write_replaces_a_link_and_never_follows_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    target = tmp_path / "out" / "results.json"
    target.parent.mkdir()
    target.symlink_to(victim)
    (tmp_path / "out" / "results.json.tmp").symlink_to(victim)  # the old fixed temporary name
    write_text(target, "new")
    assert victim.read_text() == "precious"
    assert not target.is_symlink() and target.read_text() == "new"
    assert oct(target.stat().st_mode & 0o044) != "0o0"  # readable as the umask says, not mkstemp's 0600


def test_a_write_renames_a_unique_temporary_from_the_target_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temporary sits in the target's folder (module docstring, README's Safety): a rename within one
    filesystem is atomic, while one from the system's temporary folder to another filesystem fails with "Invalid
    cross-device link" (review s5: a temporary made in /tmp went unnoticed). Each write gets its own temporary,
    and none is left behind."""
    renames: list[tuple[Path, Path]] = []
    replace = os.replace

    def spy(src: str, dst: str) -> None:
        renames.append((Path(src), Path(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    target = tmp_path / "out" / "results.json"
    write_text(target, "one")
    write_text(target, "two")
    assert [dst for _, dst in renames] == [target, target]
    assert all(src.parent == target.parent and src != target for src, _ in renames)
    assert renames[0][0] != renames[1][0]
    assert target.read_text() == "two" and [p.name for p in target.parent.iterdir()] == ["results.json"]


def test_second_run_on_one_folder_is_refused(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run"):
        with pytest.raises(ValueError, match="another posenc run"):
            with run_lock(tmp_path / "run"):
                pass
    with run_lock(tmp_path / "run"):  # released when the first run ends
        pass


def test_lock_file_link_is_not_followed(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".posenc.lock").symlink_to(victim)
    with pytest.raises(ValueError, match="lock file"):
        with run_lock(tmp_path / "run"):
            pass
    assert victim.read_text() == "precious"


def test_out_dir_checks(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        check_out_dir(afile)
    with pytest.raises(ValueError, match="afile is a file, not a folder"):
        check_out_dir(afile / "sub")
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # creates nothing


def test_dangling_out_link_is_refused_before_any_work(tmp_path: Path) -> None:
    """A link to a missing folder was accepted, then ``mkdir`` failed with "[Errno 17] File exists" after the
    training (no flag named)."""
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "gone")
    with pytest.raises(ValueError, match=r"--out .*out is a link to .*gone, which does not exist"):
        check_out_dir(link)
    with pytest.raises(
        ValueError, match=r"--out .*out/sub cannot be created: .*out is a link to .*gone, which"
    ):
        check_out_dir(link / "sub")  # a dangling link further up: mkdir(parents=True) failed there
    (tmp_path / "gone").mkdir()
    assert check_out_dir(link) == link  # a link to a folder is fine


@pytest.mark.parametrize("damage", ["garbage", "truncated", "not a dict"])
def test_damaged_checkpoint_is_named_with_what_to_do(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "none.pt"
    save_checkpoint(path, encoding="none", state_dict={"w": torch.ones(100)})
    if damage == "garbage":
        path.write_bytes(b"not a checkpoint")
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    else:
        torch.save([1, 2], path)
    with pytest.raises(ValueError) as info:
        load_checkpoint(path)
    msg = str(info.value)
    assert str(path) in msg and "delete it" in msg and "retrain" in msg
    assert "weights_only" not in msg


def test_garbage_config_json_is_named(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match="config.json is not a readable run configuration"):
        check_run_folder(tmp_path, {"a": 1}, write=False)


def test_binary_data_file_refused_and_odd_names_read(tmp_path: Path) -> None:
    (tmp_path / "lib.so").write_bytes(b"\x7fELF\0\0\0" + bytes(range(256)) * 20)
    with pytest.raises(ValueError, match="binary file"):
        load_corpus(tmp_path / "lib.so")
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(12):
        (folder / f"f{i}.txt").write_text("some text " * 50)
    (Path(os.fsdecode(bytes(folder) + b"/caf\xe9.txt"))).write_text("latin-1 name " * 50)
    corpus = load_corpus(folder)
    assert corpus.train_files + corpus.val_files == 13


def test_a_damaged_checkpoint_field_is_one_named_error(tmp_path: Path) -> None:
    from posenc.experiments.checkpoints import reading_checkpoint

    path = tmp_path / "seed0.pt"
    with pytest.raises(
        ValueError, match=r"seed0\.pt is damaged \(KeyError: 'losses'\); delete it and rerun to retrain rope"
    ):
        with reading_checkpoint(path, "retrain rope seed 0"):
            {"state_dict": {}}["losses"]  # noqa: B018
    with reading_checkpoint(path, "retrain rope seed 0"):  # a sound checkpoint passes through
        assert {"losses": [1.0]}["losses"] == [1.0]


def test_a_folder_of_the_other_command_is_named_as_such(tmp_path: Path) -> None:
    """``posenc tasks --out <a compare run>`` listed every field as changed (an 800-character line)."""
    from posenc.experiments.checkpoints import check_run_folder

    check_run_folder(tmp_path, {"eval_layout": "spread", "train": {"steps": 1}}, write=True)
    with pytest.raises(ValueError, match=r"^--out .* holds a posenc compare run, not a posenc tasks one"):
        check_run_folder(tmp_path, {"depths": [0.0, 1.0], "train": {"steps": 1}}, write=True)


def test_a_folder_at_a_checkpoint_path_and_data_that_is_no_file_are_named(tmp_path: Path) -> None:
    (tmp_path / "seed0.pt").mkdir()
    with pytest.raises(ValueError, match=r"seed0\.pt is a folder, not a checkpoint file; delete it"):
        load_checkpoint(tmp_path / "seed0.pt")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # read as a folder with no text before ("no text files found")
    with pytest.raises(ValueError, match=r"--data .*fifo' is neither a file nor a folder"):
        load_corpus(str(fifo))


@pytest.mark.parametrize("name", ["report.md", "results.json"])
def test_a_folder_where_compare_writes_a_file_is_refused_before_training(
    name: str, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both models trained, then the rename failed with a raw "[Errno 21] Is a directory" (review s4)."""
    from posenc.cli import main

    out = tmp_path / "out"
    (out / name).mkdir(parents=True)
    args = ["compare", "--quick", "--no-progress", "--data", str(tiny_corpus), "--encodings", "rope"]
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out / name} is a folder, where the run writes a file" in err and err.count("\n") == 1
    assert not (out / "checkpoints").exists()


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--threads", "100000"],
            "--threads must be between 1 and 1024",
        ),  # set_num_threads(100000) segfaulted
        (["--steps", str(10**20)], "training this model needs about"),  # int64 overflow: a C++ stack dump
        (["--depth", str(10**8)], "training this model needs about"),  # layers built until memory ran out
    ],
)
def test_sizes_the_machine_cannot_train_are_one_line_before_any_file(
    flags: list[str], message: str, tiny_corpus: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from posenc.cli import main

    out = tmp_path / "out"
    args = ["compare", "--quick", "--no-progress", "--data", str(tiny_corpus), "--encodings", "rope"]
    assert main([*args, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not out.exists()


def test_tasks_refuses_a_length_it_cannot_train(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--train-len 10**20 drew one training example for minutes, growing without bound (review s4)."""
    from posenc.cli import main

    out = tmp_path / "out"
    args = ["tasks", "--quick", "--no-progress", "--encodings", "rope", "--tasks", "passkey"]
    assert main([*args, "--train-len", str(10**20), "--out", str(out)]) == 2
    assert "training this model needs about" in capsys.readouterr().err
    assert not out.exists()


def test_the_memory_estimate_counts_score_tensors_only_where_they_are_kept() -> None:
    """SDPA without a bias keeps no (heads, L, L) tensor: a rope run at L = 8192 that fits was refused (review s4);
    off the CPU nothing is checked (the GPU's allocator refuses what does not fit there)."""
    from dataclasses import replace

    from posenc.experiments.specs import check_buildable, training_bytes
    from posenc.experiments.train import TrainConfig

    cfg = replace(TrainConfig(), train_len=8192, batch_size=1)
    assert training_bytes(cfg, "rope") * 10 < training_bytes(cfg, "alibi")
    assert training_bytes(cfg, "rope") == training_bytes(cfg)  # (no (L, L) tensor: sdpa's is_causal)
    huge = replace(TrainConfig(), depth=10**8)
    with pytest.raises(ValueError, match="training this model needs about"):
        check_buildable(["rope"], huge, "cpu")
    check_buildable(["rope"], huge, None)  # (device not known yet, e.g. one of several ranks: not checked)


def test_the_training_estimate_counts_what_each_encoding_keeps_for_backward() -> None:
    """Review s6: one (heads, L, L) float32 tensor per layer was counted for every encoding; FIRE keeps its
    (L, L, width) hidden layer per layer (32 times that at width 32, 4 heads), Kerple two (heads, L, L) steps of its
    formula, T5 an int64 index. The (L, L) part of the estimate per layer and pair, depth 2 against depth 1."""
    from dataclasses import replace

    from posenc.experiments.specs import training_bytes
    from posenc.experiments.train import TrainConfig

    one = TrainConfig(dim=128, depth=1, heads=4, train_len=512, batch_size=1)
    two = replace(one, depth=2)

    def kept(name: str) -> float:  # bytes per (query, key) pair one more layer keeps
        base = training_bytes(two) - training_bytes(one)
        return (training_bytes(two, name) - training_bytes(one, name) - base) / 512**2

    assert kept("rope") == 0
    assert kept("alibi") == 4 * 4 + 4  # the masked bias SDPA keeps (and the masks)
    assert kept("t5") == kept("alibi") + 12  # the bucket index, int64 (and the backward's sorted copy)
    assert kept("kerple") == kept("alibi") + 2 * 4 * 4 + 4
    assert kept("fire") == kept("alibi") + 4 * (32 + 2) + 8  # the hidden layer (L, L, 32) float32, and more
    assert kept("fire:width=8") == kept("fire") - 4 * 24
    assert kept("shaw") == 4 * 4 + 16 + 4  # math: the weights, the key and value terms' int64 indices


def test_a_run_the_old_estimate_admitted_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Review s6: FIRE at L = 8192 (dim 128, depth 2, 4 heads, batch 1) passed at an estimated 2.13 GiB, while its
    two (L, L, 32) float32 hidden layers alone take 16 GiB: the process was killed without a message."""
    from dataclasses import replace

    import posenc.validation
    from posenc.experiments.specs import check_training_memory, training_bytes
    from posenc.experiments.train import TrainConfig

    cfg = TrainConfig(dim=128, depth=2, heads=4, train_len=8192, batch_size=1, steps=10)
    assert training_bytes(cfg, "fire") > 2 * 8192**2 * 32 * 4
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 8 << 30)  # 8 GiB: above the old 2.13
    check_training_memory(cfg, ["rope", "alibi"])  # (about 5 GiB)
    with pytest.raises(
        ValueError, match=r"training fire's model needs about .*L = 8192.*than this machine's 8 GiB"
    ):
        check_training_memory(cfg, ["rope", "fire", "alibi"])
    with pytest.raises(ValueError, match=r"training shaw's model needs about"):
        check_training_memory(replace(cfg, train_len=16384), ["shaw"])


def test_a_bias_the_batch_shares_is_counted_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The positions of a training batch are one shared row: ALiBi's bias and FIRE's hidden layer are (1, ..., L, L)
    whatever the batch. Counted per row, the demo's model at L = 2048 (batch 8) was refused on a 23.5 GiB machine
    (FIRE estimated at 30.5 GiB; 6.1 GiB used). Rows add only per-row tensors: none on sdpa for ALiBi, the
    weights on math for Shaw, the learned bias's gradient on sdpa for FIRE."""
    from dataclasses import replace

    import posenc.validation
    from posenc.experiments.specs import check_training_memory, training_bytes
    from posenc.experiments.train import TrainConfig

    one = TrainConfig(dim=128, depth=4, heads=4, train_len=2048, batch_size=1, steps=1200)
    eight = replace(one, batch_size=8)

    def attention(cfg: TrainConfig, name: str) -> int:  # the (L, L) part
        return training_bytes(cfg, name) - training_bytes(cfg)

    assert attention(eight, "alibi") == attention(one, "alibi")
    assert attention(one, "fire") < attention(eight, "fire") < 3 * attention(one, "fire")  # (not 8x)
    assert attention(eight, "shaw") > 4 * attention(one, "shaw")  # math: (B, H, L, L) weights per row
    monkeypatch.setattr(posenc.validation, "host_memory", lambda: 47 << 29)  # 23.5 GiB
    check_training_memory(eight, ["none", "rope", "alibi", "t5", "kerple", "fire", "shaw"])
