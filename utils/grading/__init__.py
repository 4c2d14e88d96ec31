"""A sandboxed grader for the course notebooks: ``python -m utils.grading SUBMISSIONS --chapter NN
--out grades.csv [--feedback DIR] [--jobs N]`` (INSTRUCTORS.md has the instructor's view).

Why not only nbgrader: nbgrader runs a submission's code in the same kernel as its tests, so a
submission can rebind a check to always pass, read other students' files or rewrite the gradebook.
Here the trust boundary is a process boundary:

* ``plan``: the TRUSTED solution notebook says what is graded (each graded cell's
  ``check.NAME(symbol, cases=...)`` calls, parsed with ``ast``, and its points); running the
  trusted checks in plan mode records the exact arguments each case hands the student's function.
* ``sandbox`` + ``runner`` + ``jail``: each submission runs in its own process (forked by a
  pre-imported zygote) and scratch folder, behind namespaces, limits and an audit hook. It runs
  its own non-test cells (the graded test cells never run there, so there is no check to rebind),
  calls its functions on those arguments and sends back only the outputs, as JSON + safetensors
  (``codec``; nothing is pickled).
* ``grade``: the same checks run again in the grader, in grade mode, on the returned outputs;
  every case is scored (partial credit), with the check's own diagnosis; tampering, timeouts,
  crashes and the like are flagged.
* ``batch``: up to ``--jobs`` submissions at once (each its own process; grader threads feed,
  watch and score them), an append-safe CSV gradebook, per-student markdown feedback.

The contract a chapter's checks must follow to be gradable is in ``utils/checks/core.py``.
"""
