#!/usr/bin/env python3
# Lists the C++/CUDA functions longer than a limit (default 80 lines, STYLE.md: "a library function over ~80
# lines is a sign to split"). Heuristic brace matching, no parser: comments, strings and character literals
# are blanked, then a '{' whose preceding text ends in a parameter list (and is not if/for/while/switch, a
# lambda or an initializer) opens a function when it sits in a namespace, class or at file scope. Lambdas and
# local classes count towards the function that holds them.
# Usage: scripts/long_functions.py [--limit N] [folders or files...]   (default: the source folders)
import argparse
import os
import re
import sys

DEFAULT_DIRS = ["kernels", "core", "parallel", "models", "train", "data", "plan", "cli", "bench", "fuzz",
                "tests"]
EXTS = (".h", ".cpp", ".cu", ".cuh")
SKIP = ("tests/sim/include",)
CONTROL = re.compile(r"\b(if|for|while|switch|catch|do|else|try)\s*(\(|$)")
NAME = re.compile(r"([A-Za-z_~][\w:~<>,]*(?:operator\s*\S+)?)\s*\(")
ATTRIBUTES = {"__launch_bounds__", "__attribute__", "alignas", "decltype", "__declspec"}
# A parameter list, optionally followed by qualifiers, a trailing return type or a constructor's initializers.
TAIL = re.compile(r"\)\s*(const|noexcept|override|final|mutable|->.*|requires.*|:.*)?\s*$")
SCOPE = re.compile(r"\b(namespace|class|struct|union|enum)\b[^()]*$")


def blank(text):
    """Replaces comments and string/char literals by spaces, keeping newlines (and so line numbers)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif text.startswith('R"', i) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'R"([^(\s]*)\(', text[i:])
            if not m:
                out.append(c)
                i += 1
                continue
            end = ")" + m.group(1) + '"'
            j = text.find(end, i + m.end())
            j = n if j < 0 else j + len(end)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        elif c in "\"'":
            if c == "'" and i > 0 and text[i - 1].isalnum() and i + 1 < n and text[i + 1].isalnum():
                out.append(" ")  # digit separator: 1'000'000
                i += 1
                continue
            j = i + 1
            while j < n and text[j] != c and text[j] != "\n":
                j += 2 if text[j] == "\\" else 1
            j = min(j + 1, n)
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_preprocessor(text):
    return "\n".join("" if line.lstrip().startswith("#") else line for line in text.split("\n"))


def functions(path):
    """Yields (name, first line, last line) of every function defined in the file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = strip_preprocessor(blank(f.read()))
    stack = []  # per open brace: "scope", "function" or "block"
    header_start = 0  # offset where the text before the next '{' begins
    line_of = [0] * (len(text) + 1)
    line = 1
    for i, c in enumerate(text):
        line_of[i] = line
        if c == "\n":
            line += 1
    open_fn = None
    for i, c in enumerate(text):
        if c in ";":
            if not any(k == "function" for k in stack):
                header_start = i + 1
        elif c == "{":
            in_function = any(k == "function" for k in stack)
            head = text[header_start:i].strip()
            kind = "block"
            if not in_function:
                flat = " ".join(head.split())
                if SCOPE.search(flat) or flat.startswith("extern"):
                    kind = "scope"
                elif TAIL.search(flat) and not CONTROL.search(flat) and "=" not in flat.split("(")[0]:
                    kind = "function"
            if kind == "function":
                names = [m.group(1) for m in NAME.finditer(" ".join(head.split()))]
                names = [n for n in names if n not in ATTRIBUTES]
                name = names[0] if names else " ".join(head.split())[:40]
                before = text[header_start:i]
                first = line_of[header_start + len(before) - len(before.lstrip())]
                open_fn = (name, first, len(stack))
            stack.append(kind)
            if not in_function:
                header_start = i + 1
        elif c == "}":
            kind = stack.pop() if stack else "block"
            if kind == "function" and open_fn and open_fn[2] == len(stack):
                yield open_fn[0], open_fn[1], line_of[i]
                open_fn = None
            if not any(k == "function" for k in stack):
                header_start = i + 1


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--limit", type=int, default=80)
    ap.add_argument("paths", nargs="*")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    paths = args.paths or [os.path.join(root, d) for d in DEFAULT_DIRS]
    files = []
    for p in paths:
        if os.path.isfile(p):
            files.append(p)
            continue
        for d, _, names in os.walk(p):
            files += [os.path.join(d, n) for n in names if n.endswith(EXTS)]
    rows = []
    for f in sorted(files):
        rel = os.path.relpath(f, root)
        if rel.startswith(SKIP):
            continue
        for name, first, last in functions(f):
            length = last - first + 1
            if length > args.limit:
                rows.append((length, rel, first, name))
    rows.sort(key=lambda r: (-r[0], r[1], r[2]))
    for length, rel, first, name in rows:
        print(f"{length:5d}  {rel}:{first}  {name}")
    print(f"{len(rows)} functions over {args.limit} lines", file=sys.stderr)


if __name__ == "__main__":
    main()
