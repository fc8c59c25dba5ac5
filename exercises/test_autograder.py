"""make_assignment.py --autograder: the zip, unpacked as Gradescope lays it out (source, submission,
results), grades a blank copy 0, the reference full marks, one wrong function exactly its points less,
and a submission that does not import 0 with the reason. Instructor-only (it grades the reference)."""

import json
import os
import subprocess
import sys
import zipfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import make_assignment  # noqa: E402

REFERENCE = open(os.path.join(os.path.dirname(HERE), "minigrpo.py")).read()


@pytest.fixture(scope="module")
def autograder(tmp_path_factory):
    root = tmp_path_factory.mktemp("autograder")
    assert make_assignment.main(["--blank", "group_advantages,completion_mask", "--out", str(root / "copy"),
                                 "--autograder", str(root / "ag.zip"), "--points",
                                 "group_advantages=2,completion_mask=0.5"]) == 0
    with zipfile.ZipFile(root / "ag.zip") as z:
        z.extractall(root / "source")
        assert {"setup.sh", "run_autograder", "autograder.json", "minigrpo.py", "test_minigrpo.py",
                "exercises/autograde.py"} <= set(z.namelist())
        assert z.getinfo("run_autograder").external_attr >> 16 & 0o111  # executable
    for name in ("setup.sh", "run_autograder"):
        os.chmod(root / "source" / name, 0o755)  # (extractall drops the mode; Gradescope keeps it)
    return root


def grade(root, files):
    """Run run_autograder on a submission of files {name: text}; results.json."""
    submission = root / "submission"
    if submission.exists():
        for f in submission.iterdir():
            f.unlink()
    submission.mkdir(exist_ok=True)
    for name, text in files.items():
        (submission / name).write_text(text)
    env = {**os.environ, "AUTOGRADER_ROOT": str(root),
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    result = subprocess.run([str(root / "source" / "run_autograder")], env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads((root / "results" / "results.json").read_text())


def scores(results):
    return {t["name"]: t["score"] for t in results["tests"]}


def test_the_reference_scores_full_marks_and_results_json_has_gradescopes_fields(autograder):
    results = grade(autograder, {"minigrpo.py": REFERENCE})
    assert results["score"] == 2.5 and scores(results) == {"group_advantages": 2.0, "completion_mask": 0.5}
    for test in results["tests"]:
        assert {"name", "score", "max_score", "output"} <= test.keys() and "pass" in test["output"]
    assert [t["max_score"] for t in results["tests"]] == [2.0, 0.5]


def test_the_blank_copy_scores_0_and_one_wrong_function_loses_exactly_its_points(autograder):
    blank = grade(autograder, {"minigrpo.py": (autograder / "copy" / "minigrpo.py").read_text()})
    assert blank["score"] == 0 and all("NotImplementedError" in t["output"] or "FAILED" in t["output"]
                                       for t in blank["tests"])
    wrong = REFERENCE.replace("centered = centered / (grouped.std(dim=1, keepdim=True) + eps)",
                              "centered = centered / (grouped.std(dim=1, unbiased=False, keepdim=True)"
                              " + eps)")
    assert wrong != REFERENCE
    results = grade(autograder, {"minigrpo.py": wrong})
    assert scores(results) == {"group_advantages": 0.0, "completion_mask": 0.5} and results["score"] == 0.5
    output = results["tests"][0]["output"]
    assert output.startswith("FAILED test_minigrpo.py::TestGroupAdvantages") and "G - 1" in output


@pytest.mark.parametrize("files, reason", [({"minigrpo.py": "def broken(:\n"}, "minigrpo.py does not import"),
                                           ({"solution.py": REFERENCE}, "no minigrpo.py in the submission")])
def test_a_submission_that_does_not_import_scores_0_with_the_reason(autograder, files, reason):
    results = grade(autograder, files)
    assert results["score"] == 0 and all(t["output"].startswith(reason) for t in results["tests"])
    assert results["output"].startswith(reason)
