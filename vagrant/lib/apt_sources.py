#!/usr/bin/env python3
"""Print the host's Debian bookworm apt sources as one-line "deb" entries.

The offline box is built from the same Debian mirror the host already uses,
so no mirror is named in the repository: it is read at build time from
/etc/apt/sources.list, /etc/apt/sources.list.d/*.list (one-line format) and
/etc/apt/sources.list.d/*.sources (deb822 format). Only binary ("deb")
entries for the suites the image needs are printed, and the script fails if
any of them is missing, rather than building an image without security
updates.
"""

import argparse
import glob
import os
import sys

WANTED_SUITES = ("bookworm", "bookworm-updates", "bookworm-security")


def one_line_entries(path):
    """Yield (options, uri, suite, components) from a one-line sources file."""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            words = line.split()
            if words[0] != "deb":
                continue
            words = words[1:]
            options = ""
            if words and words[0].startswith("["):
                # Options run up to the word that ends with "]".
                opts = []
                while words:
                    word = words.pop(0)
                    opts.append(word)
                    if word.endswith("]"):
                        break
                options = " ".join(opts)[1:-1].strip()
            if len(words) < 2:
                continue
            yield options, words[0], words[1], words[2:]


def deb822_stanzas(path):
    """Yield each stanza of a deb822 file as a dict (keys lower-cased)."""
    stanza, key = {}, None
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.rstrip("\n")
            if line.startswith("#"):
                continue
            if not line.strip():
                if stanza:
                    yield stanza
                stanza, key = {}, None
                continue
            if line[0] in " \t" and key:
                stanza[key] += " " + line.strip()  # continuation line
                continue
            if ":" in line:
                key, value = line.split(":", 1)
                key = key.strip().lower()
                stanza[key] = value.strip()
    if stanza:
        yield stanza


def deb822_entries(path):
    for st in deb822_stanzas(path):
        if st.get("enabled", "yes").lower() == "no":
            continue
        if "deb" not in st.get("types", "").split():
            continue
        options = []
        if st.get("signed-by") and not st["signed-by"].lstrip().startswith("-----"):
            options.append("signed-by=" + st["signed-by"].split()[0])
        if st.get("architectures"):
            options.append("arch=" + ",".join(st["architectures"].split()))
        for uri in st.get("uris", "").split():
            for suite in st.get("suites", "").split():
                yield " ".join(options), uri, suite, st.get("components", "").split()


def host_entries(root):
    main = os.path.join(root, "etc/apt/sources.list")
    if os.path.isfile(main):
        yield from one_line_entries(main)
    for path in sorted(glob.glob(os.path.join(root, "etc/apt/sources.list.d/*.list"))):
        yield from one_line_entries(path)
    for path in sorted(glob.glob(os.path.join(root, "etc/apt/sources.list.d/*.sources"))):
        yield from deb822_entries(path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/", help="read the apt sources under this root")
    args = parser.parse_args()

    lines, found = [], set()
    for options, uri, suite, components in host_entries(args.root):
        if suite not in WANTED_SUITES:
            continue
        # The guest only needs "main"; the host's other components are harmless.
        comps = components or ["main"]
        opts = f"[{options}] " if options else ""
        line = f"deb {opts}{uri} {suite} {' '.join(comps)}"
        if line not in lines:
            lines.append(line)
            found.add(suite)

    missing = [s for s in WANTED_SUITES if s not in found]
    if missing:
        print(
            "apt_sources.py: the host's apt sources have no entry for " + ", ".join(missing)
            + " (needed to build the offline box)",
            file=sys.stderr,
        )
        return 1
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
