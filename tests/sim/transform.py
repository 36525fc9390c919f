#!/usr/bin/env python3
"""Rewrites a CUDA source into C++ for the CPU emulator (tests/sim), keeping its line numbers:

  kernel<<<grid, block[, smem[, stream]]>>>(args)  ->  ::sim::launch(kernel, ::sim::LaunchConfig{grid, block[,
                                                         smem[, stream]]}, args)
      (sim/cudart.h: the arguments are copied at the launch and the kernel runs later on the stream's worker)
  extern __shared__ [__align__(n)] T name[];        ->  T* const name = static_cast<T*>(::sim::dynamic_shared());
  __shared__ [__align__(n)] T a[d]..., b[d]...;     ->  static ... T a[d]..., b[d]...; ::sim::shared_static(a, ...); ...
      (function-local statics: one copy shared by the block's threads, which is right because kernels run one at a
      time: the runtime holds a device mutex across a launch)

Usage: transform.py <in.cu> <out.cpp>. Fails, naming the line, on any launch or __shared__ it does not rewrite.
"""
import re
import sys

TEMPLATE_ARGS = r'<(?:[^<>;]|<(?:[^<>;]|<[^<>;]*>)*>)*>'  # up to three levels: f<T, G<H<T>>>
LAUNCH = re.compile(r'([A-Za-z_][\w:]*\s*(?:%s)?)(\s*)<<<(.*?)>>>(\s*)\(' % TEMPLATE_ARGS, re.S)
EXTERN_SHARED = re.compile(r'extern\s+__shared__\s+((?:__align__\(\s*\d+\s*\)\s+)?)([A-Za-z_][\w:\s]*?)\s+'
                           r'([A-Za-z_]\w*)\s*\[\s*\]\s*;')
DECLARATOR = r'[A-Za-z_]\w*[ \t]*(?:\[[^\]\n]+\][ \t]*)+'
STATIC_SHARED = re.compile(r'__shared__[ \t]+((?:__align__\([ \t]*\d+[ \t]*\)[ \t]+)?)'
                           r'([A-Za-z_][\w:]*(?:[ \t]+[A-Za-z_][\w:]*)*?)[ \t]+'
                           r'(%s(?:,[ \t]*%s)*);' % (DECLARATOR, DECLARATOR))


def static_shared(m):
    names = [re.match(r'[A-Za-z_]\w*', d.strip()).group(0) for d in m.group(3).split(',')]
    return 'static %s%s %s;%s' % (m.group(1), m.group(2), m.group(3).rstrip(),
                                  ''.join(' ::sim::shared_static(%s, sizeof(%s));' % (n, n) for n in names))


def split_top_level(text):
    """Splits at the commas outside (), [] and {} (a launch configuration's parts)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in '([{':
            depth += 1
        elif ch in ')]}':
            depth -= 1
        elif ch == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return parts


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
        kernel, args = m.group(1).strip(), src[m.end():i - 1]
        config = split_top_level(m.group(3))
        if not 2 <= len(config) <= 4:
            sys.exit('transform.py: a launch configuration of %d parts at line %d'
                     % (len(config), src.count('\n', 0, m.start()) + 1))
        # Each part converted as the <<<>>> operands are (grid and block to dim3, smem to size_t), which the
        # braces of LaunchConfig{...} alone would reject as narrowing.
        casts = ['::dim3(%s)', '::dim3(%s)', 'static_cast<::size_t>(%s)', '%s']
        config = ','.join(c % part for c, part in zip(casts, config))
        sep = ', ' if args.strip() else ''
        # The white space around <<<...>>> stays (its line breaks keep the line numbers).
        out.append('::sim::launch(%s,%s ::sim::LaunchConfig{%s}%s%s%s)' % (kernel, m.group(2), config, sep, m.group(4),
                                                                          args))
        pos = i


def main():
    path, dest = sys.argv[1], sys.argv[2]
    src = open(path).read()
    src = rewrite_launches(src)
    src = EXTERN_SHARED.sub(lambda m: '%s* const %s = static_cast<%s*>(::sim::dynamic_shared());'
                            % (m.group(2), m.group(3), m.group(2)), src)
    src = STATIC_SHARED.sub(static_shared, src)
    for n, line in enumerate(src.split('\n'), 1):
        code = line.split('//')[0]
        if '<<<' in code or re.search(r'\b__shared__\b', code):
            sys.exit('transform.py: %s:%d: a launch or __shared__ declaration it cannot rewrite: %s'
                     % (path, n, line.strip()))
    with open(dest, 'w') as f:
        # The #line below makes GCC take the source for a header, where a type of the anonymous namespace inside
        # a lambda of a function template draws -Wsubobject-linkage (it would not in the .cu itself).
        f.write('#if defined(__GNUC__) && !defined(__clang__)\n'
                '#pragma GCC diagnostic ignored "-Wsubobject-linkage"\n'
                '#endif\n')
        f.write('#line 1 "%s"\n' % path)
        f.write(src)


if __name__ == '__main__':
    main()
