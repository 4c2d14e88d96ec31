"""utils.build turns solution notebooks into student chapters: stubs, no hidden tests, no outputs,
locked test cells with checksums, deterministic bytes, and a --check that catches drift."""
import json
from pathlib import Path

import nbformat
import pytest
from nbformat import v4
from nbgrader.utils import compute_checksum

from utils import build
from utils.paths import REPO

SLUG = "01_demo"
STUB = "# YOUR CODE HERE\nraise NotImplementedError()"


def nbg(**flags) -> dict:
    meta = dict(grade=False, solution=False, locked=False, schema_version=3)
    meta.update(flags)
    return {"nbgrader": meta}


def solution_notebook() -> nbformat.NotebookNode:
    nb = v4.new_notebook(metadata={
        "kernelspec": {"name": "demystify", "display_name": "Demystify env", "language": "python"},
        "language_info": {"name": "python", "version": "3.11.7", "file_extension": ".py"},
        "widgets": {"application/vnd.jupyter.widget-state+json": {"state": {}}},
    })
    nb.cells = [
        v4.new_markdown_cell("# Attention\n\nThe pattern is $A = \\mathrm{softmax}(QK^T)$."),
        v4.new_code_cell("import math", execution_count=1,
                         metadata={"execution": {"iopub.status.busy": "2024-01-01T00:00:00Z"}, "scrolled": True}),
        v4.new_code_cell(
            "def add_one(x: int) -> int:\n"
            '    """Return x + 1."""\n'
            "    ### BEGIN SOLUTION\n"
            "    secret_answer = x + 1\n"
            "    return secret_answer\n"
            "    ### END SOLUTION",
            metadata=nbg(solution=True, grade_id="add_one"), execution_count=2),
        v4.new_code_cell(
            "assert add_one(1) == 2\n"
            "### BEGIN HIDDEN TESTS\n"
            "assert add_one(41) == 42, 'hidden case'\n"
            "### END HIDDEN TESTS\n"
            "print('add_one: ok')",
            metadata=nbg(grade=True, locked=True, grade_id="test_add_one", points=2), execution_count=3,
            outputs=[v4.new_output("stream", name="stdout", text="add_one: ok\n")]),
        v4.new_markdown_cell("Why does it work? The model-answer text.",
                             metadata=nbg(solution=True, grade=True, grade_id="why", points=1)),
        v4.new_code_cell("x = add_one(1)", metadata=nbg(locked=True, grade_id="readonly")),
    ]
    return nb


def write_solution(root: Path, nb=None, slug: str = SLUG) -> Path:
    path = root / "solutions" / slug / f"{slug}.ipynb"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(solution_notebook() if nb is None else nb, indent=1))  # as-is, no nbformat repairs
    return path


@pytest.fixture
def course(tmp_path):
    write_solution(tmp_path)
    return tmp_path, tmp_path / "solutions", tmp_path / "chapters"


