#!/usr/bin/env python3
"""Rewrites a CUDA source into C++ for the CPU emulator (tests/sim), keeping its line numbers:

  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  ::sim::launch(kernel, [&] { kernel(args); }, grid, ...)
  extern __shared__ [__align__(n)] T name[];        ->  T* const name = static_cast<T*>(::sim::dynamic_shared());
  __shared__ [__align__(n)] T name[d]...;           ->  static ... T name[d]...; ::sim::shared_static(name, ...);

Usage: transform.py <in.cu> <out.cpp>. Fails, naming the line, on any launch or __shared__ it does not rewrite.
"""
import re
import sys

LAUNCH = re.compile(r'([A-Za-z_][\w:]*\s*(?:<(?:[^<>;]|<[^<>;]*>)*>)?)\s*<<<(.*?)>>>\s*\(', re.S)
EXTERN_SHARED = re.compile(r'extern\s+__shared__\s+((?:__align__\(\s*\d+\s*\)\s+)?)([A-Za-z_][\w:\s]*?)\s+'
                           r'([A-Za-z_]\w*)\s*\[\s*\]\s*;')
STATIC_SHARED = re.compile(r'__shared__\s+((?:__align__\(\s*\d+\s*\)\s+)?)([A-Za-z_][\w:]*)\s+([A-Za-z_]\w*)\s*'
                           r'((?:\[[^\]]+\]\s*)+);')


def rewrite_launches(src):
    out, pos = [], 0
    while True:
        m = LAUNCH.search(src, pos)
        if not m:
            out.append(src[pos:])
            return ''.join(out)
        out.append(src[pos:m.start()])
        i, depth = m.end(), 1
        while depth:
            if i >= len(src):
                sys.exit('transform.py: unbalanced launch arguments at line %d' % (src.count('\n', 0, m.start()) + 1))
            depth += {'(': 1, ')': -1}.get(src[i], 0)
            i += 1
        kernel, config, args = m.group(1).strip(), m.group(2), src[m.end():i - 1]
        out.append('::sim::launch(%s, [&] { %s(%s); }, %s)' % (kernel, kernel, args, config))
        pos = i


def main():
    path, dest = sys.argv[1], sys.argv[2]
    src = open(path).read()
    src = rewrite_launches(src)
    src = EXTERN_SHARED.sub(lambda m: '%s* const %s = static_cast<%s*>(::sim::dynamic_shared());'
                            % (m.group(2), m.group(3), m.group(2)), src)
    src = STATIC_SHARED.sub(lambda m: 'static %s%s %s%s; ::sim::shared_static(%s, sizeof(%s));'
                            % (m.group(1), m.group(2), m.group(3), m.group(4).rstrip(), m.group(3), m.group(3)), src)
    for n, line in enumerate(src.split('\n'), 1):
        code = line.split('//')[0]
        if '<<<' in code or re.search(r'\b__shared__\b', code):
            sys.exit('transform.py: %s:%d: a launch or __shared__ declaration it cannot rewrite: %s'
                     % (path, n, line.strip()))
    with open(dest, 'w') as f:
        f.write('#line 1 "%s"\n' % path)
        f.write(src)


if __name__ == '__main__':
    main()
