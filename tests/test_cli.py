"""The command line end to end on a tiny phantom release (and its error messages)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrkit.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_pipeline_commands(tmp_path):
    rel, prep = tmp_path / "nih", tmp_path / "prep"
    r = run("phantoms", rel, "--patients", 12, "--size", 32, "--seed", 2)
    assert r.exit_code == 0, r.output
    r = run("validate", rel)
    assert r.exit_code == 0, r.output
    assert "NIH '2017' form" in r.output and "no patient in both" in r.output
    r = run("prepare", rel, "--out", prep, "--size", 32, "--workers", 1)
    assert r.exit_code == 0, r.output
    assert "cache:" in r.output and (prep / "images.npy").exists()
    r = run("split", prep, "--out", tmp_path / "random.csv", "--protocol", "random")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "random.csv").exists() and (tmp_path / "random.json").exists()
    r = run("stats", prep, "--out", tmp_path / "stats")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "stats" / "prevalence.png").exists()
    r = run(
        "train",
        f"data.prepared={prep}",
        f"out={tmp_path / 'run'}",
        "train.epochs=1",
        "data.batch_size=8",
        "train.threads=1",
        "--no-progress",
    )
    assert r.exit_code == 0, r.output
    assert "best validation mean AUROC" in r.output


def test_errors_are_one_clear_line(tmp_path):
    r = run("validate", tmp_path / "nowhere")
    assert r.exit_code == 2 and "release folder not found" in r.output
    r = run("train", "train.optimizer=lion")
    assert r.exit_code == 2 and "train.optimizer must be one of" in r.output
    (tmp_path / "rel").mkdir()
    r = run("prepare", tmp_path / "rel", "--out", tmp_path / "out")
    assert r.exit_code == 2 and "no label file" in r.output


def test_link_loops_and_broken_links_are_bad_files_not_crashes(tmp_path):
    rel = tmp_path / "nih"
    assert run("phantoms", rel, "--patients", 8, "--size", 32, "--seed", 3).exit_code == 0
    folder = next(rel.rglob("*.png")).parent
    loop = folder / "loop.png"
    loop.symlink_to(loop)
    victim = sorted(folder.glob("*.png"))[2]  # a labelled image becomes a broken link
    victim.unlink()
    victim.symlink_to(tmp_path / "elsewhere.png")
    r = run("validate", rel)
    assert r.exit_code == 0, r.output
    assert "2 bad file(s)" in r.output and str(loop) in r.output and str(victim) in r.output
    assert "symbolic link loop" in r.output and "broken symbolic link" in r.output
    r = run("prepare", rel, "--out", tmp_path / "prep", "--size", 32, "--workers", 0)
    assert r.exit_code == 0, r.output
    import pandas as pd

    index = pd.read_csv(tmp_path / "prep" / "index.csv")
    row = index.loc[index["image_id"] == victim.name].iloc[0]
    assert row["status"] == "error" and "broken symbolic link" in row["error"]
    assert (index["status"] == "ok").sum() == len(index) - 1


def test_validate_warns_and_counts_suspicious_boxes(tmp_path):
    import json

    import pandas as pd

    rel = tmp_path / "nih"
    assert run("phantoms", rel, "--patients", 8, "--size", 32, "--seed", 3).exit_code == 0
    labels = pd.read_csv(rel / "Data_Entry_2017.csv")
    normal = labels.loc[labels["Finding Labels"] == "No Finding", "Image Index"].iloc[0]
    sick = labels.loc[labels["Finding Labels"] != "No Finding"].iloc[0]
    boxed, finding = sick["Image Index"], sick["Finding Labels"].split("|")[0]
    box = rel / "BBox_List_2017.csv"
    head = box.read_text().splitlines()[0]
    box.write_text(
        "\n".join(
            [
                head,
                f"{boxed},{finding},-10,5,50,60",
                f"{boxed},{finding},1000,5,50,60",
                f"{normal},Nodule,10,10,20,20",
            ]
        )
        + "\n"
    )
    r = run("validate", rel)
    assert r.exit_code == 0, r.output
    assert "2 box(es) reach outside NIH's 1024x1024 pixel space, lines 2, 3" in r.output
    assert "box(es) name a finding their image's labels lack" in r.output
    assert "4" in r.output.split("labels lack, lines ")[1].splitlines()[0]
    r = run("prepare", rel, "--out", tmp_path / "prep", "--size", 32, "--workers", 0)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "prep" / "dataset.json").read_text())
    assert info["box_report"]["n_outside"] == 2 and 4 in info["box_report"]["unlabelled_lines"]


def test_a_huge_field_is_cut_in_the_one_line_error(tmp_path):
    rel = tmp_path / "nih"
    assert run("phantoms", rel, "--patients", 4, "--size", 32).exit_code == 0
    csv = rel / "Data_Entry_2017.csv"
    lines = csv.read_bytes().split(b"\r\n")
    fields = lines[1].split(b",")
    fields[1] = b"Mass|" + b"Z" * 5_000_000
    csv.write_bytes(b"\r\n".join([lines[0], b",".join(fields), *lines[2:]]))
    r = run("validate", rel)
    assert r.exit_code == 2 and "line 2, field 'Finding Labels'" in r.output
    assert len(r.output) < 1000


def test_empty_label_file_names_the_file(tmp_path):
    rel = tmp_path / "nih"
    rel.mkdir()
    (rel / "Data_Entry_2017.csv").write_text("")
    r = run("validate", rel)
    assert r.exit_code == 2 and str(rel / "Data_Entry_2017.csv") in r.output
    assert "empty" in r.output


@pytest.mark.parametrize(
    "args,option",
    [
        (("predict", "RUN", "x.png", "--batch-size", 0), "--batch-size"),
        (("predict", "RUN", "x.png", "--batch-size", -4), "--batch-size"),
        (("predict", "RUN", "x.png", "--top", -1), "--top"),
        (("predict", "RUN", "x.png", "--show", -1), "--show"),
        (("export", "RUN", "--phantoms", -1), "--phantoms"),
        (("evaluate", "RUN", "--batch-size", 0), "--batch-size"),
        (("evaluate", "RUN", "--bootstrap", -1), "--bootstrap"),
        (("evaluate", "RUN", "--subgroup-bootstrap", -1), "--subgroup-bootstrap"),
        (("compare", "RUN", "--bootstrap", -1), "--bootstrap"),
        (("explain", "RUN", "x.png", "--batch-size", 0), "--batch-size"),
        (("explain", "RUN", "x.png", "--top-k", 0), "--top-k"),
        (("explain", "RUN", "test", "--limit", 0), "--limit"),
        (("localize", "RUN", "--batch-size", 0), "--batch-size"),
        (("localize", "RUN", "--limit", 0), "--limit"),
        (("localize", "RUN", "--threshold", 1.5), "--threshold"),
        (("localize", "RUN", "--threshold", 0), "--threshold"),
        (("phantoms", "OUT", "--patients", 0), "--patients"),
        (("phantoms", "OUT", "--size", 0), "--size"),
        (("phantoms", "OUT", "--size", 31), "--size"),  # the cache's MIN_IMAGE_SIDE
        (("prepare", "REL", "--out", "OUT", "--size", 1), "--size"),
        (("prepare", "REL", "--out", "OUT", "--workers", -1), "--workers"),
        (("prepare", "REL", "--out", "OUT", "--val-fraction", 1.0), "--val-fraction"),
        (("prepare", "REL", "--out", "OUT", "--val-fraction", -0.1), "--val-fraction"),
        (("split", "PREP", "--out", "x.csv", "--val-fraction", 2), "--val-fraction"),
        (("stats", "REL", "--out", "OUT", "--val-fraction", -1), "--val-fraction"),
        (("serve", "RUN", "--port", 70000), "--port"),
        (("serve", "RUN", "--port", -1), "--port"),
    ],
)
def test_numeric_options_out_of_range_say_what_is_wrong(tmp_path, args, option):
    """Checked before anything is read: one line naming the option and its range."""
    args = [tmp_path / a if a in ("RUN", "OUT", "REL", "PREP") else a for a in args]
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert f"Invalid value for '{option}'" in r.output, r.output
    assert "Traceback" not in r.output


def test_phantoms_independent_option(tmp_path):
    import json

    r = run("phantoms", tmp_path / "a", "--patients", 4, "--size", 32, "--independent", "Edema")
    assert r.exit_code == 0, r.output
    settings = json.loads((tmp_path / "a" / "phantoms_manifest.json").read_text())["settings"]
    assert settings["independent"] == ["Edema"]
    r = run("phantoms", tmp_path / "b", "--patients", 4, "--size", 32, "--independent", "Edemaa")
    assert r.exit_code == 2 and "unknown finding" in r.output and "Traceback" not in r.output
    r = run("phantoms", tmp_path / "c", "--like", tmp_path, "--independent", "Edema")
    assert r.exit_code == 2 and "--independent" in r.output
