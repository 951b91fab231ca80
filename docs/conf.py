"""Sphinx configuration of kproc's API reference (``make docs``).

The reference is built from the docstrings (autodoc).  kproc's docstrings are
written in the kernel-doc spirit (``@arg: ...``, ``Context:``, ``Return:``,
``Raises:``); :func:`kernel_doc_to_rest` turns those into reST fields as autodoc
reads them, so the source stays as the kernel would write it.  Every public name
appears on exactly one page: the API group pages list theirs, and the names no
page lists (added since) are gathered on a generated page, so the reference is
never silently incomplete.
"""

import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import kproc  # noqa: E402

project = "kproc"
author = "kproc developers"
copyright = "2026, kproc developers"
release = version = kproc.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.intersphinx"]
html_theme = "furo"
html_title = f"kproc {release}"
exclude_patterns = ["_build", "design.md"]
default_role = "code"
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
intersphinx_mapping = {}          # offline builds: no inventory is fetched

# -- kernel-doc docstrings as reST ------------------------------------------------------

_LABELS = ("Context", "Return", "Returns", "Raises", "Locking", "Note")
# A label starts a line or follows a sentence: "Context:", "Return:", ..., "@arg:".
_LABEL = re.compile(r"(?:(?<=^)|(?<=[.;:)]\s)|(?<=[.;:)]\s\s))(%s|@[A-Za-z_]\w*):\s*"
                    % "|".join(_LABELS))
_ARG = re.compile(r"(?<![\w`@])@([A-Za-z_]\w*(?:\([^)]*\))?)")    # @arg, @callback(cpu)
_STAR = re.compile(r"(?<![\w`*])(\*{1,2}[A-Za-z_]\w*)")


def _literal_args(line):
    """``@arg`` becomes ````arg````, a bare ``*args`` a literal (not emphasis)."""
    parts = line.split("``")
    for i in range(0, len(parts), 2):          # outside literals only
        parts[i] = _STAR.sub(r"``\1``", _ARG.sub(r"``\1``", parts[i]))
    return "``".join(parts)


def kernel_doc_to_rest(lines):
    """Rewrite ``Context:``/``Return:``/``Raises:`` runs of a docstring as reST
    fields (one per label, continuation lines indented), in place."""
    out, in_field = [], False
    for line in lines:
        stripped = line.strip()
        if not stripped:
            in_field = False
            out.append("")
            continue
        indent = line[:len(line) - len(line.lstrip())]
        pieces = _LABEL.split(stripped)
        # pieces: [text before, label, text, label, text, ...]
        head, rest = pieces[0], pieces[1:]
        if head.strip():
            # a field's continuation is indented under it; other lines keep theirs
            out.append(("    " if in_field else indent) + _literal_args(head.rstrip()))
        for label, text in zip(rest[::2], rest[1::2]):
            if not in_field and out and out[-1] != "":
                out.append("")
            name = ("Returns" if label in ("Return", "Returns")
                    else f"param {label[1:]}" if label.startswith("@") else label)
            out.append(f":{name}: {_literal_args(text.strip())}".rstrip())
            in_field = True
    lines[:] = out


def _process(app, what, name, obj, options, lines):
    kernel_doc_to_rest(lines)


# -- every public name on a page --------------------------------------------------------

_DIRECTIVE = re.compile(r"^\.\. auto(?:function|class|data|exception)::\s+kproc\.(\w+)", re.M)
GENERATED = os.path.join(HERE, "api", "more.rst")


def documented_names():
    """The ``kproc.NAME`` an API page documents, by page."""
    names = {}
    folder = os.path.join(HERE, "api")
    for page in sorted(os.listdir(folder)):
        if page.endswith(".rst") and page != "more.rst":
            with open(os.path.join(folder, page)) as f:
                for name in _DIRECTIVE.findall(f.read()):
                    names.setdefault(name, page)
    return names


def write_more_page():
    """api/more.rst: the public names no API page lists (the page says none)."""
    listed = documented_names()
    missing = [n for n in kproc.__all__ if n not in listed]
    body = ["More names", "==========", "",
            "Public names that no API group page lists yet.", ""]
    if not missing:
        body += ["None: every public name is on its group's page.", ""]
    for name in missing:
        obj = getattr(kproc, name)
        kind = ("autoexception" if isinstance(obj, type) and issubclass(obj, BaseException)
                else "autoclass" if isinstance(obj, type)
                else "autofunction" if callable(obj) else "autodata")
        body += [f".. {kind}:: kproc.{name}"]
        body += ["   :members:", ""] if kind == "autoclass" else [""]
    text = "\n".join(body)
    old = open(GENERATED).read() if os.path.exists(GENERATED) else None
    if text != old:
        with open(GENERATED, "w") as f:
            f.write(text)


def setup(app):
    write_more_page()
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True}
