"""Gradescope's run_autograder for a minigrpo assignment: grade the submitted minigrpo.py, function by
function, and write results.json. make_assignment.py --autograder puts it in the zip with autograder.json
(the blanked functions, their graded classes and points) and the student copy it grades against.

Gradescope lays the machine out as ROOT/source (the zip, unpacked), ROOT/submission (what the student
uploaded) and ROOT/results (results.json goes there); ROOT is /autograder, or $AUTOGRADER_ROOT. Each
function scores its points when every test of its class passes and 0 otherwise, with the first failure as
its output. A submission without a minigrpo.py that imports scores 0 with the reason, never a crash.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time


def first_failure(output):
    """The first failing test and its message from pytest's -rf summary, or the last lines of the output."""
    failed = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return failed[0] if failed else "\n".join(output.strip().splitlines()[-5:])


def grade(source, submitted, config):
    """[{'name', 'score', 'max_score', 'output'}] of each graded function, and a general message."""
    tests, message = [], ""
    with tempfile.TemporaryDirectory() as work:
        shutil.copytree(source, work, dirs_exist_ok=True)
        found = os.path.isfile(submitted)
        if found:
            shutil.copy(submitted, os.path.join(work, "minigrpo.py"))
        check = subprocess.run([sys.executable, "-c", "import minigrpo"], cwd=work, capture_output=True, text=True,
                               timeout=600) if found else None
        if not found:
            message = "no minigrpo.py in the submission: upload the file minigrpo.py itself"
        elif check.returncode != 0:
            message = "minigrpo.py does not import: " + (check.stderr.strip().splitlines() or ["?"])[-1]
        for function, (cls, points) in config["functions"].items():
            entry = {"name": function, "score": 0.0, "max_score": float(points), "output": message}
            if not message:
                started = time.time()
                result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider",
                                         f"test_minigrpo.py::{cls}"], cwd=work, capture_output=True, text=True,
                                        timeout=900, env={**os.environ, "COLUMNS": "400"})  # whole messages
                passed = re.search(r"(\d+) passed", result.stdout)
                if result.returncode == 0:
                    entry.update(score=float(points), output=f"all {passed.group(1)} tests of {cls} pass "
                                                             f"({time.time() - started:.0f} s)")
                else:
                    entry["output"] = first_failure(result.stdout + result.stderr)
            tests.append(entry)
    return tests, message


def main():
    root = os.environ.get("AUTOGRADER_ROOT", "/autograder")
    source = os.path.join(root, "source")
    with open(os.path.join(source, "autograder.json")) as f:
        config = json.load(f)
    started = time.time()
    tests, message = grade(source, os.path.join(root, "submission", "minigrpo.py"), config)
    results = {"score": sum(t["score"] for t in tests), "tests": tests, "output": message or
               f"graded {len(tests)} functions", "execution_time": round(time.time() - started)}
    os.makedirs(os.path.join(root, "results"), exist_ok=True)
    with open(os.path.join(root, "results", "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"score {results['score']:g} of {sum(t['max_score'] for t in tests):g}")


if __name__ == "__main__":
    main()
