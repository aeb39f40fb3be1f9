#!/usr/bin/env python3
"""The import graph of a crate's src/, and its circles.

Every `crate::` and `super::` path in production code (comments, strings and `#[cfg(test)]`
items left out) is an edge from the module it is written in to the longest module its path
names. Modules are nested: `dialect` holds `dialect::cable`. A parent and its own children
may import each other; anything else is a circle. Checked level by level: for each module,
its children's subtrees (and, at the top, the crate's modules) are collapsed to one node each,
and the edges between them must have no cycle.

    python3 tests/tools/imports.py [SRC]      # SRC defaults to src

Prints the edges between top-level modules and every circle found; exits 1 when there is one.
"""

import re
import sys
from pathlib import Path


def strip(text):
    """The text with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
            continue
        if text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
            continue
        raw = re.match(r'b?r(#*)"', text[i:i + 260]) if c in "br" else None
        if raw and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = '"' + raw.group(1)
            j = text.find(end, i + raw.end())
            j = n if j < 0 else j + len(end)
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j
            continue
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
            continue
        if c == "'":
            # A char literal ('a', '\n', '\u{1f}', '"'); otherwise a lifetime or a label.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:i + 12])
            if m:
                out.append("' '")
                i += m.end()
                continue
        out.append(c)
        i += 1
    return "".join(out)


def without_test_items(code):
    """The code without the items under `#[cfg(test)]` (a module, a function, a `use`)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", code):
        if m.start() < i:
            continue
        out.append(code[i:m.start()])
        j = m.end()
        # The item ends at its first `;` at depth 0, or with the block its first `{` opens.
        depth = 0
        while j < len(code):
            ch = code[j]
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
                if depth == 0:
                    j += 1
                    break
            elif ch == ";" and depth == 0:
                j += 1
                break
            j += 1
        out.append("\n" * code.count("\n", m.start(), j))
        i = j
    out.append(code[i:])
    return "".join(out)


def module_of(path, src):
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def use_paths(tree, prefix=""):
    """Expands a `use` tree (`a::{b, c::{d, e}}`) into its paths."""
    tree = tree.strip()
    brace = tree.find("{")
    if brace < 0:
        return [prefix + tree]
    head, body = tree[:brace], tree[brace + 1:tree.rindex("}")]
    paths, depth, start = [], 0, 0
    for k, ch in enumerate(body + ","):
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif ch == "," and depth == 0:
            part = body[start:k].strip()
            if part:
                paths += use_paths(part, prefix + head)
            start = k + 1
    return paths


def referenced(code, here):
    """The paths (tuples of segments from the crate root) that `code`, in module `here`, names."""
    paths = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)\s*::[^;]*);", code):
        for p in use_paths(re.sub(r"\s+", "", m.group(1))):
            paths.append(p)
    body = re.sub(r"\buse\s+(?:crate|super|self)\s*::[^;]*;", "", code)
    for m in re.finditer(r"(?<![\w$])((?:crate|super)(?:\s*::\s*\w+)+)", body):
        paths.append(re.sub(r"\s+", "", m.group(1)))
    resolved = []
    for p in paths:
        segments = [s for s in p.split("::") if s]
        if segments[0] == "crate":
            base, segments = (), segments[1:]
        else:
            base = here
            while segments and segments[0] in ("super", "self"):
                if segments.pop(0) == "super":
                    base = base[:-1]
        resolved.append(base + tuple(s.split(" as ")[0] for s in segments))
    return resolved


def graph(src):
    files = sorted(p for p in src.rglob("*.rs") if p.name != "main.rs")
    modules = {module_of(p, src): p for p in files}
    edges = {}
    for module, path in modules.items():
        code = without_test_items(strip(path.read_text()))
        for p in referenced(code, module):
            target = max((p[:k] for k in range(len(p) + 1) if p[:k] in modules), key=len)
            if target != module:
                edges.setdefault(module, set()).add(target)
    return modules, edges


def cycles(nodes, edges):
    """The strongly connected components of more than one node (Tarjan)."""
    index, low, stack, on, found, count = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = count[0]
        count[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return found


def name(module):
    return "::".join(module) or "crate"


def main():
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "src")
    modules, edges = graph(src)
    circles = []
    for parent in sorted(modules):
        depth = len(parent) + 1
        children = {m[:depth] for m in modules if len(m) >= depth and m[:depth - 1] == parent}
        collapsed = {}
        for a, targets in edges.items():
            for b in targets:
                if a[:depth - 1] == parent == b[:depth - 1] and len(a) >= depth <= len(b):
                    if a[:depth] != b[:depth]:
                        collapsed.setdefault(a[:depth], set()).add(b[:depth])
        for circle in cycles(children, collapsed):
            within = f" (within {name(parent)})" if parent else ""
            files = sorted(
                str(modules[m].relative_to(src.parent)) for m in modules if m[:depth] in circle
            )
            circles.append(f"circle{within}: {' '.join(name(m) for m in circle)}\n  files: {' '.join(files)}")
    top = {}
    for a, targets in edges.items():
        for b in targets:
            if a[:1] != b[:1]:
                top.setdefault(a[:1], set()).add(b[:1])
    print(f"{len(modules)} modules; edges between top-level modules:")
    for a in sorted(top):
        print(f"  {name(a)} -> {', '.join(name(b) for b in sorted(top[a]))}")
    for circle in circles:
        print(circle)
    print(f"{len(circles)} circle(s)")
    return 1 if circles else 0


if __name__ == "__main__":
    sys.exit(main())
