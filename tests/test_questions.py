"""Multiple-choice questions: the keys live on the instructor's side only (solutions/*/questions.json
and the solutions' hidden tests), the three places that name a key agree, the options give nothing
away by length or letter, a self-check answers from the released bank, an exam build only records,
and the exam build drops the full-code hints."""
import ast
import json
import re
import subprocess
import sys
from collections import Counter

import nbformat
import pytest

from utils import build
from utils.checks import CheckFailure, ch00, questions
from utils.checks.questions import LETTERS, read_bank
from utils.paths import PACKAGE

CHAPTERS = build.discover()


def solution(slug):
    return nbformat.read(build.SOLUTIONS / slug / f"{slug}.ipynb", 4)


def banks():
    return {slug: read_bank(build.SOLUTIONS / slug / "questions.json") for slug in CHAPTERS
            if (build.SOLUTIONS / slug / "questions.json").is_file()}


def option_lines(markdown: str) -> dict:
    """{letter: text} of the option bullets of a question cell (`- (a) ...` or `* **a** ...`)."""
    found = re.finditer(r"^(?:- \(([a-d])\)|\* \*\*([a-d])\*\*) (.*(?:\n(?!- \(|\* \*\*|\n).*)*)", markdown, re.M)
    return {m.group(1) or m.group(2): " ".join(m.group(3).split()) for m in found}


