"""A folder of documents as a dataset for continued pretraining: ``{"text": ...}`` rows, each
a chunk of at most a run's sequence length in the base model's tokens, consecutive chunks of a
document sharing ``overlap`` tokens, the loss on every token (the studio's text rows).

Read: .txt, .md, .markdown and .rst as UTF-8 text; .pdf through ``pypdf`` and .docx through
``python-docx`` when they are installed (optional: a document that needs one that is missing is
skipped and says which). A file that is not text (NUL bytes, or not UTF-8) is skipped with its
name and why; nothing is ever written to the folder. ``NAME.source.json`` lists every file with
its size and chunks, and every skipped one with its reason.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from core.errors import StudioError
from core.files import replacing, write_json_atomic

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
OPTIONAL_READERS = {".pdf": "pypdf", ".docx": "python-docx"}


@dataclass
class DocumentsReport:
    name: str
    path: str
    source: str
    tokenizer: str
    chunk_tokens: int
    overlap: int
    files: list[dict] = field(default_factory=list)  # name, bytes, chunks
    skipped: list[dict] = field(default_factory=list)  # name, reason
    rows_written: int = 0
    row_format: str = "text"
    imported_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())


class NotText(Exception):
    """A document that cannot be read as text, and why."""


def read_document(path: Path) -> str:
    """The text of one document; NotText saying why when it has none to give."""
    suffix = path.suffix.lower()
    if suffix == ".pdf":
        return _pdf(path)
    if suffix == ".docx":
        return _docx(path)
    data = path.read_bytes()
    if b"\x00" in data:
        raise NotText("not text (binary: it holds NUL bytes)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise NotText(f"not UTF-8 text (byte {error.start})") from None


def _pdf(path: Path) -> str:
    try:
        from pypdf import PdfReader
    except ImportError:
        raise NotText("a PDF: reading it needs pypdf (pip install pypdf)") from None
    return "\n".join(page.extract_text() or "" for page in PdfReader(str(path)).pages)


def _docx(path: Path) -> str:
    try:
        import docx
    except ImportError:
        raise NotText("a .docx: reading it needs python-docx (pip install python-docx)") from None
    return "\n".join(paragraph.text for paragraph in docx.Document(str(path)).paragraphs)


def chunks(text: str, tokenizer, size: int, overlap: int) -> list[str]:
    """``text`` in windows of ``size`` tokens, each starting ``size - overlap`` tokens after
    the one before; the last one ends with the text."""
    ids = tokenizer.encode(text, add_special_tokens=False)
    step, out = size - overlap, []
    for start in range(0, max(len(ids) - overlap, 1), step):
        out.append(tokenizer.decode(ids[start : start + size]))
    return [chunk for chunk in out if chunk.strip()]


def import_documents(
    source: Path,
    name: str,
    folder: Path,
    tokenizer,
    *,
    tokenizer_name: str,
    size: int = 2048,
    overlap: int = 128,
    replace: bool = False,
) -> DocumentsReport:
    """``source`` (a folder, or one document) as ``folder/NAME.jsonl`` of text chunks."""
    if not source.exists():
        raise StudioError(f"{source} does not exist")
    if not 0 <= overlap < size:
        raise StudioError(f"--overlap {overlap}: from 0 to less than the chunk size ({size})")
    target = folder / f"{name}.jsonl"
    if target.exists() and not replace:
        raise StudioError(
            f"a dataset named {name} exists already",
            hint="choose another --name, or give --replace to replace it",
        )
    files = sorted(p for p in source.rglob("*") if p.is_file()) if source.is_dir() else [source]
    report = DocumentsReport(name, str(target), str(source), tokenizer_name, size, overlap)
    folder.mkdir(parents=True, exist_ok=True)
    with replacing(target) as partial, partial.open("w", encoding="utf-8") as out:
        for path in files:
            where = str(path.relative_to(source)) if source.is_dir() else path.name
            if path.suffix.lower() not in (*TEXT_SUFFIXES, *OPTIONAL_READERS):
                report.skipped.append({"name": where, "reason": f"not a document ({path.suffix})"})
                continue
            try:
                pieces = chunks(read_document(path), tokenizer, size, overlap)
            except NotText as why:
                report.skipped.append({"name": where, "reason": str(why)})
                continue
            for piece in pieces:
                out.write(json.dumps({"text": piece}, ensure_ascii=False) + "\n")
            report.files.append(
                {"name": where, "bytes": path.stat().st_size, "chunks": len(pieces)}
            )
            report.rows_written += len(pieces)
        if not report.rows_written:
            raise StudioError(
                f"{source}: no text to import ({len(report.skipped)} file(s) skipped)",
                hint="give .txt or .md files (.pdf with pypdf, .docx with python-docx)",
            )
    write_json_atomic(folder / f"{name}.source.json", asdict(report))
    return report
