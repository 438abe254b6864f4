#!/usr/bin/env python3
"""Fails when modules of a crate import each other in a cycle.

For every module, its child modules form a graph: child A points at child B when code
in A (or below it) names a path into B (`use crate::b::…`, `super::b::…`, an inline
`crate::b::f()`). Any strongly connected component of two or more children is a cycle.
A child naming its parent's own items (`super::Store`) is not an edge: the parent owns
its children. `#[cfg(test)]` modules are skipped (tests may reach anywhere).

Usage: scripts/check-module-cycles.py [crate_dir ...]   (default: every workspace crate)
Cargo's `cargo modules dependencies --acyclic` does this too, but builds rust-analyzer
(minutes on two cores); these ~150 lines read `mod` and `use` only, which is what
cycles are made of in this code base (no `#[path]`, no glob re-exports across siblings).
"""

import re
import subprocess
import json
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


TOKENS = re.compile(
    r"//[^\n]*"  # line and doc comments (intra-doc links are not imports)
    r"|/\*.*?\*/"  # block comments
    r'|r(#*)".*?"\1'  # raw strings
    r'|"(?:\\.|[^"\\])*"'  # strings (SQL and messages may hold `::`)
    r"|'(?:\\.|[^\\'])'",  # char literals such as '"'
    re.S,
)


def strip_comments(src: str) -> str:
    """Blanks comments, strings and chars, keeping line breaks for line numbers."""
    return TOKENS.sub(lambda m: "\n" * m.group(0).count("\n") + " ", src)


def mod_decls(src: str):
    """`mod name;` declarations (files), minus `#[cfg(test)]` ones."""
    out = []
    for m in re.finditer(r"((?:#\[[^\]]*\]\s*)*)(?:pub(?:\([^)]*\))?\s+)?mod\s+(" + IDENT + r")\s*;", src):
        if "cfg(test)" in m.group(1):
            continue
        out.append(m.group(2))
    return out


