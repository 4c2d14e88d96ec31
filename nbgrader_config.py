"""nbgrader configuration for instructors grading Demystify with nbgrader.

Run nbgrader from the repository root and keep the course (gradebook.db, release/, submitted/,
autograded/, feedback/) in a directory of its own, outside the repo:

    export DEMYSTIFY_COURSE_DIR=~/demystify-course
    nbgrader generate_assignment 01_tensorized_attention   # gradebook entry + release/ copy
    nbgrader collect 01_tensorized_attention               # or copy files to submitted/<student>/<id>/
    nbgrader autograde 01_tensorized_attention
    nbgrader generate_feedback 01_tensorized_attention

The assignments ARE the repo's solutions/NN_slug/ folders: nbgrader reads them in place, so there is
no second copy to keep in sync. The student notebooks that students get are the committed
chapters/ (made by `python -m utils.build`, with nbgrader's own preprocessors and the same stub, so
they match what `generate_assignment` releases). nbgrader runs submitted code in the grading
kernel without a sandbox; for untrusted submissions use `python -m utils.grading` instead.

Every option below exists in nbgrader 0.9.6 (tests/test_build.py checks that).
"""
import os

from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor
from nbgrader.preprocessors import ClearHiddenTests, GetGrades

from utils.grading.nbgrader_plugins import ClearHiddenTracebacks

c = get_config()  # noqa: F821  (injected by traitlets when it loads this file)

REPO = os.path.dirname(os.path.abspath(__file__))

# --- where things live ------------------------------------------------------------------------

# The course directory (gradebook, submissions, feedback) stays out of the repo so student work is
# never committed. Unset: nbgrader's own default, the current directory.
if os.environ.get("DEMYSTIFY_COURSE_DIR"):
    c.CourseDirectory.root = os.path.abspath(os.path.expanduser(os.environ["DEMYSTIFY_COURSE_DIR"]))

# nbgrader expects <root>/source/<assignment>/<notebook>.ipynb. An absolute step directory is
# supported by CourseDirectory.format_path, so point "source" straight at our solutions/
# (solutions/NN_slug/NN_slug.ipynb: assignment NN_slug, notebook NN_slug).
c.CourseDirectory.source_directory = os.path.join(REPO, "solutions")
# release_directory keeps its default (<root>/release): pointing it at chapters/ would let
# generate_assignment overwrite the committed, normalised chapters with its own unnormalised copy.

# Files in a submission that are never copied into the autograded directory, where the kernel
# runs: a submitted utils/ package, stray modules or compiled extensions would shadow our utils
# (cwd comes first on sys.path). nbgrader's defaults are kept.
c.CourseDirectory.ignore = [
    ".ipynb_checkpoints",
    "*.pyc",
    "__pycache__",
    "feedback",  # nbgrader default
    "utils",
    "*.py",
    "*.so",
    "*.pyd",
    "questions.json",  # the question bank (answer keys) beside each solution: never released or copied
]

# --- release ----------------------------------------------------------------------------------

# nbgrader's default Python stub, set explicitly because utils/build.py uses the same one and the
# two releases must agree.
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A hidden-test region outside an autograded-test cell would go to students uncleared; fail instead.
c.ClearHiddenTests.enforce_metadata = True

# --- autograde --------------------------------------------------------------------------------

# Checks run the student's function on the bundled models and several seeded inputs; 120 s per
# cell leaves room on a slow CPU (nbgrader's default is 30 s). ExecutePreprocessor is set as well
# for `nbgrader validate` / nbconvert runs that use the plain executor.
c.Execute.timeout = 120
c.ExecutePreprocessor.timeout = 120
# Execute.allow_errors is left alone: nbgrader hard-wires it to True (it is not even configurable)
# so one failing cell does not stop the rest of a submission from being graded.

# A student who deleted a test cell gets it back (and fails or passes it) instead of silently
# losing those points from the notebook.
c.OverwriteCells.add_missing_cells = True

# Late penalties: nbgrader's default (AssignLatePenalties with penalty_method "none"); a course
# that wants one sets LateSubmissionPlugin.penalty_method in its own course-dir nbgrader_config.py.

# --- feedback ---------------------------------------------------------------------------------

# Autograded notebooks carry the hidden tests (nbgrader restores the full grade cells before
# running them). nbgrader's feedback shows them verbatim; clearing the hidden-test regions after
# GetGrades keeps the scores and visible tests but not the hidden source. That alone is not enough:
# IPython's traceback of a failing check quotes the lines around it, so a failing visible check (or
# a test cell that add_missing_cells restored) showed the hidden calls below it in the feedback
# (tests/test_nbgrader_workflow.py caught it). ClearHiddenTracebacks, before ClearHiddenTests,
# shortens errors in cells with hidden tests to "Name: message" (the check's diagnosis).
# Expect one harmless warning per run, "Config option `display_data_priority` not recognized by
# `ClearHiddenTests`": it comes from nbconvert's HTMLExporter defaults
# (NbConvertBase.display_data_priority), not from this file.
c.GenerateFeedback.preprocessors = [GetGrades, CSSHTMLHeaderPreprocessor, ClearHiddenTracebacks, ClearHiddenTests]
