"""Pages made at build time (mkdocs-gen-files runs this): the benchmark pages from
bench/results/*.json, the notebook from vae_from_scratch.ipynb, and the API reference from the
package's modules. Nothing here is written into docs/: the pages exist only in the built site.
"""

from __future__ import annotations

import ast
import json
from datetime import datetime
from pathlib import Path

import mkdocs_gen_files

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
RESULTS = BENCH / "results"
NOTEBOOK = REPO / "vae_from_scratch.ipynb"
PACKAGE = REPO / "src" / "vaelab"


# ---- benchmarks --------------------------------------------------------------------------

def benchmark_pages() -> None:
    """A page per result file, and for a bench with no result yet a page that says so."""
    results = {path.stem: json.loads(path.read_text()) for path in sorted(RESULTS.glob("*.json"))}
    scripts = {path.stem: path for path in sorted(BENCH.glob("*.py"))  # benches, not helpers
               if '__name__ == "__main__"' in path.read_text()}
    lines = ["# Benchmarks", "",
             "Every number on these pages was written by a bench script into "
             "`bench/results/NAME.json`; each page is built from that file, with the command "
             "that reproduces it, where it ran and its raw output. Timings compare rows of one "
             "run on one machine; across machines, compare ratios.", "",
             "| bench | what it measures | run on | commit |", "|---|---|---|---|"]
    for name, result in results.items():
        lines.append(f"| [{name}]({name}.md) | {_title(result['doc'])} | {_date(result)} | "
                     f"`{(result['commit'] or '')[:8]}` |")
        _write_page(name, benchmark_page(name, result), f"bench/results/{name}.json")
    for name, script in scripts.items():
        if name in results:
            continue
        doc = ast.get_docstring(ast.parse(script.read_text())) or ""
        lines.append(f"| [{name}]({name}.md) | {_title(doc)} | not yet | |")
        _write_page(name, missing_page(name, doc), f"bench/{script.name}")
    with mkdocs_gen_files.open("benchmarks/index.md", "w") as page:
        page.write("\n".join(lines) + "\n")


def _write_page(name: str, text: str, source: str) -> None:
    with mkdocs_gen_files.open(f"benchmarks/{name}.md", "w") as page:
        page.write(text)
    mkdocs_gen_files.set_edit_path(f"benchmarks/{name}.md", f"../{source}")


def missing_page(name: str, doc: str) -> str:
    title, _, rest = doc.partition("\n\n")
    return "\n".join([f"# {name}", "", f"**{title.replace(chr(10), ' ')}**", "",
                      f"No result of `bench/{name}.py` is committed yet, so this page has no "
                      "numbers. The bench's own description says how to run it:", "",
                      _unindent_commands(rest), ""])


def _title(doc: str) -> str:
    return doc.split("\n\n")[0].replace("\n", " ")


def _date(result: dict) -> str:
    return datetime.fromisoformat(result["started"]).strftime("%Y-%m-%d")


def benchmark_page(name: str, result: dict) -> str:
    title, _, rest = result["doc"].partition("\n\n")
    lines = [f"# {name}", "", f"**{title.replace(chr(10), ' ')}**", ""]
    for table in result["tables"]:
        if table["caption"]:
            lines += [table["caption"], ""]
        lines += ["| " + " | ".join(_escape(h) for h in table["header"]) + " |",
                  "|" + "---|" * len(table["header"])]
        lines += ["| " + " | ".join(_escape(c) for c in row) + " |" for row in table["rows"]]
        lines.append("")
    for figure in result["figures"]:  # those in docs/ (a quick look may draw elsewhere)
        if figure.startswith("docs/"):
            lines += [f"![{Path(figure).stem}](../{figure[len('docs/'):]})", ""]
    machine, versions = result["machine"], result["versions"]
    changed = result["changed_files"]
    lines += [
        "## How it was measured", "",
        "```bash", result["command"], "```", "",
        f"- **Machine:** {machine['cpu']}, {machine['usable_cores']} of {machine['cores']} "
        f"cores usable, {', '.join(machine['cpu_features']) or 'no AVX2'}, "
        f"{machine['memory_gb']} GiB, GPU: {machine['gpu'] or 'none'}; load average "
        f"{machine['load_average_at_start']} at the start, {machine['load_average_at_end']} "
        "at the end.",
        f"- **Software:** torch {versions['torch']}, Python {versions['python']}, vaelab "
        f"{versions['vaelab']}, commit `{result['commit']}`"
        + (f" with uncommitted changes to {', '.join(changed)}" if changed else "") + ".",
        f"- **When:** {result['started']} to {result['finished']} (UTC).", "",
        "## About this bench", "", _unindent_commands(rest), "",
        '??? note "Raw output"', "", "    ```text",
        *("    " + line for line in result["output"].splitlines()), "    ```", "",
    ]
    return "\n".join(lines)