def test_blocks(src: str):
    """Spans of inline `#[cfg(test)] mod x { … }` blocks, to be ignored."""
    spans = []
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([^)]*\))?\s+)?mod\s+" + IDENT + r"\s*\{", src):
        depth, i = 1, m.end()
        while i < len(src) and depth:
            depth += {"{": 1, "}": -1}.get(src[i], 0)
            i += 1
        spans.append((m.start(), i))
    return spans


def expand_use_tree(tree: str):
    """`a::{b, c::{d, e}}` -> [[a,b],[a,c,d],[a,c,e]] (aliases and `self` handled)."""
    # Aliases name nothing new for the graph: `a::B as C` is a path to `a::B`.
    tree = re.sub(r"\s+as\s+" + IDENT, "", tree)
    tree = re.sub(r"\s+", "", tree)

    def parse(s, i):
        paths, prefix = [], []
        while i < len(s):
            m = re.match(IDENT, s[i:])
            if m:
                prefix.append(m.group(0))
                i += m.end()
                if s.startswith("::", i):
                    i += 2
                    continue
                continue
            if s[i] == "{":
                inner, i = parse_group(s, i + 1)
                paths.extend(prefix + p for p in inner)
                return paths, i
            if s[i] == "*":
                paths.append(prefix[:])
                return paths, i + 1
            break
        paths.append(prefix)
        return paths, i

    def parse_group(s, i):
        out = []
        while i < len(s) and s[i] != "}":
            ps, i = parse(s, i)
            out.extend([[x for x in p if x != "self"] for p in ps])
            while i < len(s) and s[i] not in ",}":
                i += 1
            if i < len(s) and s[i] == ",":
                i += 1
        return out, i + 1

    paths, _ = parse(tree, 0)
    return paths


def references(src: str):
    """(line, kind, segments) for every crate/super/self path in the file."""
    refs = []
    for m in re.finditer(r"\buse\s+((?:crate|super|self)(?:::[^;]*)?);", src):
        line = src.count("\n", 0, m.start()) + 1
        for p in expand_use_tree(m.group(1)):
            if p:
                refs.append((line, p))
    for m in re.finditer(r"(?<![:\w])((?:crate|super|self)(?:::" + IDENT + ")+)", src):
        line = src.count("\n", 0, m.start()) + 1
        refs.append((line, m.group(1).split("::")))
    return refs


class Crate:
    def __init__(self, root_file: Path):
        self.root = root_file
        self.files = {}  # module path tuple -> file
        self.children = {}  # module path -> [child names]
        self.load((), root_file, root_file.parent)

    def load(self, path, file, child_dir):
        self.files[path] = file
        src = strip_comments(file.read_text())
        kids = []
        for name in mod_decls(src):
            for cand, cdir in ((child_dir / f"{name}.rs", child_dir / name), (child_dir / name / "mod.rs", child_dir / name)):
                if cand.exists():
                    kids.append(name)
                    self.load(path + (name,), cand, cdir)
                    break
        self.children[path] = kids

    def resolve(self, here, segs):
        """The module a path names (the deepest existing prefix), or None."""
        if segs[0] == "crate":
            base, rest = (), segs[1:]
        else:
            base = here
            rest = segs
            while rest and rest[0] in ("super", "self"):
                if rest[0] == "super":
                    base = base[:-1]
                rest = rest[1:]
        cur = base
        for s in rest:
            if s in self.children.get(cur, []):
                cur = cur + (s,)
            else:
                break
        return cur

    def edges(self):
        for path, file in self.files.items():
            text = strip_comments(file.read_text())
            for a, b in reversed(test_blocks(text)):
                text = text[:a] + "\n" * text.count("\n", a, b) + text[b:]
            for line, segs in references(text):
                target = self.resolve(path, segs)
                if target is None:
                    continue
                n = 0
                while n < min(len(path), len(target)) and path[n] == target[n]:
                    n += 1
                if n == len(path) or n == len(target):
                    continue  # same module, a descendant, or an ancestor's own items
                parent = path[:n]
                yield parent, path[n], target[n], f"{file}:{line}"


def sccs(nodes, adj):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in adj.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return out


def check(crate_root: Path):
    crate = Crate(crate_root)
    graph = {}
    for parent, a, b, where in crate.edges():
        graph.setdefault(parent, {}).setdefault(a, {}).setdefault(b, where)
    problems = []
    for parent, adj in graph.items():
        nodes = sorted(set(adj) | {b for bs in adj.values() for b in bs})
        for comp in sccs(nodes, {a: list(bs) for a, bs in adj.items()}):
            if len(comp) < 2:
                continue
            inside = set(comp)
            name = "::".join(("crate",) + parent)
            lines = [f"cycle in {crate_root.parent.parent} among {name}::{{{', '.join(sorted(comp))}}}:"]
            for a in sorted(comp):
                for b, where in sorted(adj.get(a, {}).items()):
                    if b in inside:
                        lines.append(f"  {a} -> {b}   ({where})")
            problems.append("\n".join(lines))
    return problems


def workspace_crates():
    meta = json.loads(subprocess.check_output(["cargo", "metadata", "--no-deps", "--format-version", "1"]))
    roots = []
    for pkg in meta["packages"]:
        for t in pkg["targets"]:
            if set(t["kind"]) & {"lib", "bin"}:
                roots.append(Path(t["src_path"]))
    return roots


def self_test():
    """The check must catch a cycle (else `make lint` proves nothing): a tiny crate
    whose `a` and `b` use each other, and one whose child names its parent's items."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "cyclic/src")
        (src / "b").mkdir(parents=True)
        (src / "lib.rs").write_text("mod a;\nmod b;\npub struct Root;\n")
        (src / "a.rs").write_text("use crate::b::{self, B};\npub struct A;\n")
        (src / "b/mod.rs").write_text("mod c;\npub struct B;\n")
        (src / "b/c.rs").write_text("use super::B; // the parent's own item: no edge\nfn f() { crate::a::A; }\n")
        found = check(src / "lib.rs")
        assert len(found) == 1 and "a -> b" in found[0] and "b -> a" in found[0], found
        (src / "b/c.rs").write_text("use super::B;\nuse crate::Root;\n")
        assert check(src / "lib.rs") == [], "a parent's or the root's items are not a cycle"


def main():
    self_test()
    if len(sys.argv) > 1:
        roots = []
        for d in sys.argv[1:]:
            roots += [p for p in (Path(d) / "src/lib.rs", Path(d) / "src/main.rs") if p.exists()]
    else:
        roots = workspace_crates()
    problems = [p for r in roots for p in check(r)]
    for p in problems:
        print(p)
    if problems:
        print(f"\n{len(problems)} module cycle(s): break them by moving the shared item down a layer.")
        sys.exit(1)
    print(f"no module cycles in {len(roots)} crate targets")


if __name__ == "__main__":
    main()
