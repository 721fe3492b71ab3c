"""Hostile input against what cxrkit writes (issue 19, items 3-9, 15, 16).

Each test plays what an adversary or an unlucky user does, through the command line, and
checks the promise: no planted file is followed, no spreadsheet formula is written, no
YAML bomb costs more than a moment, no file of the user's is overwritten or deleted, one
writer per run folder, no evaluation of one checkpoint shown as another's, a run changed
only by its own evaluation, and a one-line error where there was a traceback.

The runs are tiny (32 px phantoms, one epoch of cnn4) and the release carries an image
named like a spreadsheet formula, so every stage (prepare, train, evaluate, predict) reads
back the CSVs it escaped. The denial-of-service cases run in a child process with a time
and an address-space limit, so the suite cannot hang or swap on today's code.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from cxrkit.artefacts import LOCK_FILE, file_sha256
from cxrkit.cli import app

REPO = Path(__file__).resolve().parents[2]
HOSTILE = "=HYPERLINK(1+1)"  # an image name a spreadsheet would run as a formula
runner = CliRunner()
FAST_EVAL = (
    "--bootstrap",
    10,
    "--subgroup-bootstrap",
    10,
    "--gallery",
    0,
    "--reference",
    "nih",
    "--no-progress",
)
TRAIN = (
    "model.name=cnn4",
    "train.epochs=1",
    "train.threads=1",
    "data.batch_size=16",
    "train.amp=none",
    "--no-progress",
)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def ok(result):
    assert result.exit_code == 0, result.output
    return result


def refused(result, *words):
    """Exit code 2 with one ``error:`` line holding ``words``, and no traceback."""
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    assert "Traceback" not in result.output
    for w in words:
        assert w in errors[0], errors[0]
    return errors[0]


def bounded(args, *, seconds=120, memory_gb=4, **kw):
    """``python -m cxrkit.cli ARGS`` in a child with a deadline and an address-space cap."""
    cap = memory_gb << 30

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    return subprocess.run(
        [sys.executable, "-m", "cxrkit.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=seconds,
        preexec_fn=limit,
        env=env,
        **kw,
    )


def _rename_everywhere(root: Path, old: str, new: str) -> None:
    for f in root.rglob("*"):
        if f.suffix in (".csv", ".txt") and f.is_file():
            f.write_text(f.read_text().replace(old, new))
    png = next(root.rglob(old))
    png.rename(png.with_name(new))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    """A 32 px phantom release with one test image named ``=HYPERLINK(1+1)...png``,
    prepared; returns ``(release, prepared, hostile image id)``."""
    from cxrkit.data.phantoms import make_phantoms

    root = tmp_path_factory.mktemp("hostile")
    rel, prep = root / "release", root / "prepared"
    make_phantoms(rel, n_patients=24, image_size=32, seed=1, progress=False)
    old = (rel / "test_list.txt").read_text().split()[0]
    _rename_everywhere(rel, old, HOSTILE + old)
    ok(cli("prepare", rel, "--out", prep, "--size", 32, "--workers", 0))
    return rel, prep, HOSTILE + old


@pytest.fixture(scope="module")
def run32(hostile, tmp_path_factory):
    """One epoch of cnn4 on the hostile prepared folder (treat as read-only: copy it)."""
    out = tmp_path_factory.mktemp("run32") / "run"
    ok(cli("train", f"data.prepared={hostile[1]}", f"out={out}", *TRAIN))
    return out


def copy_run(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


# -- 3: temporaries are created exclusively ------------------------------------------------
def test_a_symlink_planted_at_the_temporary_name_is_not_followed(run32, hostile, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    # the names cxrkit used to write through (".{stem}.{pid}.tmp{suffix}"): CliRunner runs
    # in this process, so this is the pid a predictable name would carry
    for name in (f".p.{os.getpid()}.tmp.csv", f".p.{os.getpid()}.tmp"):
        (out.parent / name).symlink_to(victim)
    image = next(hostile[0].rglob("*.png"))
    ok(cli("predict", run32, image, "--out", out))
    assert victim.read_text() == "precious"
    assert out.is_file() and not out.is_symlink() and "image,error" in out.read_text()
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # as readable as open() makes it


# -- 4: CSV formula injection -----------------------------------------------------------------
def test_csv_cells_that_start_a_formula_are_escaped(run32, hostile, tmp_path, monkeypatch):
    _, prep, name = hostile
    # prepare escaped the id in its tables, and read them back for training (run32 exists)
    assert f"'{name}" in (prep / "labels.csv").read_text()
    out = tmp_path / "eval"
    ok(cli("evaluate", run32, "--out", out, "--no-report", *FAST_EVAL))
    for table in ("predictions_test.csv", "subgroups.csv", "auroc.csv"):
        with open(out / table, newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    assert cell[:1] not in ("=", "+", "@", "\t", "\r") and not (
                        cell[:1] == "-" and not _number(cell)
                    ), (table, cell)
    text = (out / "predictions_test.csv").read_text()
    assert f"'{name}," in text
    # cxrkit's own reader undoes it: the id is the file's name again
    from cxrkit.artefacts import read_csv

    assert name in set(read_csv(out / "predictions_test.csv", dtype={"image_id": str})["image_id"])
    # predict's CSV, the other table meant for people
    image = next(hostile[0].rglob(name))
    shutil.copy(image, tmp_path / name)
    monkeypatch.chdir(tmp_path)  # `cxrkit predict RUN '=HYPERLINK(1+1)...png'`
    ok(cli("predict", run32, name, "--out", "p.csv"))
    first = (tmp_path / "p.csv").read_text().splitlines()[1]
    assert first.startswith(f"'{name},"), first


def _number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_csv_escaping_is_reversible_and_leaves_numbers(tmp_path):
    from cxrkit.artefacts import read_csv, write_csv

    cells = ["=1+1", "+A1", "-", "@a", "\tx", "'=x", "''=y", "'plain", "-0.5", "+1e-3", "plain", ""]
    table = pd.DataFrame({"text": cells, "number": [-0.5] * len(cells)})
    write_csv(table, tmp_path / "t.csv")
    raw = pd.read_csv(tmp_path / "t.csv", dtype=str, keep_default_na=False)
    assert list(raw["text"][:7]) == ["'=1+1", "'+A1", "'-", "'@a", "'\tx", "''=x", "'''=y"]
    assert list(raw["text"][7:]) == ["'plain", "-0.5", "+1e-3", "plain", ""]
    assert set(raw["number"]) == {"-0.5"}
    back = read_csv(tmp_path / "t.csv", dtype={"text": str}, keep_default_na=False)
    assert list(back["text"]) == cells and list(back["number"]) == [-0.5] * len(cells)
    # a carriage return first is escaped too (pandas writes it unquoted, so a reader splits
    # the row there; but no spreadsheet sees a formula)
    write_csv(pd.DataFrame({"text": ["\r=1+1"]}), tmp_path / "cr.csv")
    assert (tmp_path / "cr.csv").read_bytes() == b"text\n'\r=1+1\n"


# -- 5: YAML alias bomb ---------------------------------------------------------------------
BOMB = textwrap.dedent("""\
    data:
      findings: &i [&h [&g [&f [&e [&d [&c [&b [&a ["Mass","Mass","Mass","Mass","Mass","Mass",
        "Mass","Mass","Mass"],*a,*a,*a,*a,*a,*a,*a,*a],*b,*b,*b,*b,*b,*b,*b,*b],*c,*c,*c,*c,
        *c,*c,*c,*c],*d,*d,*d,*d,*d,*d,*d,*d],*e,*e,*e,*e,*e,*e,*e,*e],*f,*f,*f,*f,*f,*f,*f,*f],
        *g,*g,*g,*g,*g,*g,*g,*g],*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    (tmp_path / "bomb.yaml").write_text(BOMB)
    r = bounded(["train", tmp_path / "bomb.yaml", "--show-config"], seconds=60, cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "aliases expand to more than 100,000 values" in r.stderr and "bomb.yaml" in r.stderr
    # the same in an override, and an alias that contains itself
    r = bounded(["train", "data.findings=&a [*a, *a]", "--show-config"], seconds=60)
    assert r.returncode == 2 and "refers to the value that contains it" in r.stderr, r.stderr


def test_quote_cuts_before_it_builds(tmp_path):
    code = (
        "from cxrkit.messages import quote\n"
        "a = ['Mass'] * 9\n"
        "for _ in range(9):\n    a = [a] * 9\n"
        "print(quote(a))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env
    )
    assert r.returncode == 0 and len(r.stdout) < 200 and "(9 items)" in r.stdout, r.stdout


def test_non_finite_numbers_are_refused(tmp_path):
    refused(cli("train", "train.lr=.nan", "--show-config"), "train.lr", "finite")
    refused(cli("train", "data.box_fold=.inf", "--show-config"), "data.box_fold", "finite")


# -- 6: only a run folder is written into, only what train wrote is deleted -----------------
def test_training_refuses_a_folder_of_the_users(hostile, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "metrics.csv").write_text("my,own\n1,2\n")
    (home / "run.json").write_text('{"mine": true}')
    for fresh in ((), ("--fresh",)):
        refused(
            cli("train", f"data.prepared={hostile[1]}", f"out={home}", *TRAIN, *fresh),
            "not a cxrkit run folder",
            "nothing was written",
        )
    assert sorted(p.name for p in home.iterdir()) == ["metrics.csv", "run.json"]
    assert (home / "metrics.csv").read_text() == "my,own\n1,2\n"


def test_fresh_deletes_only_what_train_wrote(run32, hostile, tmp_path):
    run = copy_run(run32, tmp_path / "run")
    (run / "tb" / "my_notes.txt").write_text("keep me")
    (run / "notes.md").write_text("keep me too")
    old_events = sorted((run / "tb").glob("events.out.tfevents.*"))
    assert old_events
    ok(cli("train", f"data.prepared={hostile[1]}", f"out={run}", *TRAIN, "--fresh"))
    assert (run / "tb" / "my_notes.txt").read_text() == "keep me"
    assert (run / "notes.md").read_text() == "keep me too"
    assert not any(p.exists() for p in old_events) and (run / "best.pt").exists()
    assert not (run / LOCK_FILE).exists()  # released cleanly


# -- 7: one writer per run folder -------------------------------------------------------------
HOLD = (
    "import sys, time\n"
    "from cxrkit.artefacts import folder_lock\n"
    "with folder_lock(sys.argv[1], 'cxrkit train'):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(120)\n"
)


def test_a_second_writer_is_refused_with_the_holders_pid(run32, hostile, tmp_path):
    run = copy_run(run32, tmp_path / "run")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = file_sha256(run / "last.pt")
        line = refused(
            cli("train", f"data.prepared={hostile[1]}", f"out={run}", *TRAIN, "train.epochs=2"),
            f"pid {holder.pid}",
            "cxrkit train",
        )
        assert "nothing was written" in line
        refused(cli("evaluate", run, "--no-report", *FAST_EVAL), f"pid {holder.pid}")
        assert file_sha256(run / "last.pt") == before and not (run / "eval").exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding it: a stale lock file stays
        holder.wait(timeout=30)
    assert str(holder.pid) in (run / LOCK_FILE).read_text()
    ok(cli("train", f"data.prepared={hostile[1]}", f"out={run}", *TRAIN, "train.epochs=2"))
    assert file_sha256(run / "last.pt") != before and not (run / LOCK_FILE).exists()


# -- 8 and 9: an evaluation belongs to one checkpoint, and changes only its own run ---------
def test_compare_does_not_reuse_an_evaluation_of_an_older_checkpoint(run32, hostile, tmp_path):
    a, b = copy_run(run32, tmp_path / "a"), copy_run(run32, tmp_path / "b")
    for run in (a, b):
        ok(cli("evaluate", run, "--no-report", *FAST_EVAL))
    ok(
        cli("train", f"data.prepared={hostile[1]}", f"out={a}", *TRAIN, "train.seed=7", "--fresh")
    )  # trained again: another best.pt, the old eval/ still there
    metrics = a / "eval" / "test" / "metrics.json"
    assert json.loads(metrics.read_text())["checkpoint_sha256"] != file_sha256(a / "best.pt")
    refused(
        cli(
            "compare",
            a,
            b,
            "--out",
            tmp_path / "cmp",
            "--bootstrap",
            10,
            "--no-evaluate-missing",
            "--no-progress",
        ),
        "another checkpoint",
        "sha256",
    )
    ok(cli("compare", a, b, "--out", tmp_path / "cmp", "--bootstrap", 10, "--no-progress"))
    assert json.loads(metrics.read_text())["checkpoint_sha256"] == file_sha256(a / "best.pt")


def test_an_evaluation_elsewhere_leaves_the_runs_thresholds(run32, hostile, tmp_path):
    run = copy_run(run32, tmp_path / "run")
    other = shutil.copytree(hostile[1], tmp_path / "other")
    assert not (run / "thresholds.json").exists()
    ok(
        cli(
            "evaluate",
            run,
            "--prepared",
            other,
            "--out",
            tmp_path / "elsewhere",
            "--no-report",
            *FAST_EVAL,
        )
    )
    assert (tmp_path / "elsewhere" / "thresholds.json").exists()
    assert not (run / "thresholds.json").exists()
    ok(cli("evaluate", run, "--prepared", other, "--no-report", *FAST_EVAL))  # other data
    assert not (run / "thresholds.json").exists()
    ok(cli("evaluate", run, "--no-report", *FAST_EVAL))  # the run's own evaluation
    assert (run / "thresholds.json").exists()


# -- 15: a validation AUROC that is NaN throughout ---------------------------------------------
def test_evaluate_a_run_whose_validation_auroc_was_always_undefined(hostile, tmp_path):
    prep = hostile[1]
    labels = pd.read_csv(prep / "labels.csv").merge(
        pd.read_csv(prep / "split.csv")[["image_id", "split"]], on="image_id"
    )
    counts = labels.groupby("split").sum(numeric_only=True)
    finding = next(
        f
        for f in counts.columns
        if f
        in (
            "Atelectasis",
            "Cardiomegaly",
            "Effusion",
            "Infiltration",
            "Mass",
            "Nodule",
            "Pneumonia",
            "Pneumothorax",
            "Consolidation",
            "Edema",
            "Emphysema",
            "Fibrosis",
            "Pleural_Thickening",
            "Hernia",
        )
        and counts.loc["val", f] == 0
        and counts.loc["train", f] > 0
        and counts.loc["test", f] > 0
    )
    run = tmp_path / "run"
    r = ok(
        cli("train", f"data.prepared={prep}", f"out={run}", *TRAIN, f"data.findings=[{finding}]")
    )
    ok(cli("evaluate", run, *FAST_EVAL))  # the report's training-curve plot died here
    assert (run / "eval" / "test" / "report.html").exists()
    assert (run / "eval" / "test" / "figures" / "training_curves.png").exists()
    # and the run's records say "undefined" in valid JSON, not NaN
    assert "best validation mean AUROC undefined" in r.output
    run_json = json.loads(
        (run / "run.json").read_text(), parse_constant=lambda c: pytest.fail(f"run.json holds {c}")
    )
    assert run_json["best_val_mean_auroc"] is None


# -- 16: malformed checkpoints, options and releases -----------------------------------------
def test_a_checkpoint_whose_config_is_a_string(run32, hostile, tmp_path):
    import torch

    ck = torch.load(run32 / "best.pt", weights_only=True)
    ck["config"] = "hello"
    (tmp_path / "bad").mkdir()
    torch.save(ck, tmp_path / "bad" / "best.pt")
    image = next(hostile[0].rglob("*.png"))
    for args in (
        ("predict", tmp_path / "bad", image),
        ("export", tmp_path / "bad"),
        ("evaluate", tmp_path / "bad", "--no-report", *FAST_EVAL),
    ):
        refused(cli(*args), "best.pt", "'config'", "'hello'")


def test_phantoms_of_an_absurd_size_are_refused_at_once(tmp_path):
    r = bounded(["phantoms", tmp_path / "rel", "--size", 100000], seconds=60)
    assert r.returncode == 2 and "4096" in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "rel").exists()
    from cxrkit.data.phantoms import make_phantoms

    with pytest.raises(ValueError, match="from 16 to 4096"):
        make_phantoms(tmp_path / "rel", n_patients=2, image_size=100000, progress=False)


def test_a_phantom_release_without_boxes_prepares(tmp_path):
    ok(cli("phantoms", tmp_path / "rel", "--patients", 5, "--seed", 2, "--size", 32))
    assert len((tmp_path / "rel" / "BBox_List_2017.csv").read_text().splitlines()) == 1
    ok(cli("prepare", tmp_path / "rel", "--out", tmp_path / "prep", "--size", 32, "--workers", 0))


def test_identical_training_images_do_not_flag_themselves(hostile, tmp_path):
    rel = shutil.copytree(hostile[0], tmp_path / "same")
    pngs = sorted(rel.rglob("*.png"))
    for p in pngs[1:]:
        shutil.copy(pngs[0], p)
    ok(cli("prepare", rel, "--out", tmp_path / "prep", "--size", 32, "--workers", 0))
    ok(cli("train", f"data.prepared={tmp_path / 'prep'}", f"out={tmp_path / 'run'}", *TRAIN))
    ok(cli("predict", tmp_path / "run", pngs[0], "--out", tmp_path / "p.json"))
    row = json.loads((tmp_path / "p.json").read_text())["predictions"][0]
    assert row["ood_flag"] is False and row["ood_score"] < 1, row
