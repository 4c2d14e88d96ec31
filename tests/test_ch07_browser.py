"""Chapter 07's graph view in a real browser: JupyterLab (the course command, as tests/test_browser.py
starts it) runs a notebook that draws a pruned attribution graph of gelu-2l with graph_html; in
headless Chromium the SVG shows every kept node, and hovering a feature node lights up its edges
and fills the side panel with its activation and its top-activating contexts (our own script,
nothing loaded from the network). The same HTML alone, in an offline Chromium page, draws and
answers a hover without a single request. Skipped without Chromium and Playwright, as the other
browser tests (all slow)."""
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


def _hover_and_read(page) -> str:
    """Hover the first feature node (our own mouseenter listener); the panel's text once it changes."""
    feature = page.locator(".attribution-graph svg circle.n[fill='#f0a030']").first
    feature.scroll_into_view_if_needed()
    feature.dispatch_event("mouseenter")  # a real pointer could land on a JupyterLab toast instead
    page.wait_for_function("() => document.querySelector('.ag-panel').innerText.includes('activation')")
    return page.locator(".attribution-graph .ag-panel").inner_text()


@pytest.fixture(scope="module")
def page_html():
    """The view of the chapter's prompt, as graph_html writes it (no notebook around it)."""
    import torch

    from utils.attribution import build_graph, freeze, load_transcoders, output_influence, prune_mask
    from utils.attribution.view import feature_contexts, graph_html
    from utils.models import load_model

    torch.set_num_threads(1)
    model, transcoders = load_model("gelu-2l", device="cpu"), load_transcoders()
    graph = build_graph(freeze(model, transcoders, 'if __name__ == "__main__'))
    influence = output_influence(graph.adjacency.double(), graph.logit_weights.double())
    keep = prune_mask(influence, 0.8) | graph.mask("logit")
    contexts = feature_contexts(model, transcoders, graph, keep.nonzero()[:, 0].tolist(), n_seqs=32)
    return graph_html(graph, keep, contexts), int(keep.sum())


def test_graph_view_works_offline_in_chromium(browser, page_html):  # noqa: F811
    """The HTML alone, in a page that may not reach the network: it draws and answers a hover."""
    html, kept = page_html
    context = browser.new_context(offline=True)
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.set_content(f"<html><body>{html}</body></html>")
    assert page.locator(".attribution-graph svg .n").count() == kept
    panel = _hover_and_read(page)
    assert "top-activating contexts" in panel or "never fires" in panel
    assert page.locator(".attribution-graph line.e[stroke-opacity='0.9']").count() > 0
    assert [u for u in requests if not u.startswith(("about:", "data:"))] == []
    context.close()


def test_graph_view_renders_and_hover_shows_contexts(browser, course, graph_notebook):  # noqa: F811
    def flow():
        page = _open(browser, course, graph_notebook)
        page.add_style_tag(content="#react-toastify-container { display: none !important; }")  # news toasts
        _run_all(page)
        text = "\n".join(page.locator(".jp-OutputArea-output").all_inner_texts())
        assert "Traceback" not in text, text[-3000:]
        kept = int(text.split("kept ")[-1].split()[0])
        nodes = page.locator(".attribution-graph svg .n")
        nodes.first.wait_for(timeout=60_000)
        assert nodes.count() == kept
        assert page.locator(".attribution-graph .ag-panel").inner_text().strip() == "hover over a node"
        panel = _hover_and_read(page)
        assert "top-activating contexts" in panel or "never fires" in panel
        lit = page.locator(".attribution-graph line.e[stroke-opacity='0.9']").count()
        assert lit > 0, "hovering a node highlights none of its edges"
        page.close()

    _twice(flow)