def _escape(cell: str) -> str:
    return str(cell).replace("|", "\\|")


def _unindent_commands(text: str) -> str:
    """The bench docstring's indented commands become fenced shell blocks."""
    out, block = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("    ") and (block or not out or not out[-1].strip()):
            block.append(line[4:])
            continue
        if block:
            out += ["```bash", *block, "```"]
            block = []
        out.append(line)
    return "\n".join(out).strip()


# ---- the notebook ------------------------------------------------------------------------

def notebook_page() -> None:
    """The notebook with its stored outputs, as Markdown: its math goes through the same
    arithmatex and local MathJax as every other page, and its pictures become files."""
    import nbformat
    from nbconvert import MarkdownExporter

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    body, resources = MarkdownExporter().from_notebook_node(
        notebook, resources={"output_files_dir": "notebook_files"})
    with mkdocs_gen_files.open("notebook.md", "w") as page:
        page.write(body)
    for name, data in resources["outputs"].items():
        with mkdocs_gen_files.open(name, "wb") as picture:
            picture.write(data)
    mkdocs_gen_files.set_edit_path("notebook.md", f"../{NOTEBOOK.name}")


# ---- the command line --------------------------------------------------------------------

def command_line_page() -> None:
    """Every command and flag, from the parser itself, so the page cannot drift from it."""
    import argparse

    from vaelab.cli_parser import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    lines = ["# Command line", "",
             "Every `vaelab` command and flag, generated from the parser that `vaelab --help` "
             "prints. The flags of `vaelab train` are the fields of `vaelab.Config`, each "
             "with the reason for its default.", ""]
    for name, sub in commands.choices.items():
        lines += [f"## `vaelab {name}`", "", sub.description or "", "",
                  "| flag | what it does |", "|---|---|"]
        for action in sub._actions:
            if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
                continue
            flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or \
                f"`{action.metavar or action.dest}`"
            if action.choices and not action.option_strings == []:
                flags += " " + "\\|".join(f"`{c}`" for c in action.choices)
            lines.append(f"| {flags} | {_escape(action.help or '').replace('%%', '%')} |")
        lines.append("")
    with mkdocs_gen_files.open("cli.md", "w") as page:
        page.write("\n".join(lines))


# ---- the API reference -------------------------------------------------------------------

def reference_pages() -> None:
    """One page per module of the package, in reference/, with the nav in SUMMARY.md."""
    nav = mkdocs_gen_files.Nav()
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        page = Path("reference", *parts[1:]).with_suffix(".md") if len(parts) > 1 \
            else Path("reference", "index.md")
        nav[parts[1:] or ("vaelab",)] = page.relative_to("reference").as_posix()
        with mkdocs_gen_files.open(page, "w") as file:
            file.write(f"# `{'.'.join(parts)}`\n\n::: {'.'.join(parts)}\n")
        mkdocs_gen_files.set_edit_path(page, f"../{path.relative_to(REPO).as_posix()}")
    with mkdocs_gen_files.open("reference/SUMMARY.md", "w") as summary:
        summary.writelines(nav.build_literate_nav())


benchmark_pages()
command_line_page()
notebook_page()
reference_pages()
