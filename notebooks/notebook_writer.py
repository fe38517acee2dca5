"""Write one notebook from its cells, optionally executed at full settings (shared by the
builders in this folder)."""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent


def write_notebook(name: str, cells: list[tuple[str, str]], execute: bool = False, timeout: int = 3600) -> None:
    """Write ``notebooks/<name>`` from ``cells`` (``("md" | "code", source)`` pairs); with
    ``execute``, run it first so that a reader browsing the repository sees its outputs
    (needs the test extra's nbclient). Cell ids are stable, so rebuilding changes only what
    changed."""
    import nbformat as nbf

    notebook = nbf.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbf.v4.new_markdown_cell(src) if kind == "md" else nbf.v4.new_code_cell(src)
                      for kind, src in cells]
    for number, cell in enumerate(notebook.cells):
        cell.id = f"cell-{number:02d}"
    if execute:
        from nbclient import NotebookClient

        NotebookClient(notebook, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(HERE)}}).execute()
    nbf.write(notebook, HERE / name)
    print(f"wrote {name}" + (" (executed)" if execute else ""))
