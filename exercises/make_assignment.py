"""Write a student copy of minigrpo with some functions blanked, and the command that grades them.

  python exercises/make_assignment.py --blank group_advantages,entropy_advantage --out DIR
  python exercises/make_assignment.py --list

Each blanked function keeps its signature and docstring (shapes, equation numbers); its body
becomes `raise NotImplementedError`. DIR gets the blanked minigrpo.py, the rest of the project
the tests need, and ASSIGNMENT.md with the grading command. Each function is graded by its own
test class in test_minigrpo.py, which calls only that function.
"""

import argparse
import ast
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRADEABLE = {  # function in minigrpo.py: its test class in test_minigrpo.py, in exercises/README.md's order
    "completion_mask": "TestCompletionMask",
    "extract_answer": "TestExtractAnswer",
    "math_reward": "TestMathReward",
    "group_advantages": "TestGroupAdvantages",
    "logprobs_and_entropy": "TestLogprobsAndEntropy",
    "entropy_advantage": "TestEntropyAdvantage",
    "policy_loss": "TestPolicyLoss",
    "gae_advantages": "TestGaeAdvantages",
    "top_entropy_mask": "TestTopEntropyMask",
}
COPIED = ["eval.py", "test_minigrpo.py", "requirements.txt", ".ci", "bench", "docs", "exercises", "LICENSE",
          "CITATION.cff"]
INSTRUCTOR_ONLY = ["wrong_answers.py", "test_wrong_answers.py",  # wrong answers a line from right
                   "test_autograder.py",  # grades the reference implementation, which a copy has not
                   "logprob_memory.py"]  # its naive oracle is a working logprobs_and_entropy


def blank(source, names):
    """source with the bodies of the named top-level functions replaced by raise NotImplementedError."""
    lines = source.splitlines(keepends=True)
    functions = {node.name: node for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)}
    for node in sorted((functions[n] for n in names), key=lambda n: -n.lineno):  # bottom-up keeps line numbers
        docstring = node.body[0]
        if not (isinstance(docstring, ast.Expr) and isinstance(docstring.value, ast.Constant)):
            raise ValueError(f"{node.name} has no docstring to keep")
        indent = " " * node.body[0].col_offset
        stub = f'{indent}raise NotImplementedError("{node.name}: your code here (the docstring says what it returns)")\n'
        lines[docstring.end_lineno : node.end_lineno] = [stub]
    return "".join(lines)


def student_readme(text):
    """The project's README for the student copy: the experiments stay in the project (their results would
    be large to copy and are not needed to learn), so their section becomes one line and links to them text."""
    text = re.sub(r"## Results\n.*?(?=\n## )", "## Results\n\nThe experiments, their results and "
                  "their pages are in the project's repository; this copy holds the code, the tests and the "
                  "exercises.\n", text, flags=re.S)
    text = re.sub(r"!\[[^\]]*\]\(experiments/[^)]*\)\n", "", text)  # the default run's curves stay there too
    return re.sub(r"\[([^\]]+)\]\((experiments/[^)]*)\)", r"\1", text)