def question_cells(nb, name):
    """(markdown with the options, solution cell, check cell) of question ``name``."""
    i = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code" and c.source.startswith(f"check.{name}("))
    md = next(nb.cells[j] for j in range(i - 2, -1, -1) if nb.cells[j].cell_type == "markdown")
    return md, nb.cells[i - 1], nb.cells[i]


def test_every_chapter_with_questions_has_a_valid_bank_and_every_question_is_in_it():
    found = banks()
    assert sum(len(b) for b in found.values()) == 22
    for slug in CHAPTERS:
        module = __import__(f"utils.checks.ch{slug[:2]}", fromlist=["x"])
        asked = {n for n in module.EXERCISES if n.endswith("_question")}
        assert asked == set(found.get(slug, {})), slug
        for name, q in found.get(slug, {}).items():  # the check is built from the bank: one prompt, not two
            assert getattr(module, name).__doc__ == q.prompt, (slug, name)


@pytest.mark.parametrize("slug", sorted(banks()))
def test_bank_notebook_and_hidden_key_agree(slug):
    nb = solution(slug)
    symbols = []
    for name, q in banks()[slug].items():
        md, answer_cell, check_cell = question_cells(nb, name)
        assert option_lines(md.source) == q.options, f"{slug}/{name}: the notebook shows other options"
        symbol = re.match(rf"check\.{name}\((\w+)\)", check_cell.source).group(1)
        assigned = re.search(rf'^{symbol} = "([a-d])"$', answer_cell.source, re.M).group(1)
        hidden = re.search(r"### BEGIN HIDDEN TESTS\n(.*)\n### END HIDDEN TESTS", check_cell.source, re.S).group(1)
        call = ast.parse(hidden).body[0].value
        assert {k.arg: ast.literal_eval(k.value) for k in call.keywords} == {"key": q.answer}
        assert assigned == q.answer, f"{slug}/{name}: the solution answers {assigned}, the bank {q.answer}"
        symbols.append(symbol)
    assert len(symbols) == len(set(symbols)), f"{slug}: two questions share an answer variable: {symbols}"


def test_the_installed_package_holds_no_answer_key():
    for path in PACKAGE.rglob("*"):
        assert path.name != "questions.json", path
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "check_choice":
                assert len(node.args) == 4 and isinstance(node.args[3], ast.Name), \
                    f"{path}:{node.lineno}: a check_choice call with a literal key"


def test_the_right_option_is_neither_the_longest_nor_one_letter():
    letters = Counter()
    for slug, bank in banks().items():
        longest = [n for n, q in bank.items()
                   if len(q.options[q.answer]) > max(len(t) for k, t in q.options.items() if k != q.answer)]
        assert len(longest) <= len(bank) // 2, f"{slug}: the right option is the longest in {longest}"
        letters.update(q.answer for q in bank.values())
        if len(bank) >= 3:
            assert len({q.answer for q in bank.values()}) >= 2, f"{slug}: every answer is the same letter"
    assert all(3 <= letters[x] <= 7 for x in LETTERS), f"right letters across the course: {dict(letters)}"


def test_a_bank_that_cannot_grade_is_refused(tmp_path):
    good = {"prompt": "?", "options": dict(zip(LETTERS, "wxyz")), "answer": "b",
            "explanations": {"a": "1", "c": "3", "d": "4"}}
    for change, message in (({"answer": "e"}, "not an option"), ({"options": {"a": "w", "b": "x"}}, "lettered"),
                            ({"explanations": {"a": "1", "c": "3"}}, "exactly the wrong options"),
                            ({"explanations": {"a": "1", "b": "2", "c": "3", "d": "4"}}, "exactly the wrong")):
        path = tmp_path / "questions.json"
        path.write_text(json.dumps({"chapter": "09", "questions": {"q": good | change}}))
        with pytest.raises(questions.BankError, match=message):
            read_bank(path)


def test_without_a_bank_a_check_records_and_with_a_key_it_grades(tmp_path, monkeypatch, capsys, isolated_progress):
    monkeypatch.setattr(questions, "REPO", tmp_path)  # an installed wheel: no chapters/ beside it
    monkeypatch.delenv("DEMYSTIFY_COURSE", raising=False)
    monkeypatch.chdir(tmp_path)
    q = banks()["00_orientation"]["hook_question"]
    wrong = next(x for x in LETTERS if x != q.answer)
    ch00.hook_question(wrong)  # an exam build: any letter is recorded, nothing is judged
    assert "RECORDED 00/hook_question" in capsys.readouterr().out
    with pytest.raises(CheckFailure, match="set your answer"):
        ch00.hook_question(None)
    with pytest.raises(CheckFailure, match="not one of"):
        ch00.hook_question("e")
    with pytest.raises(CheckFailure) as info:  # nbgrader's hidden test carries the key
        ch00.hook_question(wrong, key=q.answer)
    assert "Not quite" in str(info.value)  # no bank here: no explanation to give away
    ch00.hook_question(q.answer, key=q.answer)
    assert capsys.readouterr().out.strip().endswith("PASS 00/hook_question")
    course = tmp_path / "clone"  # Colab's setup cell points DEMYSTIFY_COURSE at its clone
    (course / "chapters" / "00_orientation").mkdir(parents=True)
    (course / "chapters" / "00_orientation" / "questions.json").write_bytes(
        (build.SOLUTIONS / "00_orientation" / "questions.json").read_bytes())
    monkeypatch.setenv("DEMYSTIFY_COURSE", str(course))
    with pytest.raises(CheckFailure, match=re.escape(q.explanations[wrong][:30])):
        ch00.hook_question(wrong)


@pytest.mark.slow
def test_exam_build_drops_the_bank_and_the_full_code_hints(tmp_path):
    out = tmp_path / "exam"
    done = subprocess.run([sys.executable, "-m", "utils.build", "--exam", "--out", str(out), "01", "00"],
                          capture_output=True, text=True, cwd=build.REPO)
    assert done.returncode == 0, done.stderr
    for slug in ("00_orientation", "01_tensorized_attention"):
        assert sorted(p.name for p in (out / slug).iterdir()) == [f"{slug}.ipynb"]
        exam = nbformat.read(out / slug / f"{slug}.ipynb", 4)
        normal = nbformat.read(build.CHAPTERS / slug / f"{slug}.ipynb", 4)
        assert exam.metadata["demystify"] == {"build": "exam"}
        assert len(exam.cells) == len(normal.cells)
        for e, n in zip(exam.cells, normal.cells):
            if e.cell_type != "markdown":
                assert e.source == n.source  # code, stubs and locked checks are what the normal build has
                continue
            kept, had = re.findall(r"<details>.*?</details>", e.source, re.S), \
                re.findall(r"<details>.*?</details>", n.source, re.S)
            assert kept == had[:-1] if len(had) >= 2 or (had and "```" in had[-1]) else kept == had
            assert not any("```" in h for h in kept)
    refused = subprocess.run([sys.executable, "-m", "utils.build", "--exam"], capture_output=True, text=True,
                             cwd=build.REPO)
    assert refused.returncode == 2 and "--out" in refused.stderr
    refused = subprocess.run([sys.executable, "-m", "utils.build", "--exam", "--out", "chapters"],
                             capture_output=True, text=True, cwd=build.REPO)
    assert refused.returncode == 2 and "committed chapters" in refused.stderr


def test_drop_code_hints_keeps_what_is_not_the_full_code():
    one_verbal = "Do it.\n\n<details><summary>Hint</summary>\n\nThink of rows.\n</details>"
    assert build.drop_code_hints(one_verbal) == one_verbal
    one_code = "Do it.\n\n<details><summary>Hint</summary>\n\n```python\nx = 1\n```\n</details>"
    assert build.drop_code_hints(one_code) == "Do it."
    two = ("Do it.\n\n<details><summary>Hint 1</summary>\nrows\n</details>\n\n"
           "<details><summary>Hint 2</summary>\n`x`\n</details>")
    assert build.drop_code_hints(two) == "Do it.\n\n<details><summary>Hint 1</summary>\nrows\n</details>"
    assert build.drop_code_hints("No hints.") == "No hints."