def snapshot(root: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ the transformation


def test_solution_replaced_by_nbgrader_stub_and_input_untouched():
    source = solution_notebook()
    before = nbformat.writes(source)
    out = build.build_notebook(source)
    assert nbformat.writes(source) == before
    code = out.cells[2].source
    assert code == 'def add_one(x: int) -> int:\n    """Return x + 1."""\n    ' + STUB.replace("\n", "\n    ")
    assert "secret_answer" not in build.dumps(out)
    assert out.cells[4].source == "YOUR ANSWER HERE"  # written-answer solution cell


def test_hidden_tests_removed_visible_tests_kept():
    cell = build.build_notebook(solution_notebook()).cells[3]
    assert cell.source == "assert add_one(1) == 2\nprint('add_one: ok')"


def test_outputs_counts_and_volatile_metadata_cleared():
    out = build.build_notebook(solution_notebook())
    for cell in out.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None
        assert not {"execution", "scrolled", "collapsed"} & set(cell.metadata)
    assert "widgets" not in out.metadata
    assert out.metadata.kernelspec == {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    assert out.metadata.language_info == {"name": "python"}  # what a kernel adds on save is dropped


def test_grade_and_readonly_cells_locked_with_checksums():
    cells = build.build_notebook(solution_notebook()).cells
    solution, test, answer, readonly = cells[2], cells[3], cells[4], cells[5]
    assert test.metadata.deletable is False and test.metadata.editable is False
    assert readonly.metadata.deletable is False and readonly.metadata.editable is False
    assert solution.metadata.deletable is False and "editable" not in solution.metadata
    assert answer.metadata.deletable is False and "editable" not in answer.metadata
    for cell in (solution, test, answer, readonly):
        assert cell.metadata.nbgrader.checksum == compute_checksum(cell)  # of the released source
        assert cell.metadata.nbgrader.cell_type == cell.cell_type
    assert test.metadata.nbgrader.points == 2


def test_plain_markdown_and_code_untouched():
    source = solution_notebook()
    out = build.build_notebook(source)
    assert out.cells[0] == source.cells[0]
    assert out.cells[1].source == source.cells[1].source and out.cells[1].id == source.cells[1].id


def test_build_is_byte_identical_and_canonical(course):
    root, solutions, chapters = course
    path = build.build_chapter(SLUG, solutions, chapters)
    first = path.read_bytes()
    build.build_chapter(SLUG, solutions, root / "again")
    assert (root / "again" / SLUG / f"{SLUG}.ipynb").read_bytes() == first
    assert first.endswith(b"}\n") and not first.endswith(b"\n\n")
    assert first.decode() == build.dumps(nbformat.reads(first.decode(), as_version=4))  # sorted, canonical


def test_cells_without_ids_get_stable_ids(course):
    root, solutions, _ = course
    nb = solution_notebook()
    for cell in nb.cells:
        del cell["id"]
    (solutions / SLUG / f"{SLUG}.ipynb").write_text(json.dumps(nb))  # bypass nbformat's id repair
    a = build.render(SLUG, solutions)
    assert a == build.render(SLUG, solutions)
    assert all(cell.id for cell in nbformat.reads(a, as_version=4).cells)


def test_non_notebook_files_copied_and_nothing_else(course):
    root, solutions, chapters = course
    folder = solutions / SLUG
    (folder / "data.bin").write_bytes(bytes(range(256)))
    (folder / "img").mkdir()
    (folder / "img" / "fig.svg").write_text("<svg/>")
    (folder / ".ipynb_checkpoints").mkdir()
    (folder / ".ipynb_checkpoints" / f"{SLUG}-checkpoint.ipynb").write_text("{}")
    (folder / "scratch.ipynb").write_text("{}")
    build.build_chapter(SLUG, solutions, chapters)
    files = sorted(p.relative_to(chapters / SLUG).as_posix() for p in (chapters / SLUG).rglob("*") if p.is_file())
    assert files == [f"{SLUG}.ipynb", "data.bin", "img/fig.svg"]
    assert (chapters / SLUG / "data.bin").read_bytes() == bytes(range(256))


# ------------------------------------------------------------------------------ --check and the CLI


def run(capsys, *argv):
    code = build.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_in_sync_out_of_sync_and_missing(course, capsys):
    root, solutions, chapters = course
    dirs = ("--solutions", str(solutions), "--chapters-dir", str(chapters))

    before = snapshot(root)
    code, out = run(capsys, "--check", *dirs)
    assert code == 1 and out.startswith(f"{SLUG}: MISSING\n")
    assert build.check(None, solutions, chapters) and snapshot(root) == before  # wrote nothing

    assert run(capsys, *dirs)[0] == 0
    assert build.check(None, solutions, chapters) == []
    code, out = run(capsys, "--check", *dirs)
    assert (code, out) == (0, f"{SLUG}: ok\n")

    target = chapters / SLUG / f"{SLUG}.ipynb"
    edited = nbformat.read(target, as_version=4)
    edited.cells[3].source += "\nassert add_one(2) == 3"
    nbformat.write(edited, target)
    before = snapshot(root)
    code, out = run(capsys, "--check", *dirs)
    assert code == 1 and out.startswith(f"{SLUG}: OUT OF SYNC\n")
    assert "-assert add_one(2) == 3" in out  # the diff names the differing cell source
    assert any("OUT OF SYNC" in p for p in build.check([SLUG], solutions, chapters))
    assert snapshot(root) == before

    (solutions / SLUG / "table.csv").write_text("a,b\n")  # a data file not yet copied
    assert any("MISSING" in p and "table.csv" in p for p in build.check(["01"], solutions, chapters))


def test_metadata_only_difference_is_reported(course):
    _, solutions, chapters = course
    target = build.build_chapter(SLUG, solutions, chapters)
    target.write_text(target.read_text().replace('"points": 2', '"points": 3'))
    status, problems, diff = build._check_chapter(SLUG, solutions, chapters)
    assert status == "OUT OF SYNC" and any('"points"' in line for line in diff)


def test_slug_or_number_and_unknown_chapter(course, capsys):
    _, solutions, chapters = course
    write_solution(solutions.parent, slug="02_other")
    assert build.resolve(["01", "02_other", "01_demo"], solutions) == [SLUG, "02_other"]
    assert build.resolve(None, solutions) == [SLUG, "02_other"]
    code, out = run(capsys, "07", "--solutions", str(solutions), "--chapters-dir", str(chapters))
    assert code == 2 and "unknown chapter(s): 07" in out
    assert not chapters.exists()


# ------------------------------------------------------------------------------ validation


def _broken(kind: str) -> nbformat.NotebookNode:
    nb = solution_notebook()
    if kind == "duplicate":
        nb.cells[5].metadata.nbgrader.grade_id = "test_add_one"
    elif kind == "no_end":
        nb.cells[2].source = nb.cells[2].source.replace("    ### END SOLUTION", "")
    elif kind == "no_points":
        del nb.cells[3].metadata.nbgrader["points"]
    elif kind == "dup_cell_id":
        nb.cells[4].id = nb.cells[1].id
    elif kind == "unmarked":
        nb.cells[1].source = "### BEGIN SOLUTION\nx = 1\n### END SOLUTION"
    return nb


@pytest.mark.parametrize("kind, expected", [
    ("duplicate", "cell 5 (grade_id 'test_add_one'): duplicate grade_id (first used in cell 3)"),
    ("no_end", "cell 2 (grade_id 'add_one'): 'BEGIN SOLUTION' on line 3 has no matching 'END SOLUTION'"),
    ("no_points", "cell 3 (grade_id 'test_add_one'): graded cell has no points"),
    ("dup_cell_id", "cell 4: duplicate cell id"),
    ("unmarked", "cell 1: 'BEGIN SOLUTION' region (line 1) in a cell that is not marked as an nbgrader solution cell"),
])
def test_validation_names_cell_and_problem(kind, expected, tmp_path, capsys):
    with pytest.raises(build.BuildError) as err:
        build.build_notebook(_broken(kind))
    assert expected in str(err.value)

    path = write_solution(tmp_path, _broken(kind))
    code, out = run(capsys, "--solutions", str(tmp_path / "solutions"), "--chapters-dir", str(tmp_path / "chapters"))
    assert code == 1 and f"{path}: {expected}" in out
    assert not (tmp_path / "chapters" / SLUG / f"{SLUG}.ipynb").exists()


def test_malformed_json_is_a_clear_error(tmp_path, capsys):
    path = write_solution(tmp_path)
    path.write_text('{"cells": [')
    with pytest.raises(build.BuildError, match="cannot read notebook"):
        build.build_chapter(SLUG, tmp_path / "solutions", tmp_path / "chapters")
    problems = build.check(None, tmp_path / "solutions", tmp_path / "chapters")
    assert len(problems) == 1 and str(path) in problems[0] and "cannot read notebook" in problems[0]


# ------------------------------------------------------------------------------ the real course


def test_committed_chapters_match_solutions():
    slugs = build.discover(REPO / "solutions")
    if not slugs:
        pytest.skip("no solutions/NN_slug/ folders yet")
    assert build.check(slugs) == []


def test_nbgrader_config_sets_only_real_options():
    """Every c.Section.option in nbgrader_config.py is a configurable trait of nbgrader 0.9."""
    from nbconvert.preprocessors import ExecutePreprocessor
    from nbgrader import converters, preprocessors
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("nbgrader_config.py", path=str(REPO)).load_config()
    classes = {"CourseDirectory": CourseDirectory, "ExecutePreprocessor": ExecutePreprocessor}
    assert config.CourseDirectory.source_directory == str(REPO / "solutions")
    assert set(CourseDirectory().ignore) <= set(config.CourseDirectory.ignore)  # defaults kept
    assert config.OverwriteCells.add_missing_cells is True
    for section, options in config.items():
        cls = classes.get(section) or getattr(preprocessors, section, None) or getattr(converters, section)
        for option in options:
            assert option in cls.class_traits(config=True), f"{section}.{option} is not an nbgrader option"


def test_what_jupyterlab_writes_on_save_is_not_a_change(course):
    """Open a solution in JupyterLab, run it, let autosave write it: the chapter is still in sync."""
    _, solutions, chapters = course
    build.build_chapter(SLUG, solutions, chapters)
    path = solutions / SLUG / f"{SLUG}.ipynb"
    nb = json.loads(path.read_text())
    nb["metadata"]["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb["metadata"]["language_info"] = {
        "codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py", "mimetype": "text/x-python",
        "name": "python", "nbconvert_exporter": "python", "pygments_lexer": "ipython3", "version": "3.11.7"}
    nb["metadata"]["widgets"] = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] == "code":
            cell["execution_count"] = i + 1
            cell["outputs"] = [{"output_type": "stream", "name": "stdout", "text": ["PASS\n"]}]
            cell["metadata"]["execution"] = {"iopub.execute_input": "2026-12-02T10:00:00.000Z"}
            cell["metadata"]["scrolled"] = True
    path.write_text(json.dumps(nb, indent=1))
    assert build.check([SLUG], solutions, chapters) == []
    # ... while a real edit still is.
    nb["cells"][-1]["source"] = ["print('changed')"]
    path.write_text(json.dumps(nb, indent=1))
    assert any("OUT OF SYNC" in p for p in build.check([SLUG], solutions, chapters))


def test_every_solution_cell_has_an_id_so_jupyterlab_keeps_them():
    for path in sorted((REPO / "solutions").glob("[0-9][0-9]_*/[0-9][0-9]_*.ipynb")):
        nb = json.loads(path.read_text())
        assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), path.name
        assert all(cell.get("id") for cell in nb["cells"]), f"{path.name}: a cell without an id"
