"""nbgrader preprocessors used by the repository's nbgrader_config.py."""
from __future__ import annotations

from nbgrader import utils as nbutils
from nbgrader.preprocessors import ClearHiddenTests, NbGraderPreprocessor


class ClearHiddenTracebacks(NbGraderPreprocessor):
    """For feedback: an error in a graded cell that holds hidden tests keeps only "Name: message".

    IPython's traceback quotes the source lines around the failing line, so a failing VISIBLE
    check (or a test cell nbgrader restored) would show the hidden calls below it even after
    ClearHiddenTests has cleared them from the cell's source. Run it before ClearHiddenTests. The
    message itself is the check's diagnosis, which never contains test source.
    """

    def preprocess_cell(self, cell, resources, index):
        marker = ClearHiddenTests().begin_test_delimeter
        if cell.cell_type == "code" and nbutils.is_grade(cell) and marker in cell.source:
            for output in cell.get("outputs", []):
                if output.get("output_type") == "error":
                    output["traceback"] = [f"{output.get('ename', 'Error')}: {output.get('evalue', '')}"]
        return cell, resources