def grading_command(names):
    return "python -m pytest -q " + " ".join(f"test_minigrpo.py::{GRADEABLE[n]}" for n in names)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blank", default="", help="comma-separated functions to blank")
    parser.add_argument("--out", default="", help="folder for the student copy (must not exist, or be empty)")
    parser.add_argument("--autograder", default="", help="also write a Gradescope autograder, a .zip")
    parser.add_argument("--points", default="", help="autograder points per function, name=points,... "
                                                     "(default: 1 each)")
    parser.add_argument("--list", action="store_true", help="list the functions that can be blanked")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{name:<20} graded by test_minigrpo.py::{cls}" for name, cls in GRADEABLE.items()))
        return 0
    names = [n.strip() for n in args.blank.split(",") if n.strip()]
    try:
        points = {n: 1.0 for n in names} | {k.strip(): float(v) for k, v in (p.split("=") for p in
                                                                             args.points.split(",") if p.strip())}
    except ValueError:
        points = None
    unknown = [n for n in names if n not in GRADEABLE]
    twice = sorted({n for n in names if names.count(n) > 1})
    out = os.path.realpath(args.out) + os.sep if args.out else ""
    inside = [name for name in COPIED if out.startswith(os.path.realpath(os.path.join(ROOT, name)) + os.sep)]
    problem = (f"unknown function(s) {', '.join(unknown)}; choose from {', '.join(GRADEABLE)}" if unknown else
               "--blank needs at least one function" if not names else
               f"--blank names {', '.join(twice)} twice" if twice else
               "--out is required" if not args.out else
               f"--out {args.out!r} is inside {inside[0]}/, which the copy copies" if inside else
               f"--out {args.out!r} exists and is not empty" if os.path.isdir(args.out) and os.listdir(args.out) else
               f"--out {args.out!r} is a file or a broken link" if os.path.lexists(args.out) and
               not os.path.isdir(args.out) else
               "--points must be name=points,... with the blanked functions' names" if points is None or
               set(points) != set(names) or any(p < 0 for p in points.values()) else
               f"--autograder {args.autograder!r} must end in .zip" if args.autograder and
               not args.autograder.endswith(".zip") else None)
    if problem:
        print(f"make_assignment: error: {problem}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"make_assignment: error: --out {args.out!r} cannot be made: {e.strerror or e}", file=sys.stderr)
        return 2
    write_copy(args.out, names)
    command = grading_command(names)
    print(f"wrote {args.out}: minigrpo.py with {', '.join(names)} blanked")
    print(f"grade with: cd {args.out} && {command}")
    if args.autograder:
        write_autograder(args.autograder, args.out, {n: (GRADEABLE[n], points[n]) for n in names})
        print(f"wrote {args.autograder}: upload it as the Gradescope assignment's autograder")
    return 0


def write_copy(out, names):
    """The student copy in out: minigrpo.py with names blanked, what the tests need, the README without the
    experiments, ASSIGNMENT.md (setup, the exercises, grading, what to hand in) and the recorded default
    run, so that each question can be answered from files."""
    with open(os.path.join(out, "minigrpo.py"), "w") as f:
        f.write(blank(open(os.path.join(ROOT, "minigrpo.py")).read(), names))
    for name in COPIED:
        source, target = os.path.join(ROOT, name), os.path.join(out, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", *INSTRUCTOR_ONLY))
        elif os.path.isfile(source):
            shutil.copy(source, target)
    recorded = os.path.join(ROOT, "experiments", "default_run")
    if os.path.isdir(recorded):  # (a copy made from a copy has it already)
        shutil.copytree(recorded, os.path.join(out, "recorded_run"), ignore=shutil.ignore_patterns("table.py"))
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = student_readme(f.read())
    with open(os.path.join(out, "README.md"), "w") as f:
        f.write(readme)
    exercises = os.path.join(out, "exercises", "README.md")
    with open(exercises) as f:  # the students' exercises: without the instructor's sections
        text = re.sub(r"## (For the instructor|Instructor notes|Grading on Gradescope).*?(?=\n## |\Z)", "",
                      f.read(), flags=re.S)
    with open(exercises, "w") as f:
        f.write(text.rstrip() + "\n")
    with open(os.path.join(out, "ASSIGNMENT.md"), "w") as f:
        f.write(assignment_text(names))


def assignment_text(names):
    readme = open(os.path.join(ROOT, "README.md")).read()
    setup = re.search(r"^(python3 -m venv[^\n]*) && python -m pytest -q$", readme, flags=re.M)
    ordered = [n for n in GRADEABLE if n in names]  # exercises/README.md's order, its numbers
    numbers = {n: i + 1 for i, n in enumerate(GRADEABLE)}
    return ("# Assignment\n\nSet up once, in this folder (a virtual environment with torch and the tests' "
            "packages):\n\n```bash\n"
            + (setup.group(1) if setup else "pip install -r requirements.txt")
            + "\n```\n\nWrite the body of each of these functions in `minigrpo.py`; its docstring says what it "
            "takes, returns and which conventions the tests check. The exercises (`exercises/README.md`, same "
            "numbers) ask questions about each:\n\n"
            + "".join(f"{numbers[n]}. `{n}`: exercise {numbers[n]}\n" for n in ordered)
            + f"\nGrade your work:\n\n```bash\n{grading_command(ordered)}\n```\n\nEach test class calls only its "
            "own function, so a failure points at the function it names. The questions can be answered from "
            "`recorded_run/` (the default command's run: `metrics.jsonl`, `samples.jsonl`, "
            "`eval_samples.jsonl`, `report.html`) or by training (`python minigrpo.py`, minutes on a laptop).\n\n"
            "Hand in `minigrpo.py` (the one file; an autograder grades each function by its class).\n")


def write_autograder(path, copy, functions):
    """A Gradescope autograder: the student copy in copy, autograder.json ({function: (class, points)}),
    setup.sh installing the requirements, and run_autograder calling exercises/autograde.py."""
    import zipfile

    setup = ("#!/usr/bin/env bash\nset -e\ncd /autograder/source\n"
             "pip3 install torch==2.13.0 -r requirements.txt pytest hypothesis math-verify\n")
    run = ("#!/usr/bin/env bash\ncd \"${AUTOGRADER_ROOT:-/autograder}/source\"\n"
           "exec python3 exercises/autograde.py\n")
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for folder, _, files in os.walk(copy):
            for file in files:
                full = os.path.join(folder, file)
                if "__pycache__" not in full:
                    z.write(full, os.path.relpath(full, copy))
        z.writestr("autograder.json", json.dumps({"functions": functions}, indent=2))
        for name, text in (("setup.sh", setup), ("run_autograder", run)):
            info = zipfile.ZipInfo(name)
            info.external_attr = 0o755 << 16  # executable, as Gradescope runs them
            z.writestr(info, text)


if __name__ == "__main__":
    sys.exit(main())
