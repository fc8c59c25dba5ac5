"""Does a student copy hand out a solution? Run inside the copy: every top-level function of every module
of the copy that is not the blanked function itself, put in the blanked function's place, must fail that
function's graded class. Prints one JSON line: {"checked": n, "leaks": [[function, module.candidate], ...]}.

  cd hw1 && python exercises/leak_check.py completion_mask,policy_loss

A candidate is tried where its signature accepts the blanked function's arguments (a function that cannot
be called as the blank cannot pass its class) and where it starts no other program (the test helpers that
run torchrun or a child process: no pure function's answer, and minutes each). exercises/README.md says
what else a copy leaves out.
"""

import importlib.util
import inspect
import json
import os
import signal
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def modules():
    """Every importable module of the copy, by path (one that fails to import is skipped: it cannot be run)."""
    for folder, _, files in os.walk(ROOT):
        for file in sorted(f for f in files if f.endswith(".py")):
            path = os.path.join(folder, file)
            name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
            spec = importlib.util.spec_from_file_location(f"_leak_{name.replace('.', '_')}", path)
            module = importlib.util.module_from_spec(spec)
            try:
                sys.path.insert(0, folder)
                spec.loader.exec_module(module)
            except BaseException:
                continue
            yield name, module


def fits(candidate, blank):
    """Can candidate be called as blank is: its positional arguments and its keyword arguments?"""
    try:
        wanted = inspect.signature(blank).parameters.values()
        args = [p.name for p in wanted if p.default is inspect.Parameter.empty]
        kwargs = {p.name: p.default for p in wanted if p.default is not inspect.Parameter.empty}
        inspect.signature(candidate).bind(*args, **kwargs)
        return True
    except (TypeError, ValueError):
        return False


def main():
    import minigrpo as mg
    import test_minigrpo

    sys.path.insert(0, os.path.join(ROOT, "exercises"))
    from make_assignment import GRADEABLE

    blanks = sys.argv[1].split(",")
    candidates = [(f"{name}.{fname}", f) for name, module in modules() for fname, f in vars(module).items()
                  if inspect.isfunction(f) and f.__module__ == module.__name__ and not fname.startswith("test_")
                  and not hasattr(f, "_fixture_function_marker") and not hasattr(f, "_pytestfixturefunction")]
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError()))
    os.chdir(tempfile.mkdtemp())  # what a candidate writes (a helper called with a test's strings) lands here
    checked, leaks = 0, []
    for blank in blanks:
        original = getattr(mg, blank)
        for label, candidate in candidates:
            if candidate.__name__ == blank or not fits(candidate, original) or "subprocess" in \
                    candidate.__code__.co_names:
                continue
            checked += 1
            setattr(mg, blank, candidate)
            signal.alarm(20)
            try:
                outcome = test_minigrpo._run_graded_class(getattr(test_minigrpo, GRADEABLE[blank]))
            except BaseException:
                outcome = {"failed": 1}
            finally:
                signal.alarm(0)
                setattr(mg, blank, original)
            if outcome["failed"] == 0:
                leaks.append([blank, label])
    print(json.dumps({"checked": checked, "leaks": leaks}))


if __name__ == "__main__":
    main()
