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
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRADEABLE = {  # function in minigrpo.py: its test class in test_minigrpo.py
    "completion_mask": "TestCompletionMask",
    "extract_answer": "TestExtractAnswer",
    "math_reward": "TestMathReward",
    "group_advantages": "TestGroupAdvantages",
    "logprobs_and_entropy": "TestLogprobsAndEntropy",
    "entropy_advantage": "TestEntropyAdvantage",
    "top_entropy_mask": "TestTopEntropyMask",
    "policy_loss": "TestPolicyLoss",
    "gae_advantages": "TestGaeAdvantages",
}
COPIED = ["eval.py", "test_minigrpo.py", "requirements.txt", ".ci", "bench", "docs", "exercises", "LICENSE",
          "CITATION.cff"]


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
    parser.add_argument("--list", action="store_true", help="list the functions that can be blanked")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(f"{name:<20} graded by test_minigrpo.py::{cls}" for name, cls in GRADEABLE.items()))
        return 0
    names = [n.strip() for n in args.blank.split(",") if n.strip()]
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
               not os.path.isdir(args.out) else None)
    if problem:
        print(f"make_assignment: error: {problem}", file=sys.stderr)
        return 2
    student = blank(open(os.path.join(ROOT, "minigrpo.py")).read(), names)
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"make_assignment: error: --out {args.out!r} cannot be made: {e.strerror or e}", file=sys.stderr)
        return 2
    with open(os.path.join(args.out, "minigrpo.py"), "w") as f:
        f.write(student)
    for name in COPIED:
        source, target = os.path.join(ROOT, name), os.path.join(args.out, name)
        if os.path.isdir(source):
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        elif os.path.isfile(source):
            shutil.copy(source, target)
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = student_readme(f.read())
    with open(os.path.join(args.out, "README.md"), "w") as f:
        f.write(readme)
    command = grading_command(names)
    with open(os.path.join(args.out, "ASSIGNMENT.md"), "w") as f:
        f.write("# Assignment\n\nWrite the body of each of these functions in minigrpo.py; its docstring says "
                "what it takes and returns:\n\n" + "".join(f"- `{n}`\n" for n in names) +
                f"\nGrade your work:\n\n```bash\n{command}\n```\n\nEach test class calls only its own function, "
                "so a failure points at the function it names.\n")
    print(f"wrote {args.out}: minigrpo.py with {', '.join(names)} blanked")
    print(f"grade with: cd {args.out} && {command}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
