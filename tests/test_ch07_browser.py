"""Chapter 07's graph view in a real browser: JupyterLab (the course command, as tests/test_browser.py
starts it) runs a notebook that draws a pruned attribution graph of gelu-2l with graph_html; in
headless Chromium the SVG shows every kept node, and hovering a feature node lights up its edges
and fills the side panel with its activation and its top-activating contexts (our own script,
nothing loaded from the network). Skipped without Chromium and Playwright, as the other browser tests."""
import nbformat
import pytest
from test_browser import _open, _run_all, _twice, browser, course, pytestmark  # noqa: F401 (fixtures)

from utils.notebook_setup import SETUP_CELL

GRAPH_NOTEBOOK = [
    SETUP_CELL,
    "import torch\nfrom IPython.display import HTML, display\n"
    "from utils.attribution import build_graph, freeze, load_transcoders, output_influence, prune_mask\n"
    "from utils.attribution.view import feature_contexts, graph_html\n"
    "from utils.models import load_model\n"
    "model = load_model('gelu-2l', device='cpu')\ntranscoders = load_transcoders()\n"
    "graph = build_graph(freeze(model, transcoders, 'if __name__ == \"__main__'))\n"
    "keep = prune_mask(output_influence(graph.adjacency.double(), graph.logit_weights.double()), 0.8)"
    " | graph.mask('logit')\n"
    "contexts = feature_contexts(model, transcoders, graph, keep.nonzero()[:, 0].tolist(), n_seqs=32)\n"
    "display(HTML(graph_html(graph, keep, contexts)))\n"
    "print('kept', int(keep.sum()))",
]


@pytest.fixture(scope="module")
def graph_notebook(course):  # noqa: F811 (the imported fixture)
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in GRAPH_NOTEBOOK]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(nb, course[2] / "chapters" / "graph_view.ipynb")
    return "chapters/graph_view.ipynb"


def test_graph_view_renders_and_hover_shows_contexts(browser, course, graph_notebook):  # noqa: F811
    def flow():
        page = _open(browser, course, graph_notebook)
        _run_all(page)
        text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
        assert "Traceback" not in text, text[-3000:]
        kept = int(text.split("kept ")[-1].split()[0])
        nodes = page.locator(".attribution-graph svg .n")
        nodes.first.wait_for(timeout=60_000)
        assert nodes.count() == kept
        panel = page.locator(".attribution-graph .ag-panel")
        assert panel.inner_text().strip() == "hover over a node"
        feature = page.locator(".attribution-graph svg circle.n[fill='#f0a030']").first
        feature.hover()
        page.wait_for_function("() => document.querySelector('.ag-panel').innerText.includes('activation')")
        assert "top-activating contexts" in panel.inner_text() or "never fires" in panel.inner_text()
        lit = page.locator(".attribution-graph line.e[stroke-opacity='0.9']").count()
        assert lit > 0, "hovering a node highlights none of its edges"
        page.close()

    _twice(flow)
